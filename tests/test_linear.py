"""Projections: packed and plain, and bf16 weights widened to float32 products, against a
float64 reference on the same (bf16-rounded) values."""

from __future__ import annotations

import pytest
import torch

from neo_async.model import linear as linear_module
from neo_async.model.linear import Linear
from tests.seeds import stable_seed


@pytest.mark.parametrize("widen", [False, True])
@pytest.mark.parametrize("rows", [1, 7, 64])
def test_bf16_projection_matches_float64(widen, rows):
    gen = torch.Generator().manual_seed(stable_seed("linear", widen, rows))
    w = torch.randn(96, 80, generator=gen).to(torch.bfloat16)
    x = torch.randn(rows, 80, generator=gen).to(torch.bfloat16)
    linear = Linear(w.contiguous(), widen=widen)
    assert linear.compute_dtype == (torch.float32 if widen else torch.bfloat16)
    y = linear(x)
    assert y.dtype == torch.bfloat16 and y.shape == (rows, 96)
    ref = x.double() @ w.double().T
    err = (y.double() - ref).abs().max().item()
    # bf16 output rounding (8 bits of mantissa) bounds the widened path; emulated bf16 adds its own
    bound = 2 ** -7 * ref.abs().max().item() * (1 if widen else 2)
    assert err <= bound, (err, bound)


def test_widen_leaves_float32_weights_alone():
    w = torch.randn(16, 8)
    linear = Linear(w, widen=True)
    assert linear.compute_dtype == torch.float32
    x = torch.randn(3, 8)
    torch.testing.assert_close(linear(x), x @ w.T, rtol=1e-5, atol=1e-5)


def test_only_a_plain_weight_shares_its_buffer(monkeypatch):
    w = torch.randn(64, 32).to(torch.bfloat16)
    linear = Linear(w)
    assert linear.shares_memory_with(w) == (not linear.is_packed)
    assert not Linear(w, widen=True).shares_memory_with(w)  # widened: a float32 copy
    monkeypatch.setattr(linear_module, "_mkldnn_packing_available", lambda: False)
    plain = Linear(w)
    assert not plain.is_packed and plain.shares_memory_with(w) and not plain.shares_memory_with(w.clone())
