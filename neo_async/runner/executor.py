"""Turns a Plan into a step: its swap copies, the sequential (`sequential.py`) or the
pipelined (`pipelined.py`) layer loop, then sampling and prompt scoring."""

from __future__ import annotations

import torch

from neo_async.runner.host_lane import HostLane, InlineLane, host_lane_for
from neo_async.runner.layer_ops import LayerOps
from neo_async.runner.output_rows import score_prompts
from neo_async.runner.pipelined import run_pipelined
from neo_async.runner.sampler import SampleRow, Sampler
from neo_async.runner.sequential import run_sequential
from neo_async.runner.swap import LayerCopy
from neo_async.runner.threads import torch_threads
from neo_async.sched.plan import ExecuteOutput, KVLocation, Plan, ScheduledChunk


class Executor:
    def __init__(self, ops: LayerOps, sampler: Sampler, samples: bool = True) -> None:
        """samples: False on a tensor-parallel rank other than 0: its steps run the layers (their
        collectives) and return no tokens."""
        self.ops = ops
        self.sampler = sampler
        self.samples = samples
        self.keep_logits = False  # when set, outputs carry each sampling row's raw logits (tests)
        self.host_lane: HostLane | InlineLane | None = None  # see lane()
        self.host_wait_s_total = 0.0  # pipelined steps: the device lane's time waiting for the host lane

    @torch.inference_mode()
    def execute(self, plan: Plan) -> ExecuteOutput:
        copies = self.swap_copies(plan)
        if not plan.chunks:
            for layer in range(self.ops.model.spec.num_layers):
                for copy in copies:
                    copy.copy_layer(layer)
            return ExecuteOutput()
        if plan.is_pipelined:
            with torch_threads(self.ops.threads.pipelined_device):
                rows, waited_s = run_pipelined(self.ops, plan, copies, self.lane())
            self.host_wait_s_total += waited_s
        else:
            rows = run_sequential(self.ops, plan, copies, self.lane)
        if not self.samples:
            return ExecuteOutput()
        output = self.sample(rows.sampling, rows.sampling_hidden)
        output.prompt_logprobs = score_prompts(self.ops.model, rows.prompt_spans, rows.prompt_hidden)
        return output

    def swap_copies(self, plan: Plan) -> list[LayerCopy]:
        """The plan's swap copies, swap-ins first (in every layer and on a copy stream: Plan's
        contract); none when the plan moves nothing."""
        if not (plan.swap_out or plan.swap_in):
            return []
        device, host = self.ops.caches[KVLocation.DEVICE], self.ops.caches[KVLocation.HOST]
        return [LayerCopy(plan.swap_in, host, device), LayerCopy(plan.swap_out, device, host)]

    def lane(self) -> HostLane | InlineLane:
        """The host lane (pipelined plans, split sequential host attention), started on first use."""
        if self.host_lane is None:
            self.host_lane = host_lane_for(self.ops.device)
        return self.host_lane

    def sample(self, sampling: list[ScheduledChunk], hidden: torch.Tensor) -> ExecuteOutput:
        """The sampling rows' logits (from their last hidden rows) and tokens."""
        if not sampling:
            return ExecuteOutput()
        logits = self.ops.model.logits(hidden)  # [N, vocab]
        rows = [SampleRow(c.params, c.prompt_token_ids, c.output_token_ids) for c in sampling]
        output = ExecuteOutput()
        if self.keep_logits:
            output.logits = {c.request_id: logits[j].float() for j, c in enumerate(sampling)}
        result = self.sampler(logits, rows)
        for chunk, token, lp in zip(sampling, result.token_ids, result.logprobs):
            output.sampled_token_ids[chunk.request_id] = token
            if lp is not None:
                output.logprobs[chunk.request_id] = lp
        return output

