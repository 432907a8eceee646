"""The fused row operations (rust_cpuattn) against their torch versions and float64, on fresh
random rows; and the errors the extension raises for bad arguments."""

from __future__ import annotations

import pytest
import rust_cpuattn
import torch

from neo_async.model import ops

SHAPES = [(1, 576), (7, 64), (33, 1000)]
TOL = {torch.float32: 2e-6, torch.bfloat16: 1 / 128}


def _randn(*shape, seed, dtype=torch.float32) -> torch.Tensor:
    return (torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64) * 2).to(dtype)


def _rms64(x: torch.Tensor, w: torch.Tensor, eps: float) -> torch.Tensor:
    x = x.double()
    return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps) * w.double()


def _close(got: torch.Tensor, want: torch.Tensor, tol: float) -> None:
    torch.testing.assert_close(got.double(), want.double(), rtol=tol, atol=tol)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("shape", SHAPES)
def test_rms_norm_and_add_rms_norm(dtype, shape):
    x, r = _randn(*shape, seed=1, dtype=dtype), _randn(*shape, seed=2, dtype=dtype)
    w = _randn(shape[1], seed=3)
    assert ops._fused(x)
    _close(ops.rms_norm(x, w, 1e-5), _rms64(x, w, 1e-5), TOL[dtype])
    _close(ops.rms_norm(x, w, 1e-5), ops.torch_rms_norm(x, w, 1e-5), TOL[dtype])
    fused_res, torch_res = r.clone(), r.clone()
    fused = ops.add_rms_norm(fused_res, x, w, 1e-6)
    torch_res.add_(x)
    assert torch.equal(fused_res, torch_res)  # one rounding of the sum, as torch's add
    _close(fused, _rms64(torch_res, w, 1e-6), TOL[dtype])


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("num_heads,rotated,head_dim", [(12, 12, 64), (15, 12, 64), (48, 40, 128)])
def test_rope_in_place(dtype, num_heads, rotated, head_dim):
    rows = 5
    x = _randn(rows, num_heads * head_dim, seed=4, dtype=dtype)
    angles = _randn(rows, head_dim // 2, seed=5, dtype=torch.float64) * 10
    cos, sin = angles.cos().float(), angles.sin().float()
    fused, reference = x.clone(), x.clone()
    ops.rope_(fused, cos, sin, rotated)
    ops.torch_rope_(reference, cos, sin, rotated)
    half = head_dim // 2
    heads = x[:, : rotated * head_dim].double().view(rows, rotated, head_dim)
    x1, x2 = heads[..., :half], heads[..., half:]
    c, s = cos.double().unsqueeze(1), sin.double().unsqueeze(1)
    want = torch.cat((x1 * c - x2 * s, x2 * c + x1 * s), -1).view(rows, -1)
    for got in (fused, reference):
        _close(got[:, : rotated * head_dim], want, TOL[dtype])
        assert torch.equal(got[:, rotated * head_dim :], x[:, rotated * head_dim :])  # V untouched


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_silu_mul(dtype):
    gate_up = _randn(9, 2 * 1536, seed=6, dtype=dtype)
    g, u = gate_up.double().chunk(2, -1)
    _close(ops.silu_mul(gate_up), g * torch.sigmoid(g) * u, TOL[dtype])
    _close(ops.silu_mul(gate_up), ops.torch_silu_mul(gate_up), TOL[dtype])


def test_bad_arguments_raise_value_error():
    x, w = torch.zeros(4, 8), torch.ones(8)
    out = torch.empty(4, 8)
    cases = [
        lambda: rust_cpuattn.rms_norm(x, torch.ones(7), 1e-5, out),  # weight length
        lambda: rust_cpuattn.rms_norm(x, w.double(), 1e-5, out),  # weight dtype
        lambda: rust_cpuattn.rms_norm(x, w, 1e-5, torch.empty(4, 8, dtype=torch.bfloat16)),  # out dtype
        lambda: rust_cpuattn.rms_norm(x, w, 1e-5, x),  # out aliases x
        lambda: rust_cpuattn.rms_norm(x.t(), torch.ones(4), 1e-5, torch.empty(8, 4)),  # not contiguous
        lambda: rust_cpuattn.rms_norm(x, w, -1.0, out),  # eps
        lambda: rust_cpuattn.add_rms_norm(x, x, w, 1e-5, out),  # residual aliases x
        lambda: rust_cpuattn.rope(x, torch.ones(4, 4), torch.ones(4, 4), 2),  # 2 heads of 8 in rows of 8
        lambda: rust_cpuattn.rope(x, torch.ones(3, 4), torch.ones(3, 4), 1),  # row count
        lambda: rust_cpuattn.silu_mul(x, torch.empty(4, 3)),  # not half
        lambda: rust_cpuattn.silu_mul(x, torch.empty(4, 4, dtype=torch.float16).view(torch.int32)),  # dtype
        lambda: rust_cpuattn.rms_norm("x", w, 1e-5, out),
    ]
    for i, case in enumerate(cases):
        with pytest.raises(ValueError):
            case()
            pytest.fail(f"case {i} did not raise")
