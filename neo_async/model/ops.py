"""Row-wise layer operations around the projections: RMSNorm, residual add + RMSNorm,
rotary embedding, SiLU-gated product.

On CPU tensors each is one rust_cpuattn call (a fused pass over the rows) instead of a chain
of small torch operations; elsewhere (CUDA), or without the extension, the torch versions
below run. The torch versions are the reference the fused ones are tested against: both
compute in float32 and round to the tensor's dtype at the same points.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from neo_async.native import rust_cpuattn


_FUSED_DTYPES = (torch.float32, torch.bfloat16)


def _fused(t: torch.Tensor) -> bool:
    # NOTE: `is_cpu` rather than `device.type`: this runs 4 times per layer per step, and
    # building a device object costs more than the check.
    return rust_cpuattn is not None and t.is_cpu and t.dtype in _FUSED_DTYPES


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """x [T, H] contiguous, weight [H] float32 -> [T, H] in x's dtype."""
    if not _fused(x):
        return torch_rms_norm(x, weight, eps)
    out = torch.empty_like(x)
    rust_cpuattn.rms_norm(x, weight, eps, out)
    return out


def add_rms_norm(residual: torch.Tensor, x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """residual += x (in place, both [T, H] contiguous, same dtype); returns rms_norm(residual)."""
    if not _fused(x):
        residual.add_(x)
        return torch_rms_norm(residual, weight, eps)
    out = torch.empty_like(x)
    rust_cpuattn.add_rms_norm(residual, x, weight, eps, out)
    return out


def rope_(rows: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, num_heads: int) -> None:
    """Rotates in place the first num_heads heads of each row of rows [T, W] (contiguous);
    cos, sin [T, head_dim / 2] float32 contiguous."""
    if not _fused(rows):
        torch_rope_(rows, cos, sin, num_heads)
        return
    rust_cpuattn.rope(rows, cos, sin, num_heads)


def silu_mul(gate_up: torch.Tensor) -> torch.Tensor:
    """gate_up [T, 2I] contiguous, each row [gate | up] -> silu(gate) * up [T, I]."""
    if not _fused(gate_up):
        return torch_silu_mul(gate_up)
    out = torch.empty(gate_up.shape[0], gate_up.shape[1] // 2, dtype=gate_up.dtype, device=gate_up.device)
    rust_cpuattn.silu_mul(gate_up, out)
    return out


def torch_rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    xf = x.float()
    xf = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + eps)
    return (xf * weight).to(x.dtype)


def torch_rope_(rows: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, num_heads: int) -> None:
    half = cos.shape[-1]
    x = rows[:, : num_heads * 2 * half].view(rows.shape[0], num_heads, 2 * half)
    xf = x.float()
    x1, x2 = xf[..., :half], xf[..., half:]
    c, s = cos.unsqueeze(1), sin.unsqueeze(1)
    x.copy_(torch.cat((x1 * c - x2 * s, x2 * c + x1 * s), dim=-1))


def torch_silu_mul(gate_up: torch.Tensor) -> torch.Tensor:
    gate, up = gate_up.chunk(2, dim=-1)
    return F.silu(gate) * up
