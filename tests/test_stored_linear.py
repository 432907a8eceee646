"""Projections on the weight as stored (rust_cpuattn.StoredWeight) against the float64 product of
the `gguf` package's dequantised values: each block type, every SIMD path this CPU has (by
argument and by RUST_CPUATTN_ISA), bf16 and float32 activations; bad inputs raise ValueError;
`Linear` runs them below the measured crossover; the embedded model's projections agree with
the dense ones."""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from gguf import GGML_QUANT_SIZES, GGMLQuantizationType as T
from gguf.quants import dequantize

from neo_async.model import stored_linear
from neo_async.model.linear import Linear
from neo_async.native import rust_cpuattn
from tests.seeds import stable_seed

pytestmark = pytest.mark.skipif(not stored_linear.available(), reason="needs the rust_cpuattn extension")

# The integer-dot path's effect on the embedded model's logits against transformers (max |diff| / max
# |logit|), 0.057 measured (argmax equal); the exact path is within 1e-4 (test_embedded_model.py).
INT8_LOGIT_REL_ERROR = 0.1

# byte offsets of each block type's f16 scales (random bits there could be inf or NaN)
_F16_FIELDS = {T.Q4_0: (0,), T.Q4_1: (0, 2), T.Q8_0: (0,), T.Q5_0: (0,), T.Q5_1: (0, 2), T.Q2_K: (80, 82),
               T.Q3_K: (108,), T.Q4_K: (0, 2), T.Q5_K: (0, 2), T.Q6_K: (208,)}
TYPES = [T.Q4_0, T.Q4_1, T.Q8_0, T.Q4_K, T.Q6_K, T.Q5_0, T.Q5_1, T.Q2_K, T.Q3_K, T.Q5_K, T.BF16, T.F16, T.F32]


def random_weight(ggml_type: T, rows: int, cols: int, seed: int) -> np.ndarray:
    """uint8 [rows, row_bytes]: random quants, finite small scales (zero and subnormal included)."""
    rng = np.random.default_rng(seed)
    if ggml_type in (T.BF16, T.F16, T.F32):
        values = torch.from_numpy(rng.standard_normal((rows, cols)).astype(np.float32))
        dtype = {T.BF16: torch.bfloat16, T.F16: torch.float16, T.F32: torch.float32}[ggml_type]
        bits = values.to(dtype).view(torch.int16 if dtype != torch.float32 else torch.int32).numpy()
        return bits.view(np.uint8).reshape(rows, -1).copy()
    block, size = GGML_QUANT_SIZES[ggml_type]
    data = rng.integers(0, 256, (rows * cols // block, size), dtype=np.uint8)
    scales = (rng.uniform(-0.05, 0.05, (data.shape[0], 2))).astype(np.float16)
    scales[::11] = 0
    scales[1::11] = np.float16(-3e-7)
    for i, at in enumerate(_F16_FIELDS[ggml_type]):
        data[:, at : at + 2] = scales[:, i : i + 1].view(np.uint8)
    return data.reshape(rows, -1)


def float64_product(raw: np.ndarray, ggml_type: T, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(x @ W^T in float64, the f32 evaluation's error bound per output)."""
    w = torch.from_numpy(np.asarray(dequantize(raw, ggml_type), dtype=np.float64))  # [rows, cols]
    x64 = x.double()
    magnitude = (w.abs() + w.abs().max()) @ x64.abs().T  # covers the factored block min
    u = 2.0**-24
    return x64 @ w.T, 2 * (w.shape[1] + 8) * u * magnitude.T + 1e-30


@pytest.mark.parametrize("ggml_type", TYPES, ids=lambda t: t.name)
@pytest.mark.parametrize("num_rows", [1, 3, 16])
def test_each_type_equals_the_float64_product_on_every_isa(ggml_type, num_rows):
    block, _ = GGML_QUANT_SIZES[ggml_type]
    rows, cols = 37, (512 if block == 256 else 96)
    raw = random_weight(ggml_type, rows, cols, stable_seed("stored", ggml_type.name, num_rows))
    weight = rust_cpuattn.StoredWeight(int(ggml_type), raw, rows, cols)
    assert (weight.rows, weight.cols, weight.nbytes, weight.ggml_type) == (rows, cols, raw.size, int(ggml_type))
    gen = torch.Generator().manual_seed(stable_seed("stored-x", num_rows))
    for dtype in (torch.float32, torch.bfloat16):
        x = torch.randn(num_rows, cols, generator=gen).to(dtype)
        want, bound = float64_product(raw, ggml_type, x)
        if dtype == torch.bfloat16:
            bound = bound + 2**-8 * (want.abs() + bound)  # the output rounded to bf16
        for isa in rust_cpuattn.supported_isas():
            out = torch.full((num_rows, rows + 4), float("nan"), dtype=dtype)
            weight.matmul(x, out, 2, isa=isa)
            got = out[:, 2 : 2 + rows].double()
            assert torch.isnan(out[:, :2]).all() and torch.isnan(out[:, 2 + rows :]).all()
            assert ((got - want).abs() <= bound).all(), (isa, dtype, (got - want).abs().max().item())
        ref = torch.empty(num_rows, rows, dtype=dtype)
        weight.matmul(x, ref, reference=True)
        assert ((ref.double() - want).abs() <= bound).all()


def test_the_isa_environment_variable_forces_the_path():
    code = (
        "import numpy as np, torch, rust_cpuattn as r\n"
        "assert r.isa() == 'scalar', r.isa()\n"
        "w = r.StoredWeight(3, np.zeros((4, 20), np.uint8), 4, 32)\n"
        "y = torch.ones(1, 4); w.matmul(torch.ones(1, 32), y); assert (y == 0).all()\n"
    )
    env = {**os.environ, "RUST_CPUATTN_ISA": "scalar"}
    subprocess.run([sys.executable, "-c", code], env=env, check=True, timeout=120)


def test_bad_inputs_raise_value_errors():
    raw = random_weight(T.Q4_1, 8, 64, 0)
    w = rust_cpuattn.StoredWeight(int(T.Q4_1), raw, 8, 64)
    x = torch.randn(2, 64)
    with pytest.raises(ValueError):
        rust_cpuattn.StoredWeight(int(T.Q4_1), raw, 8, 63)  # not whole blocks
    with pytest.raises(ValueError):
        rust_cpuattn.StoredWeight(int(T.Q4_1), raw, 9, 64)  # too few bytes
    with pytest.raises(ValueError):
        rust_cpuattn.StoredWeight(99, raw, 8, 64)  # no such type
    with pytest.raises(ValueError):
        rust_cpuattn.StoredWeight(int(T.Q4_1), raw[:, ::2], 8, 32)  # not contiguous
    with pytest.raises(ValueError):
        w.matmul(torch.randn(2, 32), torch.empty(2, 8))  # wrong columns
    with pytest.raises(ValueError):
        w.matmul(x, torch.empty(3, 8))  # rows differ
    with pytest.raises(ValueError):
        w.matmul(x, torch.empty(2, 8), 1)  # offset + rows past the row
    with pytest.raises(ValueError):
        w.matmul(x.to(torch.float64), torch.empty(2, 8))  # dtype
    with pytest.raises(ValueError):
        w.matmul(torch.randn(2, 128)[:, ::2], torch.empty(2, 8))  # not contiguous
    with pytest.raises(ValueError):
        w.matmul(x, torch.empty(2, 8), isa="neon")
    buf = torch.zeros(200)
    with pytest.raises(ValueError):
        w.matmul(buf[:128].view(2, 64), buf[100:116].view(2, 8))  # out overlaps x
    with pytest.raises(ValueError):
        rust_cpuattn.set_linear_threads(0)


def _dense_and_stored(ggml_type: T, rows: int, cols: int) -> tuple[torch.Tensor, stored_linear.StoredParts]:
    raw = random_weight(ggml_type, rows, cols, stable_seed("linear", ggml_type.name))
    dense = torch.from_numpy(np.asarray(dequantize(raw, ggml_type), dtype=np.float32))
    return dense, stored_linear.build([(int(ggml_type), raw)], cols, torch.float32)


def test_linear_runs_the_stored_weight_up_to_its_crossover(monkeypatch):
    dense, stored = _dense_and_stored(T.Q4_1, 64, 96)
    monkeypatch.setenv(stored_linear.MAX_ROWS_ENV, "4")
    linear = Linear(dense, stored=stored)
    assert linear.stored is stored and stored.max_rows == 4
    calls = []

    def fake(self, x):
        calls.append(x.shape[0])
        return torch.zeros(x.shape[0], 64)

    monkeypatch.setattr(stored_linear.StoredParts, "__call__", fake)
    linear(torch.randn(4, 96))
    linear(torch.randn(5, 96))
    assert calls == [4]


def test_crossover_is_measured_once_per_shape(monkeypatch):
    monkeypatch.delenv(stored_linear.MAX_ROWS_ENV, raising=False)
    dense, stored = _dense_and_stored(T.Q8_0, 32, 64)
    stored_linear._crossovers.clear()
    Linear(dense, stored=stored)
    assert stored.max_rows in stored_linear._CANDIDATE_ROWS + (0,)
    assert len(stored_linear._crossovers) == 1
    _, again = _dense_and_stored(T.Q8_0, 32, 64)
    Linear(dense, stored=again)
    assert again.max_rows == stored.max_rows and len(stored_linear._crossovers) == 1


def test_mixed_types_run_as_one_output():
    parts = [(int(T.Q4_K), random_weight(T.Q4_K, 5, 256, 1)), (int(T.Q4_K), random_weight(T.Q4_K, 3, 256, 2)),
             (int(T.Q6_K), random_weight(T.Q6_K, 4, 256, 3))]
    stored = stored_linear.build(parts, 256, torch.float32)
    assert [start for start, _ in stored.runs] == [0, 8] and stored.rows == 12
    x = torch.randn(3, 256)
    want = torch.cat([float64_product(raw, T(t), x)[0] for t, raw in parts], dim=1)
    torch.testing.assert_close(stored(x).double(), want, rtol=1e-4, atol=1e-4)


def test_bf16_dense_weight_kept_as_16_bits():
    w = torch.randn(40, 48).to(torch.bfloat16)
    stored = stored_linear.from_dense(w.float(), torch.bfloat16)
    assert stored.ggml_types == (30,) and stored.nbytes == w.numel() * 2
    x = torch.randn(2, 48).to(torch.bfloat16)
    want = x.double() @ w.double().T
    assert ((stored(x).double() - want).abs() <= 2**-7 * want.abs() + 1e-3).all()
    assert stored_linear.from_dense(w.float(), torch.float32) is None


@pytest.mark.slow
def test_embedded_model_projections_match_the_dense_ones():
    from neo_async.model.loader import load_model

    loaded = load_model(None, torch.float32, torch.device("cpu"), skip_tokenizer_init=True)
    w = loaded.weights
    gen = torch.Generator().manual_seed(0)
    linears = [w.lm_head] + [getattr(layer, k) for layer in w.layers[:4] for k in ("qkv", "o", "gate_up", "down")]
    for linear in linears:
        assert linear.stored is not None
        x = torch.randn(2, linear.in_features, generator=gen)
        ours, dense = linear.stored(x).double(), linear.dense(x).double()
        assert (ours - dense).abs().max() <= 1e-4 * dense.abs().max()


def q8_error_bound(raw: np.ndarray, ggml_type: T, x: torch.Tensor) -> torch.Tensor:
    """The integer-dot path's documented error per output: per 32-value block, max|x| / 254
    times the block's sum of |d q| (the weight less its min)."""
    w = np.asarray(dequantize(raw, ggml_type), dtype=np.float64)  # [rows, cols]
    if ggml_type == T.Q4_1:  # the min carries no quantisation error (times the exact sum)
        mins = raw.reshape(-1, 20)[:, 2:4].copy().view(np.float16).astype(np.float64).reshape(w.shape[0], -1)
        w = w - np.repeat(mins, 32, axis=1)
    rows, cols = w.shape
    wabs = torch.from_numpy(np.abs(w).reshape(rows, cols // 32, 32).sum(-1))  # [rows, blocks]
    amax = x.double().abs().reshape(x.shape[0], cols // 32, 32).amax(-1) / 254  # [M, blocks]
    return amax @ wabs.T


@pytest.mark.parametrize("ggml_type", [T.Q4_0, T.Q4_1, T.Q8_0], ids=lambda t: t.name)
@pytest.mark.parametrize("num_rows", [1, 5, 16])
def test_int8_path_is_within_its_documented_error(ggml_type, num_rows):
    rows, cols = 37, 192
    raw = random_weight(ggml_type, rows, cols, stable_seed("stored-int8", ggml_type.name, num_rows))
    weight = rust_cpuattn.StoredWeight(int(ggml_type), raw, rows, cols)
    gen = torch.Generator().manual_seed(stable_seed("stored-int8-x", num_rows))
    x = torch.randn(num_rows, cols, generator=gen)
    want, bound = float64_product(raw, ggml_type, x)
    bound = bound + q8_error_bound(raw, ggml_type, x)
    errors = []
    for isa in rust_cpuattn.supported_isas():
        out = torch.empty(num_rows, rows)
        weight.matmul(x, out, isa=isa, arith="int8")
        err = (out.double() - want).abs()
        assert (err <= bound).all(), (isa, (err - bound).max().item())
        errors.append(out)
    # Every ISA computes the same integer dots: they differ only by f32 summation order.
    for other in errors[1:]:
        torch.testing.assert_close(other, errors[0], rtol=1e-5, atol=1e-6)


def test_arith_is_checked_and_int8_is_the_16_bit_default(monkeypatch):
    raw = random_weight(T.Q4_1, 4, 32, 0)
    weight = rust_cpuattn.StoredWeight(int(T.Q4_1), raw, 4, 32)
    with pytest.raises(ValueError, match="arithmetic"):
        weight.matmul(torch.zeros(1, 32), torch.empty(1, 4), arith="int4")
    monkeypatch.delenv(stored_linear.ARITH_ENV, raising=False)
    assert stored_linear.build([(int(T.Q4_1), raw)], 32, torch.bfloat16).arith == "int8"
    assert stored_linear.build([(int(T.Q4_1), raw)], 32, torch.float32).arith == "f32"
    monkeypatch.setenv(stored_linear.ARITH_ENV, "f32")
    assert stored_linear.build([(int(T.Q4_1), raw)], 32, torch.bfloat16).arith == "f32"
    monkeypatch.setenv(stored_linear.ARITH_ENV, "fp8")
    with pytest.raises(ValueError, match=stored_linear.ARITH_ENV):
        stored_linear.build([(int(T.Q4_1), raw)], 32, torch.bfloat16)


@pytest.mark.slow
def test_int8_path_logits_against_transformers(monkeypatch):
    """The embedded model with every projection on the integer-dot path (the prompt too): its
    last-token logits against transformers' float32 forward on the same GGUF weights."""
    import transformers

    from neo_async import LLM, SamplingParams
    from neo_async.model.registry import default_model_path

    monkeypatch.setenv(stored_linear.ARITH_ENV, "int8")
    monkeypatch.setenv(stored_linear.MAX_ROWS_ENV, "4096")
    path = default_model_path()
    hf = transformers.AutoModelForCausalLM.from_pretrained(str(path.parent), gguf_file=path.name, dtype=torch.float32).eval()
    llm = LLM(dtype="float32", device_kv_tokens=1024)
    engine = llm.engine
    prompt = llm.tokenizer.encode(llm.tokenizer.apply_chat_template([{"role": "user", "content": "What is the capital of France?"}]))
    engine.worker.executor.keep_logits = True
    engine.add_request(engine.make_request(prompt, SamplingParams(temperature=0.0, max_tokens=1), "p"))
    ours = engine.worker.executor.execute(engine.scheduler.schedule()).logits["p"].cpu().double()  # [vocab]
    with torch.no_grad():
        ref = hf(torch.tensor([prompt])).logits[0, -1].double()
    rel = ((ours - ref).abs().max() / ref.abs().max()).item()
    assert rel < INT8_LOGIT_REL_ERROR, rel
    assert ours.argmax() == ref.argmax()
