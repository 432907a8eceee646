"""The typed batch plan: the only thing the scheduler hands to the executor."""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum

from neo_async.sampling_params import SamplingParams


class KVLocation(str, Enum):
    """Where a request's KV cache lives, and so where its decode attention runs."""

    DEVICE = "device"
    HOST = "host"


@dataclass(frozen=True)
class ScheduledChunk:
    """Tokens of one request to run this iteration.

    token_ids are at positions start_pos .. start_pos + len(token_ids) - 1; block_ids is the
    request's whole block table in the pool of `location` (enough blocks for every position up
    to the last one). A prefill chunk on the host computes on the device and writes its K/V to
    the host pool. When is_sampling, the last token's logits pick the request's next token.
    """

    request_id: str
    token_ids: list[int]
    start_pos: int
    block_ids: list[int]
    is_sampling: bool
    params: SamplingParams
    prompt_token_ids: list[int]  # for repetition penalties (read only)
    output_token_ids: list[int]  # for penalties and per-step seeding (read only)
    location: KVLocation = KVLocation.DEVICE
    # 0 or 1 in a pipelined plan (1: host decodes only), else 0; see `pipeline.py`
    sub_batch: int = 0

    @property
    def num_tokens(self) -> int:
        return len(self.token_ids)

    @property
    def seq_len(self) -> int:
        """Tokens in the cache once this chunk has run."""
        return self.start_pos + len(self.token_ids)

    @property
    def is_decode(self) -> bool:
        return len(self.token_ids) == 1 and self.start_pos > 0

    @property
    def is_host(self) -> bool:
        return self.location is KVLocation.HOST


@dataclass(frozen=True)
class CopyRun:
    """Blocks src_start .. src_start + num_blocks - 1 of one pool copied to dst_start .. of the
    other, in every layer: one contiguous (layer, run) slab per layer and per K/V."""

    src_start: int
    dst_start: int
    num_blocks: int


def coalesce(src_block_ids: list[int], dst_block_ids: list[int]) -> list[CopyRun]:
    """Pairs (src, dst) as the fewest runs of consecutive blocks on both sides (sorted by src)."""
    runs: list[CopyRun] = []
    for src, dst in sorted(zip(src_block_ids, dst_block_ids)):
        last = runs[-1] if runs else None
        if last is not None and src == last.src_start + last.num_blocks and dst == last.dst_start + last.num_blocks:
            runs[-1] = CopyRun(last.src_start, last.dst_start, last.num_blocks + 1)
        else:
            runs.append(CopyRun(src, dst, 1))
    return runs


@dataclass
class Plan:
    """One iteration.

    Ordering contract with the executor: in every layer, the swap copies of that layer run
    before any K/V of that layer is written or read by this plan's chunks. Blocks freed by a
    swap may therefore be handed to another chunk of the same plan, and a swapped request runs
    this iteration from its new location. Swap-ins are copied before swap-outs (the scheduler
    plans them first): the host blocks a swap-in frees may be a swap-out's destination in the
    same plan.
    """

    chunks: list[ScheduledChunk] = field(default_factory=list)
    preempted_ids: list[str] = field(default_factory=list)  # KV freed, to be recomputed
    swap_out: list[CopyRun] = field(default_factory=list)  # device pool -> host pool
    swap_in: list[CopyRun] = field(default_factory=list)  # host pool -> device pool
    swapped_out_ids: list[str] = field(default_factory=list)
    swapped_in_ids: list[str] = field(default_factory=list)
    # Two sub-batches overlapped per layer (chunks' sub_batch); both non-empty when set
    is_pipelined: bool = False
    deferred_ids: list[str] = field(default_factory=list)  # host decodes left out this iteration
    num_demoted_blocks: int = 0  # cached device blocks copied to the host pool within swap_out
    num_copied_in_blocks: int = 0  # host-cached blocks copied to a device-placed request within swap_in
    predicted_s: float | None = None  # the cost model's time for this plan, when there is one

    @property
    def num_batched_tokens(self) -> int:
        return sum(c.num_tokens for c in self.chunks)

    @property
    def num_host_chunks(self) -> int:
        return sum(c.is_host for c in self.chunks)

    @staticmethod
    def num_run_blocks(runs: list[CopyRun]) -> int:
        return sum(r.num_blocks for r in runs)


@dataclass
class ExecuteOutput:
    """What the executor returns: one sampled token per sampling chunk."""

    sampled_token_ids: dict[str, int] = field(default_factory=dict)
    logprobs: dict[str, object] = field(default_factory=dict)  # request id -> (logprob, top list)
    logits: dict[str, object] | None = None  # request id -> raw logits [vocab], only when asked
    # request id -> (first position, [(token id, logprob, top list)]): prompt tokens scored this step
    prompt_logprobs: dict[str, object] = field(default_factory=dict)
    execute_s: float | None = None  # the plan's measured time, when the caller measured it
