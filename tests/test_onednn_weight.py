"""Weights packed by our kernel in the layout learned from oneDNN: byte for byte what oneDNN's
reorder writes, the same products, and the reorder wherever nothing is learned."""

from __future__ import annotations

import gc
import types

import numpy as np
import pytest
import torch

from neo_async.model import onednn_weight
from neo_async.model.linear import Linear, _mkldnn_packing_available
from neo_async.native import rust_cpuattn
from tests.seeds import stable_seed

needs_own_packing = pytest.mark.skipif(
    rust_cpuattn is None or not _mkldnn_packing_available() or onednn_weight._blob_factory() is None,
    reason="needs the extension, oneDNN packing and torch's AOT-inductor shim",
)

SHAPES = [(960, 576), (576, 1536), (1000, 300), (7, 9), (130, 64)]


@pytest.fixture(autouse=True)
def _fresh():
    onednn_weight.start_over()
    yield
    onednn_weight.start_over()


def _reorder(weight: torch.Tensor) -> torch.Tensor | None:
    try:
        return torch.ops.mkldnn._reorder_linear_weight(weight, 16)
    except RuntimeError:
        return None


@needs_own_packing
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
@pytest.mark.parametrize("shape", SHAPES, ids=[f"{n}x{k}" for n, k in SHAPES])
def test_packed_bytes_and_products_equal_onednns_reorder(dtype, shape):
    gen = torch.Generator().manual_seed(stable_seed("onednn_weight", str(dtype), *shape))
    reference = None
    for _ in range(2):  # the first weight of a shape teaches the layout, the second reuses it
        weight = torch.randn(shape, generator=gen).to(dtype)
        reference = _reorder(weight)
        if reference is None:
            pytest.skip(f"oneDNN does not pack {dtype} on this CPU")
        packed = onednn_weight.pack(weight, 16)
        assert packed.owner is not None and packed.tensor.is_mkldnn
        assert np.array_equal(onednn_weight._packed_bytes(packed.tensor), onednn_weight._packed_bytes(reference))
        x = torch.randn(5, shape[1], generator=gen).to(dtype)
        ours = torch.ops.mkldnn._linear_pointwise(x, packed.tensor, None, "none", [], "")
        theirs = torch.ops.mkldnn._linear_pointwise(x, reference, None, "none", [], "")
        assert torch.equal(ours, theirs)  # the descriptor is the reorder's too
        assert torch.equal(packed.tensor.to_dense(), weight)


@needs_own_packing
def test_a_packed_weight_keeps_the_memory_it_reads():
    gen = torch.Generator().manual_seed(stable_seed("onednn_weight", "owner"))
    w = torch.randn(256, 128, generator=gen).to(torch.bfloat16)
    Linear(w.clone())  # learns
    weight = Linear(w.clone()).weight  # the Linear is gone; its weight is kept
    if not weight.is_mkldnn:
        pytest.skip("oneDNN does not pack bf16 on this CPU")
    assert weight._packed_memory is not None
    gc.collect()
    torch.empty(256 * 128, dtype=torch.bfloat16).fill_(7)  # would reuse freed memory
    x = torch.randn(3, 128, generator=gen).to(torch.bfloat16)
    ref = x.double() @ w.double().T
    y = torch.ops.mkldnn._linear_pointwise(x, weight, None, "none", [], "")
    assert (y.double() - ref).abs().max().item() <= 2**-7 * 2 * ref.abs().max().item()


def _resident_kib() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * 4


@needs_own_packing
def test_packing_many_weights_leaks_nothing():
    w = torch.randn(64, 64).to(torch.bfloat16)
    if _reorder(w) is None:  # this CPU packs no bf16: float32 takes the same path
        w = w.float()
    onednn_weight.pack(w, 16)  # learns
    for _ in range(500):  # warm the allocators
        onednn_weight.pack(w, 16)
    before = _resident_kib()
    for _ in range(10_000):
        packed = onednn_weight.pack(w, 16)
        assert packed.owner is not None
        del packed
    assert _resident_kib() - before < 4096  # a kept handle costs about 1.6 KiB a weight: 16 MiB here


def test_start_over_without_own_packing_reorders():
    onednn_weight.start_over(own_packing=False)
    w = torch.randn(128, 64).to(torch.bfloat16)
    if _reorder(w) is None:
        pytest.skip("oneDNN does not pack bf16 on this CPU")
    assert onednn_weight.pack(w, 16).owner is None
    assert onednn_weight._learned == {}


@needs_own_packing
def test_a_layout_outside_the_candidates_falls_back_to_the_reorder(monkeypatch):
    monkeypatch.setattr(onednn_weight, "_N_BLOCKS", (8,))  # oneDNN's AVX-512 formats block rows by 64 or 32
    gen = torch.Generator().manual_seed(stable_seed("onednn_weight", "fallback"))
    w = torch.randn(256, 128, generator=gen).to(torch.bfloat16)
    reference = _reorder(w)
    if reference is None:
        pytest.skip("oneDNN does not pack bf16 on this CPU")
    for _ in range(2):
        packed = onednn_weight.pack(w, 16)
        assert packed.owner is None
        assert np.array_equal(onednn_weight._packed_bytes(packed.tensor), onednn_weight._packed_bytes(reference))
    assert onednn_weight._learned[(256, 128, torch.bfloat16, 16)] is None


@needs_own_packing
def test_a_failed_check_or_a_failed_tensor_falls_back_to_the_reorder(monkeypatch):
    gen = torch.Generator().manual_seed(stable_seed("onednn_weight", "failures"))
    w = torch.randn(192, 96, generator=gen).to(torch.bfloat16)
    if _reorder(w) is None:
        pytest.skip("oneDNN does not pack bf16 on this CPU")
    with monkeypatch.context() as m:
        m.setattr(onednn_weight, "_same_bytes", lambda a, b: False)
        assert onednn_weight.pack(w, 16).owner is None
    assert onednn_weight._learned[(192, 96, torch.bfloat16, 16)] is None
    assert onednn_weight.pack(w, 16).owner is None

    onednn_weight.start_over()
    assert onednn_weight.pack(w, 16).owner is not None  # learns

    monkeypatch.setattr(onednn_weight._blob_factory(), "create", lambda *args: 1)
    packed = onednn_weight.pack(w.clone(), 16)
    assert packed.owner is None and torch.equal(packed.tensor.to_dense(), w)
    assert onednn_weight._learned[(192, 96, torch.bfloat16, 16)] is None


@needs_own_packing
def test_weights_with_too_few_values_teach_nothing_and_a_later_weight_teaches():
    w = torch.ones(256, 128, dtype=torch.bfloat16)
    if _reorder(w) is None:
        pytest.skip("oneDNN does not pack bf16 on this CPU")
    assert onednn_weight.pack(w, 16).owner is None
    assert (256, 128, torch.bfloat16, 16) not in onednn_weight._learned
    gen = torch.Generator().manual_seed(stable_seed("onednn_weight", "later"))
    assert onednn_weight.pack(torch.randn(256, 128, generator=gen).to(torch.bfloat16), 16).owner is not None
    packed = onednn_weight.pack(w, 16)
    assert packed.owner is not None and torch.equal(packed.tensor.to_dense(), w)


@needs_own_packing
def test_any_failure_of_our_packing_falls_back_to_the_reorder(monkeypatch):
    def fail(*args):
        raise ValueError("no")

    monkeypatch.setattr(onednn_weight, "rust_cpuattn", types.SimpleNamespace(pack_blocked=fail))
    gen = torch.Generator().manual_seed(stable_seed("onednn_weight", "raises"))
    w = torch.randn(128, 64, generator=gen).to(torch.bfloat16)
    if _reorder(w) is None:
        pytest.skip("oneDNN does not pack bf16 on this CPU")
    for _ in range(2):
        packed = onednn_weight.pack(w, 16)
        assert packed.owner is None and torch.equal(packed.tensor.to_dense(), w)
    assert onednn_weight._learned[(128, 64, torch.bfloat16, 16)] is None


@pytest.mark.skipif(rust_cpuattn is None, reason="needs the extension")
def test_pack_blocked_rejects_bad_arguments():
    src = torch.zeros(8, 8, dtype=torch.bfloat16)
    good = torch.empty(64 * 32, dtype=torch.bfloat16)
    rust_cpuattn.pack_blocked(src, good, 64, 32, 2)
    assert torch.all(good.float() == 0)
    with pytest.raises(ValueError, match="k_pair"):
        rust_cpuattn.pack_blocked(src, good, 64, 32, 3)
    with pytest.raises(ValueError, match="dst has"):
        rust_cpuattn.pack_blocked(src, good[1:], 64, 32, 2)
    with pytest.raises(ValueError):
        rust_cpuattn.pack_blocked(src, torch.empty(64 * 32, dtype=torch.float32), 64, 32, 2)
    with pytest.raises(ValueError, match="overlaps"):
        rust_cpuattn.pack_blocked(src, src.view(-1), 8, 8, 1)
