"""CPU weights in oneDNN's packed layout, written by our own kernel instead of oneDNN's reorder.

oneDNN multiplies by a weight in a blocked layout of its own choosing (`_reorder_linear_weight`
returns it). Its reorder is slower than a copy, and a load reorders every projection. So, per
(shape, dtype, batch hint), the layout is learned once from oneDNN itself: the first weight
is reordered, the candidate blocked layouts of `rust_cpuattn.pack_blocked` are tried on
sampled elements, and that weight packed our way in the fit is compared with the reorder byte
for byte. Every weight of that shape, that first one included, is then packed by `pack_blocked`
into memory we own, and oneDNN is handed a tensor over that memory with the reorder's memory descriptor (torch's AOT-inductor C shim,
`aoti_torch_create_tensor_from_blob_v2`).

Wherever a step is missing or fails (no extension, no shim symbol) or no candidate is the
layout (an ISA whose format is not blocked this way), weights go through the reorder, as they
would without this module. A packed tensor of ours reads `owner`'s memory and holds it (its
attribute `_packed_memory`).
"""

from __future__ import annotations

import ctypes
import itertools
import os
import threading
from dataclasses import dataclass
from functools import lru_cache

import numpy as np
import structlog
import torch

from neo_async.native import rust_cpuattn

log = structlog.get_logger("neo_async.model.onednn_weight")

# Candidate layouts: (n_block, k_pair, k_block / k_pair, k_blocks_inner). oneDNN's bf16 and
# f32 formats on AVX-512 are (64, 2, 16, True) and (64, 1, 16, True).
_N_BLOCKS = (64, 32, 16, 48, 128, 8)  # the usual ones first
_K_PAIRS = (1, 2, 4)
_K_GROUPS = (16, 32, 64, 8, 4)
_NUM_SAMPLES = 256

_enabled = True
_learned: dict[tuple[int, int, torch.dtype, int], "_Learned | None"] = {}  # by (N, K, dtype, batch hint)
_lock = threading.Lock()


def start_over(own_packing: bool = True) -> None:
    """Forgets the learned layouts; with own_packing False every weight goes through oneDNN's
    reorder (`bench load` times both, each from nothing learned, as a new process would)."""
    global _enabled
    with _lock:
        _enabled = own_packing
        _learned.clear()


@dataclass(frozen=True)
class _Layout:
    n_block: int
    k_block: int
    k_pair: int
    k_blocks_inner: bool

    def padded_len(self, n: int, k: int) -> int:
        return -(-n // self.n_block) * self.n_block * (-(-k // self.k_block) * self.k_block)

    def offsets(self, n: int, k: int, rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
        """Element offsets of (rows[i], cols[i]) (rust_cpuattn::pack's formula)."""
        row_blocks, col_blocks = -(-n // self.n_block), -(-k // self.k_block)
        rb, cb = rows // self.n_block, cols // self.k_block
        block = rb * col_blocks + cb if self.k_blocks_inner else cb * row_blocks + rb
        r, c = rows % self.n_block, cols % self.k_block
        return block * self.n_block * self.k_block + ((c // self.k_pair) * self.n_block + r) * self.k_pair + c % self.k_pair


@dataclass(frozen=True)
class _Learned:
    layout: _Layout
    descriptor: torch.Tensor  # oneDNN's serialized memory descriptor (uint8)


@dataclass
class PackedWeight:
    tensor: torch.Tensor  # layout torch._mkldnn, for torch.ops.mkldnn._linear_pointwise
    owner: torch.Tensor | None  # the memory `tensor` reads, when this module wrote it


def pack(weight: torch.Tensor, batch_hint: int) -> PackedWeight:
    """weight [N, K] (contiguous, CPU, bf16 or float32) in oneDNN's packed layout; raises
    RuntimeError where oneDNN refuses to pack it (as its reorder does)."""
    learned = None
    key = (weight.shape[0], weight.shape[1], weight.dtype, batch_hint)
    if _enabled and _blob_factory() is not None:
        with _lock:
            if key not in _learned:
                reordered = torch.ops.mkldnn._reorder_linear_weight(weight, batch_hint)
                try:
                    packed, learned = _learn(weight, reordered)
                except Exception as e:  # noqa: BLE001 - any failure of our path: oneDNN's own packing stands
                    log.warning("onednn_own_packing_failed", shape=list(key[:2]), error=repr(e))
                    packed, learned = PackedWeight(reordered, None), None
                if learned is not _UNDECIDED:
                    _learned[key] = learned
                return packed
            learned = _learned[key]
    if learned is not None:
        try:
            return _pack_learned(weight, learned)
        except Exception as e:  # noqa: BLE001 - as above
            log.warning("onednn_own_packing_failed", shape=list(key[:2]), error=repr(e))
            with _lock:
                _learned[key] = None
    return PackedWeight(torch.ops.mkldnn._reorder_linear_weight(weight, batch_hint), None)


def _pack_learned(weight: torch.Tensor, learned: _Learned) -> PackedWeight:
    n, k = weight.shape
    layout = learned.layout
    owner = torch.empty(layout.padded_len(n, k), dtype=weight.dtype)
    rust_cpuattn.pack_blocked(weight, owner, layout.n_block, layout.k_block, layout.k_pair, layout.k_blocks_inner)
    tensor = _blob_factory()(owner, (n, k), learned.descriptor)
    tensor._packed_memory = owner  # whoever holds the tensor holds the memory it reads
    return PackedWeight(tensor, owner)


def _packed_bytes(packed: torch.Tensor) -> np.ndarray:
    """A read-only view of a packed tensor's memory (alive while `packed` is)."""
    num_bytes = torch.ops.mkldnn._nbytes(packed)
    buffer = (ctypes.c_uint8 * num_bytes).from_address(torch.ops.mkldnn.data_ptr(packed))
    view = np.ctypeslib.as_array(buffer)
    view.flags.writeable = False
    return view


def _same_bytes(a: np.ndarray, b: np.ndarray) -> bool:
    if a.size != b.size:
        return False
    wide = np.int64 if a.size % 8 == 0 else np.uint8  # 8 bytes a compare: the check is on a load's path
    return np.array_equal(a.view(wide), b.view(wide))


_UNDECIDED = object()  # this weight cannot tell the candidates apart: learn from the next one


def _learn(weight: torch.Tensor, reordered: torch.Tensor) -> tuple[PackedWeight, object]:
    """(the weight packed; the learned layout, None when no candidate is oneDNN's, or
    _UNDECIDED).

    The candidates that put every sampled element where the reorder did must agree everywhere
    a second sample looks (else the weight has too few distinct values to tell them apart);
    the fit then packs the whole weight the way every later one will be packed, and that is
    compared with the reorder byte for byte."""
    n, k = weight.shape
    bits = weight.view(torch.int16 if weight.element_size() == 2 else torch.int32).numpy()
    theirs = _packed_bytes(reordered)
    elements = theirs.view(bits.dtype)
    rng = np.random.default_rng(0)
    rows, cols = rng.integers(0, n, _NUM_SAMPLES), rng.integers(0, k, _NUM_SAMPLES)
    expected = bits[rows, cols]
    fits = [
        layout
        for n_block, k_pair, k_groups, inner in itertools.product(_N_BLOCKS, _K_PAIRS, _K_GROUPS, (True, False))
        for layout in [_Layout(n_block, k_pair * k_groups, k_pair, inner)]
        if layout.padded_len(n, k) == elements.size and np.array_equal(elements[layout.offsets(n, k, rows, cols)], expected)
    ]
    fields = {"shape": [n, k], "dtype": str(weight.dtype)}
    if not fits:
        log.debug("onednn_layout_not_learned", **fields)
        return PackedWeight(reordered, None), None
    check_rows, check_cols = rng.integers(0, n, 16 * _NUM_SAMPLES), rng.integers(0, k, 16 * _NUM_SAMPLES)
    places = {tuple(layout.offsets(n, k, check_rows, check_cols)) for layout in fits}
    if len(places) > 1 or len(np.unique(expected)) < _NUM_SAMPLES // 8:
        return PackedWeight(reordered, None), _UNDECIDED
    learned = _Learned(fits[0], torch.ops.mkldnn._get_mkldnn_serialized_md(reordered).clone())
    ours = _pack_learned(weight, learned)
    if not _same_bytes(_packed_bytes(ours.tensor), theirs):
        log.debug("onednn_layout_not_learned", **fields, reason="bytes differ")
        return PackedWeight(reordered, None), None
    log.debug("onednn_layout_learned", **fields, layout=str(learned.layout))
    return ours, learned


class _BlobFactory:
    """Tensors of layout torch._mkldnn over memory we own, through torch's AOT-inductor C shim."""

    def __init__(self) -> None:
        lib = ctypes.CDLL(os.path.join(os.path.dirname(torch.__file__), "lib", "libtorch_cpu.so"))
        codes = {}
        names = ("aoti_torch_dtype_bfloat16", "aoti_torch_dtype_float32", "aoti_torch_device_type_cpu", "aoti_torch_layout__mkldnn")
        for name in names:
            fn = getattr(lib, name)
            fn.restype, fn.argtypes = ctypes.c_int32, []
            codes[name] = fn()
        self.dtypes = {torch.bfloat16: codes["aoti_torch_dtype_bfloat16"], torch.float32: codes["aoti_torch_dtype_float32"]}
        self.cpu, self.mkldnn = codes["aoti_torch_device_type_cpu"], codes["aoti_torch_layout__mkldnn"]
        create = lib.aoti_torch_create_tensor_from_blob_v2
        create.restype = ctypes.c_int32
        i64p = ctypes.POINTER(ctypes.c_int64)
        create.argtypes = [ctypes.c_void_p, ctypes.c_int64, i64p, i64p, ctypes.c_int64, ctypes.c_int32, ctypes.c_int32,
                           ctypes.c_int32, ctypes.POINTER(ctypes.c_void_p), ctypes.c_int32, ctypes.c_void_p, ctypes.c_int64]  # fmt: skip
        self.create = create
        prototype = ctypes.PYFUNCTYPE(ctypes.py_object, ctypes.c_void_p, ctypes.c_char_p, ctypes.c_void_p)
        self.capsule = prototype(("PyCapsule_New", ctypes.pythonapi))
        # Takes the handles: the tensors move out and the handles are freed (the one-handle form
        # leaves its handle allocated).
        self.steal = torch._C._aoti.alloc_tensors_by_stealing_from_void_ptrs
        for op in ("_nbytes", "data_ptr", "_get_mkldnn_serialized_md", "_reorder_linear_weight"):
            getattr(torch.ops.mkldnn, op)  # AttributeError where this torch lacks one

    def __call__(self, owner: torch.Tensor, shape: tuple[int, int], descriptor: torch.Tensor) -> torch.Tensor:
        sizes = (ctypes.c_int64 * 2)(*shape)
        strides = (ctypes.c_int64 * 2)(shape[1], 1)
        handle = ctypes.c_void_p()
        status = self.create(owner.data_ptr(), 2, sizes, strides, 0, self.dtypes[owner.dtype], self.cpu, 0,
                             ctypes.byref(handle), self.mkldnn, descriptor.data_ptr(), descriptor.numel())  # fmt: skip
        if status != 0 or not handle.value:
            raise RuntimeError(f"aoti_torch_create_tensor_from_blob_v2 failed ({status})")
        return self.steal([self.capsule(handle.value, None, None)])[0]


@lru_cache(maxsize=1)
def _blob_factory() -> _BlobFactory | None:
    if rust_cpuattn is None or not hasattr(rust_cpuattn, "pack_blocked"):
        return None
    try:
        return _BlobFactory()
    except (OSError, AttributeError, RuntimeError) as e:  # a torch build without the shim or its symbols
        log.debug("onednn_blob_unavailable", error=str(e))
        return None
