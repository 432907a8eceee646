"""The memory-mapped GGUF reader (model/gguf_reader.py) on files written by the `gguf` package."""

from __future__ import annotations

import numpy as np
import pytest
from gguf import GGMLQuantizationType as T, GGUFReader, GGUFValueType, GGUFWriter

from neo_async.bench.synthetic_gguf import random_blocks
from neo_async.model.gguf_reader import GGUFFile

METADATA = [
    ("u8", 200, GGUFValueType.UINT8),
    ("i8", -100, GGUFValueType.INT8),
    ("u16", 60000, GGUFValueType.UINT16),
    ("i16", -30000, GGUFValueType.INT16),
    ("u32", 4_000_000_000, GGUFValueType.UINT32),
    ("i32", -2_000_000_000, GGUFValueType.INT32),
    ("f32", 0.5, GGUFValueType.FLOAT32),
    ("flag", True, GGUFValueType.BOOL),
    ("name", "héllo 🙂", GGUFValueType.STRING),
    ("u64", 2**63 + 5, GGUFValueType.UINT64),
    ("i64", -(2**40), GGUFValueType.INT64),
    ("f64", 1e-300, GGUFValueType.FLOAT64),
]
ARRAYS = {
    "tokens": ["a", "Ġb", "<|im_end|>", "", "数字"],
    "ids": [3, 1, 4, 1, 5],
    "scores": [0.25, -1.5],
    "flags": [True, False, True],
}


def _write(path, alignment: int | None = None) -> dict[str, np.ndarray]:
    writer = GGUFWriter(path, "llama")
    if alignment is not None:
        writer.add_uint32("general.alignment", alignment)
        writer.data_alignment = alignment
    for key, value, vtype in METADATA:
        writer.add_key_value(key, value, vtype)
    for key, value in ARRAYS.items():
        writer.add_array(key, value)
    rng = np.random.default_rng(0)
    tensors = {
        "q41": random_blocks(T.Q4_1, 12, rng).reshape(3, 80),  # 3 rows of 128
        "q8": random_blocks(T.Q8_0, 2, rng).reshape(1, 68),
        "norm": rng.standard_normal(7).astype(np.float32),
        "half": rng.standard_normal((2, 3, 4)).astype(np.float16),
    }
    raw_types = {"q41": T.Q4_1, "q8": T.Q8_0}
    for name, data in tensors.items():
        writer.add_tensor(name, data, raw_dtype=raw_types.get(name))
    writer.write_header_to_file(path)
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return tensors


@pytest.mark.parametrize("alignment", [None, 64])
def test_metadata_and_tensors_read_back(tmp_path, alignment):
    path = tmp_path / "m.gguf"
    written = _write(path, alignment)
    with GGUFFile(path) as f:
        meta = f.metadata
        assert meta["general.architecture"] == "llama"
        for key, value, _ in METADATA:
            assert meta[key] == pytest.approx(value) if isinstance(value, float) else meta[key] == value, key
            assert type(meta[key]) is type(value), key
        for key, value in ARRAYS.items():
            assert meta[key] == value, key
        assert list(f.tensors) == list(written)
        assert f.tensors["q41"].shape == (3, 128) and f.tensors["q41"].ggml_type == T.Q4_1
        assert f.tensors["norm"].shape == (7,) and f.tensors["norm"].ggml_type == T.F32
        assert f.tensors["half"].shape == (2, 3, 4) and f.tensors["half"].ggml_type == T.F16
        for name, data in written.items():
            assert np.array_equal(f.raw(f.tensors[name]), data.view(np.uint8).reshape(-1)), name
    reference = GGUFReader(str(path))  # the package agrees on offsets and shapes
    for tensor in reference.tensors:
        assert tensor.data_offset == f.tensors[tensor.name].offset
        assert tuple(int(x) for x in reversed(tensor.shape)) == f.tensors[tensor.name].shape


def test_raw_views_are_writable_copy_on_write(tmp_path):
    """torch warns on read-only buffers; the private map gives writable views and the file stays."""
    path = tmp_path / "m.gguf"
    written = _write(path)
    with GGUFFile(path) as f:
        view = f.raw(f.tensors["norm"])
        assert view.flags.writeable
        view[:] = 0
        del view
    with GGUFFile(path) as f:
        assert np.array_equal(f.raw(f.tensors["norm"]), written["norm"].view(np.uint8))


def test_not_a_gguf_and_truncated_files_are_rejected(tmp_path):
    bad = tmp_path / "bad.gguf"
    bad.write_bytes(b"GGML" + bytes(60))
    with pytest.raises(ValueError, match="not a GGUF file"):
        GGUFFile(bad)
    path = tmp_path / "m.gguf"
    _write(path)
    truncated = tmp_path / "t.gguf"
    truncated.write_bytes(path.read_bytes()[:-40])
    with pytest.raises(ValueError, match="past the end"):
        GGUFFile(truncated)
    cut_in_metadata = tmp_path / "c.gguf"
    cut_in_metadata.write_bytes(path.read_bytes()[:100])
    with pytest.raises(ValueError, match="not a well-formed GGUF file"):
        GGUFFile(cut_in_metadata)
