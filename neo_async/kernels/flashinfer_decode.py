"""FlashInfer's batch decode over our pool layout (its "HND" paged layout), when installed.

Optional (`flashinfer-python`); only a GPU ever takes this path. A plan is made once per
step: the executor passes the same block_tables tensor to every layer of a step, so the plan
is keyed by that tensor. The plan reads the tables' and lengths' host copies (`host_values`:
the batch made them on the host), so planning never waits for the device.
"""

from __future__ import annotations

import torch

from neo_async.kernels.host_values import host_values

WORKSPACE_BYTES = 128 << 20


def unavailable_reason(device: torch.device) -> str | None:
    """None when FlashInfer can serve decode on `device`, else why not."""
    if device.type != "cuda":
        return "not a CUDA device"
    try:
        import flashinfer  # noqa: F401
    except Exception as exc:  # ImportError, or a build that does not load on this GPU
        return f"flashinfer unavailable: {exc}"
    return None


class FlashInferDecode:
    """Callable with `kernels.decode.paged_decode`'s signature."""

    def __init__(self, device: torch.device) -> None:
        import flashinfer

        workspace = torch.empty(WORKSPACE_BYTES, dtype=torch.uint8, device=device)
        self.wrapper = flashinfer.BatchDecodeWithPagedKVCacheWrapper(workspace, kv_layout="HND")
        self.planned_for: tuple[torch.Tensor, torch.Tensor, float, torch.dtype] | None = None

    def __call__(
        self,
        q: torch.Tensor,
        k_cache: torch.Tensor,
        v_cache: torch.Tensor,
        block_tables: torch.Tensor,
        seq_lens: torch.Tensor,
        scale: float,
        out: torch.Tensor,
        num_splits: int | None = None,
    ) -> None:
        planned = self.planned_for
        if planned is None or planned[0] is not block_tables or planned[1] is not seq_lens or planned[2:] != (scale, k_cache.dtype):
            self._plan(q, k_cache, block_tables, seq_lens, scale)
            self.planned_for = (block_tables, seq_lens, scale, k_cache.dtype)
        result = self.wrapper.run(q.to(k_cache.dtype), (k_cache, v_cache))  # [B, Hq, D] in the pool's dtype
        out.copy_(result)

    def _plan(self, q: torch.Tensor, k_cache: torch.Tensor, block_tables: torch.Tensor, seq_lens: torch.Tensor, scale: float) -> None:
        _, num_kv_heads, block_size, head_dim = k_cache.shape
        inputs = plan_inputs(host_values(block_tables), host_values(seq_lens), block_size)
        indptr, indices, last_page_len = (x.pin_memory() for x in inputs)  # copied over without a sync
        self.wrapper.plan(
            indptr, indices, last_page_len,
            q.shape[1], num_kv_heads, head_dim, block_size,
            q_data_type=k_cache.dtype, kv_data_type=k_cache.dtype, sm_scale=scale,
        )


def plan_inputs(
    block_tables: torch.Tensor, seq_lens: torch.Tensor, block_size: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """FlashInfer's paged-KV description of a batch from host tensors: indptr [B + 1], indices
    [sum of pages] (each request's used pages, in order) and last_page_len [B], all int32."""
    lens = seq_lens.long()
    num_pages = (lens + block_size - 1) // block_size  # [B]
    used = torch.arange(block_tables.shape[1]).view(1, -1) < num_pages.view(-1, 1)  # [B, W]
    indices = block_tables[used].int()  # row-major: request by request
    indptr = torch.zeros(len(lens) + 1, dtype=torch.int32)
    indptr[1:] = num_pages.cumsum(0)
    last_page_len = (lens - (num_pages - 1) * block_size).int()
    return indptr, indices, last_page_len
