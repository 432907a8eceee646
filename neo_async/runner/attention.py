"""Paged KV pools and attention over them.

Pool layout, the same for the device pool, the host pool and rust_cpuattn:
  k_cache, v_cache: [num_layers, num_blocks, num_kv_heads, block_size, head_dim]
A token at position p of a request lives in block block_ids[p // block_size], row p % block_size.

Decode attention over a pool in host memory (the host pool, or the device pool when the CPU
plays the device) runs in rust_cpuattn's kernel, in place; over a CUDA pool, in a device
kernel (`runner/cuda_lane.py` picks FlashInfer or Triton), with the torch path as the
reference. Inputs may live on another device than the pool (a GPU step using the host
pool): they are staged to the pool's device and the output back (`runner/staging.py`).
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from neo_async.kernels.host_values import to_device
from neo_async.platform.host_memory import host_tensor
from neo_async.native import rust_cpuattn
from neo_async.runner import cuda_lane
from neo_async.runner.host_stores import HostStores
from neo_async.runner.staging import Staging


class KVCache:
    def __init__(
        self,
        num_layers: int,
        num_blocks: int,
        num_kv_heads: int,
        block_size: int,
        head_dim: int,
        dtype: torch.dtype,
        device: torch.device,
        pin_for_cuda: bool = False,
    ) -> None:
        shape = (num_layers, num_blocks, num_kv_heads, block_size, head_dim)
        if device.type == "cpu":  # huge pages, touched once (and pinned when a GPU copies to it)
            self.k = host_tensor(shape, dtype, pin_for_cuda)
            self.v = host_tensor(shape, dtype, pin_for_cuda)
        else:
            self.k = torch.zeros(shape, dtype=dtype, device=device)
            self.v = torch.zeros(shape, dtype=dtype, device=device)
        self.block_size = block_size
        self.device = device
        self.use_rust_decode = device.type == "cpu" and rust_cpuattn is not None
        # (paged decode, paged prefill) kernels over this pool; None: the torch reference
        self.kernels = cuda_lane.attention_kernels(device)
        self.host_staging: Staging | None = None  # host decode inputs from a GPU, made on first use
        self.host_stores: HostStores | None = None  # prefill K/V from a GPU, made on first use
        self._rows_by_count: dict[int, torch.Tensor] = {}

    @property
    def bytes_per_block(self) -> int:
        """Bytes of one block over every layer, K and V."""
        return 2 * self.k[:, 0].numel() * self.k.element_size()

    def decode(
        self,
        layer: int,
        q: torch.Tensor,
        block_tables: torch.Tensor,
        seq_lens: torch.Tensor,
        scale: float,
        k_new: torch.Tensor,
        v_new: torch.Tensor,
        out: torch.Tensor,
    ) -> None:
        """Stores each request's new K/V row at position seq_len - 1, then attends over its seq_len tokens.

        q [B, Hq, D], k_new, v_new [B, Hkv, D] and out [B, Hq, D] (float32, contiguous, written
        in place) on any device; block_tables [B, W] int32 and seq_lens [B] int32 (the new token
        included) on the pool's device.
        """
        if not self.use_rust_decode:  # run now: no copy of the inputs
            self._torch_decode(layer, q, block_tables, seq_lens, scale, k_new, v_new, out)
            return
        if q.is_cpu:  # the CPU device's own pool: one kernel call, inputs converted only where needed
            rust_cpuattn.paged_decode_attention(
                q.to(torch.float32).contiguous(), self.k, self.v, block_tables, self._rows(q.shape[0]), seq_lens, layer,
                scale, out=out, k_new=k_new.to(self.k.dtype).contiguous(), v_new=v_new.to(self.v.dtype).contiguous(),
            )
            return
        job = self._job(layer, q, block_tables, seq_lens, scale, k_new, v_new, out, fresh=False)
        job.run()
        job.finish()

    def decode_job(
        self,
        layer: int,
        q: torch.Tensor,
        block_tables: torch.Tensor,
        seq_lens: torch.Tensor,
        scale: float,
        k_new: torch.Tensor,
        v_new: torch.Tensor,
        out: torch.Tensor,
    ) -> "DecodeJob":
        """`decode` in three parts: inputs staged now (fresh tensors: the caller may reuse q,
        k_new, v_new at once; from a GPU, copies ordered after the work enqueued so far, so
        the caller may drop them but not overwrite them in place), `run()` (on any thread;
        rust_cpuattn releases the GIL), then `finish()` on the calling thread. Until finish,
        nobody may read `out`."""
        if not self.use_rust_decode:
            q, k_new, v_new = q.clone(), k_new.clone(), v_new.clone()
            return DecodeJob(lambda: self._torch_decode(layer, q, block_tables, seq_lens, scale, k_new, v_new, out))
        return self._job(layer, q, block_tables, seq_lens, scale, k_new, v_new, out, fresh=True)

    def _torch_decode(
        self, layer: int, q: torch.Tensor, block_tables: torch.Tensor, seq_lens: torch.Tensor, scale: float,
        k_new: torch.Tensor, v_new: torch.Tensor, out: torch.Tensor,
    ) -> None:
        """`decode` through torch and the device kernels (a CUDA pool) or the reference."""
        positions = seq_lens.long() - 1
        blocks = block_tables.long().gather(1, (positions // self.block_size).unsqueeze(1)).squeeze(1)
        self.store(layer, k_new, v_new, blocks, positions % self.block_size)
        if self.kernels is None:
            out.copy_(decode_attention(self, layer, q, block_tables, seq_lens, scale))
        else:
            self.kernels[0](q, self.k[layer], self.v[layer], block_tables, seq_lens, scale, out)

    def _job(
        self, layer: int, q: torch.Tensor, block_tables: torch.Tensor, seq_lens: torch.Tensor, scale: float,
        k_new: torch.Tensor, v_new: torch.Tensor, out: torch.Tensor, fresh: bool,
    ) -> "DecodeJob":
        """A rust_cpuattn job; fresh: its inputs in tensors of their own (else views of the
        caller's where their layout already fits: only for a job run at once)."""
        if q.device.type == "cuda":
            return self._staged_decode_job(layer, q, block_tables, seq_lens, scale, k_new, v_new, out)
        stage = _fresh if fresh else _fitting
        staged = out if out.device == self.device else torch.empty(out.shape, dtype=torch.float32)
        args = (
            stage(q, self.device, torch.float32),
            self.k,
            self.v,
            block_tables,
            self._rows(q.shape[0]),
            seq_lens,
            layer,
            scale,
        )
        k_staged, v_staged = stage(k_new, self.device, self.k.dtype), stage(v_new, self.device, self.v.dtype)

        def run_rust() -> None:
            rust_cpuattn.paged_decode_attention(*args, out=staged, k_new=k_staged, v_new=v_staged)

        def submit(lane: rust_cpuattn.HostLane) -> rust_cpuattn.DecodeTicket:
            return lane.submit_decode(*args, out=staged, k_new=k_staged, v_new=v_staged)

        return DecodeJob(run_rust, None if staged is out else lambda: out.copy_(staged), submit)

    def _rows(self, num_requests: int) -> torch.Tensor:
        """[0, 1, .., num_requests - 1] int32 (request b reads block table row b), made once per
        count and never written."""
        rows = self._rows_by_count.get(num_requests)
        if rows is None:
            rows = self._rows_by_count[num_requests] = torch.arange(num_requests, dtype=torch.int32)
        return rows

    def _staged_decode_job(
        self, layer: int, q: torch.Tensor, block_tables: torch.Tensor, seq_lens: torch.Tensor, scale: float,
        k_new: torch.Tensor, v_new: torch.Tensor, out: torch.Tensor,
    ) -> "DecodeJob":
        """A host pool's decode job with inputs and output on a GPU, through the copy lane."""
        if self.host_staging is None:
            self.host_staging = cuda_lane.host_staging(q.device, self.k.dtype)
        staging = self.host_staging
        slot = staging.stage_in(q, k_new, v_new)
        rows = self._rows(q.shape[0])

        def run_rust() -> None:
            slot.wait_for_host()
            rust_cpuattn.paged_decode_attention(
                slot.q, self.k, self.v, block_tables, rows, seq_lens, layer, scale,
                out=slot.out, k_new=slot.k, v_new=slot.v,
            )

        return DecodeJob(run_rust, lambda: staging.stage_out(slot, out))

    def prefill(
        self, layer: int, q: torch.Tensor, block_ids: torch.Tensor, start_pos: int, seq_len: int, scale: float,
        k_new: torch.Tensor | None = None, v_new: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Causal attention of a chunk at positions start_pos .. seq_len - 1 over this pool, its
        own K/V already stored: q [T, Hq, D]; block_ids the request's blocks (on the pool's
        device); k_new, v_new [T, Hkv, D] (q's device) the chunk's own K/V, when the caller has
        them: then only the cached prefix is read from the pool, and from a pool in host memory
        it goes to q's device without waiting for it. Returns [T, Hq, D] float32 on q's device."""
        if self.kernels is not None and q.device == self.device:
            out = torch.empty(q.shape, dtype=torch.float32, device=q.device)
            self.kernels[1](q, self.k[layer], self.v[layer], block_ids, start_pos, scale, out)
            return out
        if k_new is None or v_new is None:
            k, v = self.gather(layer, block_ids, seq_len)
            return prefill_attention(q, k.to(q.device), v.to(q.device), start_pos, scale)
        k_prefix, v_prefix = self._gather(layer, block_ids, start_pos)  # [Hkv, start_pos, D], never pending
        k = torch.cat([_to_async(k_prefix, q.device), k_new.to(self.k.dtype).transpose(0, 1)], dim=1)
        v = torch.cat([_to_async(v_prefix, q.device), v_new.to(self.v.dtype).transpose(0, 1)], dim=1)
        return prefill_attention(q, k, v, start_pos, scale)

    def store(self, layer: int, k: torch.Tensor, v: torch.Tensor, block_ids: torch.Tensor, offsets: torch.Tensor) -> None:
        """k, v [T, Hkv, D] (any device) written at (block_ids[t], offsets[t]) for each token t;
        block_ids and offsets on the pool's device. Into a pool in host memory from a GPU, the
        write completes later (`runner/host_stores.py`: by the store of the next layer, or of
        the last one); until then only this layer's attention reads the rows, from its caller."""
        if self.host_stores is None and k.device != self.device and self.device.type == "cpu":
            self.host_stores = HostStores(cuda_lane.CudaLane(k.device), self.k, self.v)
        if self.host_stores is not None:
            self.host_stores.store(layer, k, v, block_ids, offsets)
            return
        self.k[layer][block_ids, :, offsets] = k.to(self.device, self.k.dtype)
        self.v[layer][block_ids, :, offsets] = v.to(self.device, self.v.dtype)

    def gather(self, layer: int, block_ids: torch.Tensor, length: int) -> tuple[torch.Tensor, torch.Tensor]:
        """The first `length` tokens of one request: K, V [Hkv, length, D]."""
        if self.host_stores is not None:
            self.host_stores.settle()
        return self._gather(layer, block_ids, length)

    def _gather(self, layer: int, block_ids: torch.Tensor, length: int) -> tuple[torch.Tensor, torch.Tensor]:
        width = -(-length // self.block_size)
        k = self.k[layer][block_ids[:width]]  # [W, Hkv, bs, D]
        v = self.v[layer][block_ids[:width]]
        num_kv_heads, head_dim = k.shape[1], k.shape[3]
        k = k.transpose(0, 1).reshape(num_kv_heads, -1, head_dim)[:, :length]
        v = v.transpose(0, 1).reshape(num_kv_heads, -1, head_dim)[:, :length]
        return k, v


class DecodeJob:
    """A prepared decode attention call (see `KVCache.decode_job`): `run` on any thread, then
    `finish` (the output's copy back, if any) on the calling thread. `native`, when given,
    queues the same call on a `rust_cpuattn.HostLane` instead and returns its ticket (a lane
    thread runs it without the GIL)."""

    def __init__(
        self,
        run: Callable[[], None],
        finish: Callable[[], None] | None = None,
        native: Callable[[rust_cpuattn.HostLane], rust_cpuattn.DecodeTicket] | None = None,
    ) -> None:
        self.run = run
        self._finish = finish
        self.native = native

    def finish(self) -> None:
        if self._finish is not None:
            self._finish()


def _fresh(x: torch.Tensor, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    """x on device in dtype, contiguous, in a tensor of its own (never a view of x)."""
    y = x.to(device, dtype).contiguous()
    return y.clone() if y.data_ptr() == x.data_ptr() else y


def _to_async(x: torch.Tensor, device: torch.device) -> torch.Tensor:
    """x (host) on `device`; to a GPU from pinned memory, so the host does not wait for the
    copy (the pinned buffer is kept until the copy is done by torch's host allocator)."""
    if device == x.device:
        return x
    if device.type == "cuda":
        return x.pin_memory().to(device, non_blocking=True)
    return x.to(device)


def _fitting(x: torch.Tensor, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    """x on device in dtype, contiguous (x itself when it already is)."""
    return x.to(device, dtype).contiguous()


def prefill_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, start_pos: int, scale: float) -> torch.Tensor:
    """Causal attention of one request's new tokens.

    q [T, Hq, D] at positions start_pos .. start_pos + T - 1; k, v [Hkv, start_pos + T, D]
    (cached prefix, then the new tokens). Returns [T, Hq, D] float32. A fresh prompt on CUDA
    goes through scaled_dot_product_attention, everything else through the reference.
    """
    if q.device.type == "cuda" and start_pos == 0:
        return cuda_lane.fresh_prefill(q, k, v, scale)
    return reference_prefill_attention(q, k, v, start_pos, scale)


def reference_prefill_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, start_pos: int, scale: float) -> torch.Tensor:
    """`prefill_attention` in torch ops, materialising [Hkv, G*T, ctx] float32 scores."""
    num_tokens, num_heads, head_dim = q.shape
    num_kv_heads, ctx = k.shape[0], k.shape[1]
    group = num_heads // num_kv_heads
    qf = q.float().reshape(num_tokens, num_kv_heads, group, head_dim).permute(1, 2, 0, 3)  # [Hkv, G, T, D]
    qf = qf.reshape(num_kv_heads, group * num_tokens, head_dim)
    scores = torch.bmm(qf, k.float().transpose(1, 2)) * scale  # [Hkv, G*T, ctx]
    scores = scores.view(num_kv_heads, group, num_tokens, ctx)
    q_pos = torch.arange(start_pos, start_pos + num_tokens, device=q.device).view(-1, 1)
    k_pos = torch.arange(ctx, device=q.device).view(1, -1)
    scores.masked_fill_(k_pos > q_pos, float("-inf"))
    probs = torch.softmax(scores, dim=-1).view(num_kv_heads, group * num_tokens, ctx)
    out = torch.bmm(probs, v.float())  # [Hkv, G*T, D]
    return out.view(num_kv_heads, group, num_tokens, head_dim).permute(2, 0, 1, 3).reshape(num_tokens, num_heads, head_dim)


def decode_attention(
    cache: KVCache, layer: int, q: torch.Tensor, block_tables: torch.Tensor, seq_lens: torch.Tensor, scale: float
) -> torch.Tensor:
    """One new token per request over its cached tokens.

    q [B, Hq, D]; block_tables [B, W] int32 or int64 (padded with any valid id); seq_lens [B]
    (the new token included, already stored). Returns [B, Hq, D] float32.
    """
    batch, num_heads, head_dim = q.shape
    width = block_tables.shape[1]
    block_tables = block_tables.long()
    k = cache.k[layer][block_tables]  # [B, W, Hkv, bs, D]
    v = cache.v[layer][block_tables]
    num_kv_heads, block_size = k.shape[2], k.shape[3]
    ctx = width * block_size
    group = num_heads // num_kv_heads
    k = k.transpose(1, 2).reshape(batch * num_kv_heads, ctx, head_dim).float()
    v = v.transpose(1, 2).reshape(batch * num_kv_heads, ctx, head_dim).float()
    qf = q.float().reshape(batch * num_kv_heads, group, head_dim)
    scores = torch.bmm(qf, k.transpose(1, 2)).mul_(scale)  # [B*Hkv, G, ctx]
    pad = torch.arange(ctx, device=q.device).view(1, -1) >= seq_lens.view(-1, 1)  # [B, ctx]
    scores = scores.view(batch, num_kv_heads, group, ctx).masked_fill_(pad.view(batch, 1, 1, ctx), float("-inf"))
    probs = torch.softmax(scores, dim=-1).view(batch * num_kv_heads, group, ctx)
    return torch.bmm(probs, v).view(batch, num_heads, head_dim)


def pad_block_tables(tables: list[list[int]], device: torch.device) -> torch.Tensor:
    width = max(len(t) for t in tables)
    padded = [t + [t[0]] * (width - len(t)) for t in tables]
    return to_device(torch.tensor(padded, dtype=torch.int32), device)



