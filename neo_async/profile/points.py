"""One measurement point per cost, on a constructed Worker, through the code paths of real
steps: each method prepares a `Bench` (inputs built, the timed call), to be timed under the
table's thread budget (`Points.budget`).

Inputs are random tensors of the model's shapes; KV lives in scratch blocks (free blocks the
profile holds, see `scratch.py`). Every per-layer call, whichever point it times, takes the
next layer of one rotation (`next_layer`), as a step does, so KV and weights come from memory,
not from a cache warmed by the call before.

NOTE: one rotation for all points, not one per point: points are timed in round-robin passes,
and with a layer per call index the points of one pass all read the same layer's blocks and
weights, each finding its neighbour's in the cache (16 decodes of 1024 tokens read 2.3x
faster than in a step).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch

from neo_async.kernels.host_values import to_device
from neo_async.profile.timing import Bench, Timer
from neo_async.runner.attention import KVCache, pad_block_tables
from neo_async.runner.batch import DecodeGroup
from neo_async.runner.host_lane import HostLane
from neo_async.runner.layer_ops import LayerOps, run_at_once
from neo_async.runner.output_rows import OutputRows
from neo_async.runner.swap import LayerCopy
from neo_async.runner.threads import torch_threads
from neo_async.sampling_params import SamplingParams
from neo_async.sched.plan import KVLocation, ScheduledChunk, coalesce

if TYPE_CHECKING:
    from neo_async.config import Config
    from neo_async.runner.worker import Worker

GREEDY = SamplingParams(temperature=0.0, ignore_eos=True)


class Points:
    def __init__(
        self,
        worker: Worker,
        config: Config,
        timer: Timer,
        device_ids: list[int],
        host_cache: KVCache,
        host_ids: list[int],
        lane: HostLane,
    ) -> None:
        self.worker = worker
        self.config = config
        self.timer = timer
        self.model = worker.model
        self.spec = worker.spec
        self.device = worker.device
        self.dtype = worker.model.dtype
        self.cache = worker.cache
        self.executor = worker.executor
        # the executor's operations over the scratch pools (the host one may be borrowed)
        caches = {KVLocation.DEVICE: worker.cache, KVLocation.HOST: host_cache}
        self.ops = LayerOps(worker.model, caches, worker.threads)
        self.host_cache = host_cache
        self.device_ids = device_ids
        self.host_ids = host_ids
        self.lane = lane
        self.block_size = worker.block_size
        self.gen = torch.Generator(device="cpu").manual_seed(0)
        self._calls = 0

    def next_layer(self) -> int:
        """The layer of the next per-layer call: 0, 1, ..., num_layers - 1, 0, ..."""
        layer = self._calls % self.spec.num_layers
        self._calls += 1
        return layer

    def budget(self, pipelined: bool):
        """torch's threads in a step of that kind (the worker's pipelined budget, else its
        sequential one)."""
        threads = self.worker.threads
        return torch_threads(threads.pipelined_device if pipelined else threads.device)

    def measure(self, benches: list[Bench], pipelined: bool) -> list[float]:
        """Median seconds of each bench, under the budget of a step of that kind."""
        with self.budget(pipelined), torch.inference_mode():
            return self.timer.measure(benches)

    def _randn(self, *shape: int, dtype: torch.dtype | None = None) -> torch.Tensor:
        return torch.randn(shape, generator=self.gen).to(self.device, dtype or self.dtype)

    # ---- per layer ----------------------------------------------------------------------

    @torch.inference_mode()
    def linear(self, num_tokens: int) -> Bench:
        """pre + post of one layer for num_tokens rows."""
        ops, s = self.ops, self.spec
        base = self._randn(num_tokens, s.hidden_size)
        hidden = base.clone()
        positions = torch.arange(num_tokens, device=self.device) % self.worker.max_model_len
        rope = self.model.rope(positions)

        def run(i: int) -> None:
            layer = self.next_layer()
            _q, _k, _v, out = ops.pre(layer, hidden, rope)
            ops.post(layer, hidden, out.zero_())

        return Bench(run, setup=lambda i: hidden.copy_(base))  # post adds into hidden

    @torch.inference_mode()
    def prefill(self, chunk: int, prefix: int) -> Bench:
        """One chunk's K/V stored in the device pool, its cached prefix gathered (when any) and
        its attention: the executor's per-chunk prefill work."""
        s, bs = self.spec, self.block_size
        q, k, v = self._qkv(chunk)
        total = prefix + chunk
        block_ids = [self.device_ids[j % len(self.device_ids)] for j in range(-(-total // bs))]
        pool_device = self.cache.device
        slot_blocks = torch.tensor([block_ids[p // bs] for p in range(prefix, total)], device=pool_device)
        slot_offsets = torch.tensor([p % bs for p in range(prefix, total)], device=pool_device)
        cached = torch.tensor(block_ids, device=pool_device) if prefix else None
        out = torch.empty((chunk, s.num_heads, s.head_dim), dtype=torch.float32, device=self.device)
        scheduled = ScheduledChunk("p", [1] * chunk, prefix, block_ids, False, GREEDY, [1] * total, [])

        def run(i: int) -> None:
            layer = self.next_layer()
            self.cache.store(layer, k, v, slot_blocks, slot_offsets)
            out[:] = self.ops.prefill_attention(layer, scheduled, cached, q, k, v)

        return Bench(run)

    @torch.inference_mode()
    def device_decode(self, num_requests: int, length: int) -> Bench:
        """Decode attention of num_requests device requests of `length` KV tokens each (the new
        token's K/V stored by the call, as in a step)."""
        tables, seq_lens = self._tables(self.cache, self.device_ids, num_requests, length)
        q, k, v, out = self._decode_inputs(num_requests)
        scale = self.spec.attn_scale

        def run(i: int) -> None:
            self.cache.decode(self.next_layer(), q, tables, seq_lens, scale, k_new=k, v_new=v, out=out)

        return Bench(run)

    @torch.inference_mode()
    def host_decode(self, num_requests: int, length: int, pipelined: bool) -> Bench:
        """Host decode attention, staging included; pipelined: the job runs on the host lane
        (submitted, then awaited, as the pipelined executor does); sequential: split and run as
        the sequential loop does (`ThreadBudget.sequential_host_parts`)."""
        tables, seq_lens = self._tables(self.host_cache, self.host_ids, num_requests, length)
        q, k, v, out = self._decode_inputs(num_requests)
        group = DecodeGroup(KVLocation.HOST, 0, num_requests, tables, seq_lens)
        parts = self.ops.host_parts(group, pipelined)

        def run(i: int) -> None:
            layer = self.next_layer()
            jobs = [self.ops.host_job(layer, group, part, q, k, v, out) for part in parts]
            if pipelined:
                self.lane.submit(jobs[0]).wait()
                jobs[0].finish()
            else:
                run_at_once(jobs, self.lane if len(jobs) > 1 else None)

        return Bench(run)

    @torch.inference_mode()
    def swap(self, num_blocks: int) -> Bench:
        """num_blocks blocks copied device -> host and host -> device, alternately (both
        directions in the median), per layer. At most as many blocks as both pools lend.

        NOTE: a call is a step's swap, every layer: building the `LayerCopy` is what issues
        the copies between a GPU and the host (all layers at once, on the bulk stream), so it
        happens inside the timed call, and the point is that call over the number of layers."""
        n = min(num_blocks, len(self.device_ids), len(self.host_ids))
        runs = (coalesce(self.device_ids[:n], self.host_ids[:n]), coalesce(self.host_ids[:n], self.device_ids[:n]))
        pools = ((self.cache, self.host_cache), (self.host_cache, self.cache))
        num_layers = self.spec.num_layers

        def run(i: int) -> None:
            copy = LayerCopy(runs[i % 2], *pools[i % 2])
            for layer in range(num_layers):
                copy.copy_layer(layer)

        return Bench(run, units=num_layers)

    # ---- per iteration -----------------------------------------------------------------

    @torch.inference_mode()
    def iteration_sampled(self, num_rows: int) -> Bench:
        """A decode batch of num_rows outside the layers: its tensors, embedding, RoPE tables,
        the sampled rows' logits and greedy sampling."""
        chunks = [self._decode_chunk(f"s{j}", KVLocation.DEVICE, self.device_ids[j % len(self.device_ids)])
                  for j in range(num_rows)]
        return Bench(lambda i: self._outside_layers(chunks))

    @torch.inference_mode()
    def iteration_prefill_tokens(self, num_tokens: int) -> Bench:
        """A prefill chunk of num_tokens that does not sample: its tensors, embedding and RoPE."""
        ids = [self.device_ids[j % len(self.device_ids)] for j in range(-(-num_tokens // self.block_size))]
        chunk = ScheduledChunk("p", [1] * num_tokens, 0, ids, False, GREEDY, [1] * num_tokens, [])
        return Bench(lambda i: self._outside_layers([chunk]))

    def _outside_layers(self, chunks: list[ScheduledChunk]) -> None:
        batch, hidden, _rope = self.ops.begin(chunks)
        rows = OutputRows.of(batch.chunks, batch.last_row, hidden)
        self.executor.sample(rows.sampling, rows.sampling_hidden)

    # ---- helpers -------------------------------------------------------------------------

    def _decode_chunk(self, request_id: str, location: KVLocation, block_id: int) -> ScheduledChunk:
        return ScheduledChunk(request_id, [1], self.block_size - 1, [block_id], True, GREEDY, [1], [], location)

    def _qkv(self, num_tokens: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """q [T, Hq, D], k, v [T, Hkv, D]: views of one [T, (Hq + 2 Hkv) D] projection, as
        `model.pre` returns them (strided, not contiguous), so attention pays what it pays in a
        step for reading them."""
        s = self.spec
        qkv = self._randn(num_tokens, s.q_size + 2 * s.kv_size)
        q, k, v = qkv.split([s.q_size, s.kv_size, s.kv_size], dim=-1)
        return (q.view(num_tokens, s.num_heads, s.head_dim), k.view(num_tokens, s.num_kv_heads, s.head_dim),
                v.view(num_tokens, s.num_kv_heads, s.head_dim))

    def _decode_inputs(self, num_requests: int) -> tuple[torch.Tensor, ...]:
        s = self.spec
        q, k, v = self._qkv(num_requests)
        out = torch.empty((num_requests, s.num_heads, s.head_dim), dtype=torch.float32, device=self.device)
        return q, k, v, out

    def _tables(self, cache: KVCache, ids: list[int], num_requests: int, length: int) -> tuple[torch.Tensor, torch.Tensor]:
        return decode_tables(ids, num_requests, length, self.block_size, cache.device)


def decode_tables(
    ids: list[int], num_requests: int, length: int, block_size: int, device: torch.device
) -> tuple[torch.Tensor, torch.Tensor]:
    """Block tables [B, W] int32 and seq_lens [B] int32 for num_requests requests of `length`
    tokens over the scratch block ids. Each request's last block (where the call writes the new
    token) is its own whenever there are more scratch blocks than requests; the others cycle
    through the rest of the scratch blocks (shared when the grid asks for more than exist)."""
    width = -(-length // block_size)
    own = len(ids) > num_requests
    rest = ids[num_requests:] if own else ids
    tables = []
    k = 0
    for r in range(num_requests):
        row = []
        for _ in range(width - 1):
            row.append(rest[k % len(rest)])
            k += 1
        row.append(ids[r] if own else ids[r % len(ids)])
        tables.append(row)
    return pad_block_tables(tables, device), to_device(torch.full((num_requests,), length, dtype=torch.int32), device)
