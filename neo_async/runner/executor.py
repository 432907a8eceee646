"""Turns a Plan into tensors, runs the model layer by layer, samples.

Sequential mode: all of a plan's tokens run as one flat batch (see `batch.py` for the row
order). Per layer: swap copies of the layer (swap-ins, then swap-outs) -> pre -> host decode
inputs staged -> prefill K/V stores into each chunk's pool -> prefill attention per chunk ->
device decode attention on the device pool -> host decode attention (rust_cpuattn) on the host
pool -> post.
A pipelined plan runs its two sub-batches overlapped instead (`pipelined.py`).
"""

from __future__ import annotations

import contextlib
import itertools
from collections.abc import Iterator

import torch

from neo_async.kv.swap import LayerCopy
from neo_async.model.llama import LlamaModel
from neo_async.runner.attention import DecodeJob, KVCache, prefill_attention
from neo_async.runner.batch import BatchTensors, DecodeGroup
from neo_async.runner.host_lane import HostLane, InlineLane, host_lane_for
from neo_async.runner.output_rows import OutputRows, score_prompts
from neo_async.runner.pipelined import run_pipelined
from neo_async.runner.sampler import SampleRow, Sampler
from neo_async.sched.plan import ExecuteOutput, KVLocation, Plan, ScheduledChunk


class Executor:
    def __init__(self, model: LlamaModel, cache: KVCache, sampler: Sampler, host_cache: KVCache | None = None) -> None:
        self.model = model
        self.caches = {KVLocation.DEVICE: cache}
        if host_cache is not None:
            self.caches[KVLocation.HOST] = host_cache
        self.sampler = sampler
        self.device = model.device
        self.block_size = cache.block_size
        self.pool_devices = {loc: c.device for loc, c in self.caches.items()}
        self.keep_logits = False  # when set, outputs carry each sampling row's raw logits (tests)
        self.host_lane: HostLane | InlineLane | None = None  # see lane()
        self.pipelined_device_threads: int | None = None  # torch's budget during pipelined steps (CPU device)
        self.sequential_host_parts = 1  # see runner.device.sequential_host_parts
        self.host_wait_s_total = 0.0  # pipelined steps: the device lane's time waiting for the host lane

    @torch.inference_mode()
    def execute(self, plan: Plan) -> ExecuteOutput:
        copies = []
        if plan.swap_out or plan.swap_in:
            device, host = self.caches[KVLocation.DEVICE], self.caches[KVLocation.HOST]
            # swap-ins first, in every layer and on a copy stream: Plan's contract
            copies = [LayerCopy(plan.swap_in, host, device), LayerCopy(plan.swap_out, device, host)]
        if not plan.chunks:
            for layer in range(self.model.spec.num_layers):
                for copy in copies:
                    copy.copy_layer(layer)
            return ExecuteOutput()
        if plan.is_pipelined:
            with _device_threads(self.pipelined_device_threads):
                rows = run_pipelined(self, plan, copies, self.lane())
        else:
            rows = self._run_sequential(plan, copies)
        output = self._sample(rows.sampling, rows.sampling_hidden)
        output.prompt_logprobs = score_prompts(self.model, rows.prompt_spans, rows.prompt_hidden)
        return output

    def _run_sequential(self, plan: Plan, copies: list[LayerCopy]) -> OutputRows:
        batch = BatchTensors(plan.chunks, self.block_size, self.device, self.pool_devices)
        model = self.model
        hidden = model.embed(batch.token_ids)  # [T, hidden]
        rope = model.rope(batch.positions)
        host_parts = host_row_parts(batch.host_decodes, self.sequential_host_parts)
        for layer in range(model.spec.num_layers):
            for copy in copies:  # before any K/V of this layer is read or written (Plan's contract)
                copy.copy_layer(layer)
            q, k, v = model.pre(layer, hidden, rope)
            out = torch.empty(q.shape, dtype=torch.float32, device=self.device)  # [T, Hq, D]
            # host inputs staged before the device attention is enqueued: on a GPU their copies
            # then wait for pre only, and host attention runs while the device attends
            jobs = [self.host_job(layer, batch.host_decodes, part, q, k, v, out) for part in host_parts]
            self.device_attention(layer, batch, q, k, v, out)
            run_at_once(jobs, self.lane() if len(jobs) > 1 else None)
            hidden = model.post(layer, hidden, out.view(out.shape[0], -1))
        return OutputRows.of(batch.chunks, batch.last_row, hidden)

    def lane(self) -> HostLane | InlineLane:
        """The host lane (pipelined plans, split sequential host attention), started on first use."""
        if self.host_lane is None:
            self.host_lane = host_lane_for(self.device)
        return self.host_lane

    def _sample(self, sampling: list[ScheduledChunk], hidden: torch.Tensor) -> ExecuteOutput:
        if not sampling:
            return ExecuteOutput()
        logits = self.model.logits(hidden)  # [N, vocab]
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

    def device_attention(
        self, layer: int, batch: BatchTensors, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, out: torch.Tensor
    ) -> None:
        """q [T, Hq, D], k, v [T, Hkv, D] of every row -> out [T, Hq, D] float32 of every row but
        the host decodes'; prefill K/V stored (in either pool), device decode K/V stored."""
        scale = self.model.spec.attn_scale
        for store in batch.prefill_stores:
            cache = self.caches[store.location]
            cache.store(layer, k[store.start : store.end], v[store.start : store.end], store.slot_blocks, store.slot_offsets)
        for p in batch.prefills:
            chunk = p.chunk
            if p.block_ids is None:
                kc, vc = k[p.start : p.end].transpose(0, 1), v[p.start : p.end].transpose(0, 1)
                out[p.start : p.end] = prefill_attention(q[p.start : p.end], kc, vc, chunk.start_pos, scale)
            else:
                rows = slice(p.start, p.end)
                out[rows] = self.caches[chunk.location].prefill(
                    layer, q[rows], p.block_ids, chunk.start_pos, chunk.seq_len, scale, k_new=k[rows], v_new=v[rows]
                )
        for group in batch.decodes:
            if group.location is KVLocation.DEVICE:
                rows = slice(group.start, group.end)
                self.caches[group.location].decode(
                    layer, q[rows], group.block_tables, group.seq_lens, scale, k_new=k[rows], v_new=v[rows], out=out[rows]
                )

    def host_decode_job(
        self, layer: int, batch: BatchTensors, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, out: torch.Tensor
    ) -> DecodeJob | None:
        """The host decodes' attention (their K/V stored, out's rows written), prepared; None
        when the batch has no host decode."""
        group = batch.host_decodes
        if group is None:
            return None
        return self.host_job(layer, group, (0, group.end - group.start), q, k, v, out)

    def host_job(
        self, layer: int, group: DecodeGroup, part: tuple[int, int], q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
        out: torch.Tensor,
    ) -> DecodeJob:
        """The attention of the host group's requests part[0] .. part[1] - 1 (indices in the group)."""
        first, last = part
        rows = slice(group.start + first, group.start + last)
        return self.caches[KVLocation.HOST].decode_job(
            layer, q[rows], group.block_tables[first:last], group.seq_lens[first:last], self.model.spec.attn_scale,
            k_new=k[rows], v_new=v[rows], out=out[rows],
        )


def host_row_parts(group: DecodeGroup | None, parts: int) -> list[tuple[int, int]]:
    """The host group's requests in at most `parts` consecutive, non-empty ranges (indices in
    the group), each boundary where the KV tokens before it come closest to its share of the
    total; none without a group."""
    if group is None:
        return []
    lens = group.seq_lens.tolist()
    prefix = list(itertools.accumulate(lens, initial=0))  # prefix[i]: KV tokens of requests < i
    bounds = [0]
    for j in range(1, min(parts, len(lens))):
        target = prefix[-1] * j / parts
        candidates = range(bounds[-1] + 1, len(lens) - (min(parts, len(lens)) - 1 - j))
        bounds.append(min(candidates, key=lambda i: abs(prefix[i] - target)))
    bounds.append(len(lens))
    return list(zip(bounds, bounds[1:]))


def run_at_once(jobs: list[DecodeJob], lane: HostLane | InlineLane | None) -> None:
    """Runs the jobs, the first on this thread while the lane runs the rest (one after another;
    without a lane, all here), then finishes them all on this thread."""
    handles = [lane.submit(job) for job in jobs[1:]] if lane is not None else []
    for job in jobs[:1] if lane is not None else jobs:
        job.run()
    for handle in handles:
        handle.wait()
    for job in jobs:
        job.finish()


@contextlib.contextmanager
def _device_threads(num_threads: int | None) -> Iterator[None]:
    """torch's intra-op pool sized num_threads for the block (unchanged when None)."""
    before = torch.get_num_threads()
    if num_threads is None or num_threads == before:
        yield
        return
    torch.set_num_threads(num_threads)
    try:
        yield
    finally:
        torch.set_num_threads(before)
