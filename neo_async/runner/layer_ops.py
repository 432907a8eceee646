"""The per-layer operations of a step, shared by the sequential loop (`sequential.py`), the
pipelined loop (`pipelined.py`) and the profiler: a batch's rows begun (tensors, embedding,
RoPE), the device attention of its rows (prefill K/V stores, prefill attention, device
decodes), the host decodes' attention as jobs for a lane, and the layer's two model halves."""

from __future__ import annotations

import itertools

import torch

from neo_async.model.llama import LlamaModel
from neo_async.runner.attention import DecodeJob, KVCache, prefill_attention
from neo_async.runner.batch import BatchTensors, DecodeGroup
from neo_async.runner.host_lane import HostLane, InlineLane
from neo_async.runner.threads import ThreadBudget
from neo_async.sched.plan import KVLocation, ScheduledChunk


class LayerOps:
    def __init__(self, model: LlamaModel, caches: dict[KVLocation, KVCache], threads: ThreadBudget) -> None:
        self.model = model
        self.caches = caches
        self.threads = threads
        self.device = model.device
        self.block_size = caches[KVLocation.DEVICE].block_size
        self.pool_devices = {loc: c.device for loc, c in caches.items()}

    def begin(self, chunks: list[ScheduledChunk]) -> tuple[BatchTensors, torch.Tensor, tuple[torch.Tensor, torch.Tensor]]:
        """The chunks' rows: their tensors, hidden [T, hidden] (embedded) and RoPE tables."""
        batch = BatchTensors(chunks, self.block_size, self.device, self.pool_devices)
        return batch, self.model.embed(batch.token_ids), self.model.rope(batch.positions)

    def pre(
        self, layer: int, hidden: torch.Tensor, rope: tuple[torch.Tensor, torch.Tensor]
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """q [T, Hq, D], k, v [T, Hkv, D] of the layer, and the attention output out [T, Hq, D]
        float32 (uninitialised) that the attention calls fill."""
        q, k, v = self.model.pre(layer, hidden, rope)
        return q, k, v, torch.empty(q.shape, dtype=torch.float32, device=self.device)

    def post(self, layer: int, hidden: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
        return self.model.post(layer, hidden, out.view(out.shape[0], -1))

    def device_attention(
        self, layer: int, batch: BatchTensors, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, out: torch.Tensor
    ) -> None:
        """q [T, Hq, D], k, v [T, Hkv, D] of every row -> out [T, Hq, D] float32 of every row but
        the host decodes'; prefill K/V stored (in either pool), device decode K/V stored."""
        for store in batch.prefill_stores:
            cache = self.caches[store.location]
            cache.store(layer, k[store.start : store.end], v[store.start : store.end], store.slot_blocks, store.slot_offsets)
        for p in batch.prefills:
            rows = slice(p.start, p.end)
            out[rows] = self.prefill_attention(layer, p.chunk, p.block_ids, q[rows], k[rows], v[rows])
        for group in batch.decodes:
            if group.location is KVLocation.DEVICE:
                rows = slice(group.start, group.end)
                self.caches[group.location].decode(
                    layer, q[rows], group.block_tables, group.seq_lens, self.model.spec.attn_scale,
                    k_new=k[rows], v_new=v[rows], out=out[rows],
                )

    def prefill_attention(
        self, layer: int, chunk: ScheduledChunk, block_ids: torch.Tensor | None, q: torch.Tensor, k: torch.Tensor,
        v: torch.Tensor,
    ) -> torch.Tensor:
        """One prefill chunk's attention (its K/V already stored): over its own rows when nothing
        is cached before it (block_ids None), else over its pool's blocks."""
        scale = self.model.spec.attn_scale
        if block_ids is None:
            return prefill_attention(q, k.transpose(0, 1), v.transpose(0, 1), chunk.start_pos, scale)
        return self.caches[chunk.location].prefill(layer, q, block_ids, chunk.start_pos, chunk.seq_len, scale, k_new=k, v_new=v)

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

    def host_parts(self, group: DecodeGroup | None, pipelined: bool) -> list[tuple[int, int]]:
        """The host group split as a step of that kind runs it (one job in a pipelined step)."""
        return host_row_parts(group, 1 if pipelined else self.threads.sequential_host_parts)


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
