"""Rotary position embedding tables (half-split layout, as in HF Llama)."""

from __future__ import annotations

import math

import torch

from neo_async.model.spec import ModelSpec, RopeScaling


def inv_frequencies(head_dim: int, theta: float, scaling: RopeScaling | None) -> torch.Tensor:
    """[head_dim / 2] float64 inverse frequencies, with Llama 3.1 or linear scaling applied."""
    inv = 1.0 / (theta ** (torch.arange(0, head_dim, 2, dtype=torch.float64) / head_dim))
    if scaling is None:
        return inv
    if scaling.kind == "linear":
        return inv / scaling.factor
    if scaling.kind != "llama3":
        raise ValueError(f"unsupported rope scaling {scaling.kind!r}")
    old_len = scaling.original_max_position_embeddings
    low_wavelen = old_len / scaling.low_freq_factor
    high_wavelen = old_len / scaling.high_freq_factor
    wavelen = 2 * math.pi / inv
    scaled = torch.where(wavelen > low_wavelen, inv / scaling.factor, inv)
    smooth = (old_len / wavelen - scaling.low_freq_factor) / (scaling.high_freq_factor - scaling.low_freq_factor)
    smoothed = (1 - smooth) * scaled / scaling.factor + smooth * scaled
    is_medium = (wavelen >= high_wavelen) & (wavelen <= low_wavelen)
    return torch.where(is_medium, smoothed, scaled)


def rope_table(spec: ModelSpec, max_positions: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """cos and sin, each [max_positions, head_dim / 2] float32."""
    inv = inv_frequencies(spec.head_dim, spec.rope_theta, spec.rope_scaling)
    if spec.rope_freq_factors is not None:
        inv = inv / torch.tensor(spec.rope_freq_factors, dtype=torch.float64)
    angles = torch.outer(torch.arange(max_positions, dtype=torch.float64), inv)
    return angles.cos().float().to(device), angles.sin().float().to(device)
