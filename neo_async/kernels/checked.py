"""A decode kernel that must prove itself on its first call, with a fallback.

An optional backend (FlashInfer) can import and still fail where it first runs: its JIT
compile, a dtype or head size it was not built for, a layout misread. Its first call
therefore runs the fallback (our Triton kernel) on the same inputs too and compares: an
error or a different result switches to the fallback for good, logged once, and that call's
output is the fallback's. Later calls run one kernel only.
"""

from __future__ import annotations

from collections.abc import Callable

import structlog
import torch

log = structlog.get_logger(__name__)

DecodeFn = Callable[..., None]  # kernels.decode.paged_decode's signature


def tolerance(kv_dtype: torch.dtype) -> float:
    """Absolute difference two correct kernels may show (outputs are convex sums of V rows)."""
    return 1e-4 if kv_dtype == torch.float32 else 3e-2


class CheckedDecode:
    def __init__(self, primary: DecodeFn, fallback: DecodeFn, name: str, fallback_name: str) -> None:
        self.primary = primary
        self.fallback = fallback
        self.name = name
        self.fallback_name = fallback_name
        self.checked = False
        self.active = primary

    @property
    def backend(self) -> str:
        return self.name if self.active is self.primary else self.fallback_name

    def __call__(
        self, q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor, block_tables: torch.Tensor,
        seq_lens: torch.Tensor, scale: float, out: torch.Tensor, num_splits: int | None = None,
    ) -> None:
        if self.checked:
            self.active(q, k_cache, v_cache, block_tables, seq_lens, scale, out)
            return
        self.checked = True
        self.fallback(q, k_cache, v_cache, block_tables, seq_lens, scale, out)
        expected = out.clone()  # [B, Hq, D] float32
        try:
            self.primary(q, k_cache, v_cache, block_tables, seq_lens, scale, out)
            error = float((out - expected).abs().max()) if out.numel() else 0.0
        except Exception as exc:  # a JIT compile, an unsupported shape or dtype, a bad launch
            out.copy_(expected)
            self._fall_back(f"{type(exc).__name__}: {exc}")
            return
        if not error <= tolerance(k_cache.dtype):  # NaN included
            out.copy_(expected)
            self._fall_back(f"differs from {self.fallback_name} by {error:.3g}")
            return
        log.info("cuda_attention_checked", decode=self.name, max_abs_diff=error)

    def _fall_back(self, reason: str) -> None:
        self.active = self.fallback
        log.warning("cuda_attention_fallback", backend=self.fallback_name, failed=self.name, reason=reason[:500])


def backend_name(decode: DecodeFn | None) -> str:
    """The decode backend a pool's kernels run: torch (None), triton, flashinfer."""
    if decode is None:
        return "torch"
    if isinstance(decode, CheckedDecode):
        return decode.backend
    return "flashinfer" if "flashinfer" in type(decode).__module__ else "triton"
