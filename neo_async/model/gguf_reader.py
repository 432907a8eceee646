"""The GGUF container, read straight from a memory map: metadata, the tensor table and each
tensor's raw bytes. Nothing is copied or decoded until asked for.

Layout (little-endian): magic `GGUF`, version (2 or 3), tensor count and metadata count
(u64), the metadata (key, value type, value), the tensor table (name, dims in `ne` order,
ggml type, offset), padding to `general.alignment`, then the tensor data.
"""

from __future__ import annotations

import mmap
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from gguf import GGML_QUANT_SIZES, GGMLQuantizationType, GGUFValueType

_MAGIC = b"GGUF"
_SUPPORTED_VERSIONS = (2, 3)
_DEFAULT_ALIGNMENT = 32
_SCALARS = {
    GGUFValueType.UINT8: "<B",
    GGUFValueType.INT8: "<b",
    GGUFValueType.UINT16: "<H",
    GGUFValueType.INT16: "<h",
    GGUFValueType.UINT32: "<I",
    GGUFValueType.INT32: "<i",
    GGUFValueType.FLOAT32: "<f",
    GGUFValueType.BOOL: "<?",
    GGUFValueType.UINT64: "<Q",
    GGUFValueType.INT64: "<q",
    GGUFValueType.FLOAT64: "<d",
}


@dataclass(frozen=True)
class GGUFTensorInfo:
    name: str
    shape: tuple[int, ...]  # numpy order: the reverse of GGUF's `ne`; shape[-1] is the row
    ggml_type: GGMLQuantizationType
    offset: int  # from the start of the file
    num_bytes: int

    @property
    def num_elements(self) -> int:
        return int(np.prod(self.shape, dtype=np.int64))

    @property
    def row_bytes(self) -> int:
        block_size, type_size = GGML_QUANT_SIZES[self.ggml_type]
        return self.shape[-1] // block_size * type_size


class GGUFFile:
    """An open GGUF file. `raw()` views point into the map: use them before `close()`.

    The map is private copy-on-write, so views are writable numpy/torch buffers (torch warns on
    read-only ones) while the file itself is never written.
    """

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        with open(self.path, "rb") as f:
            self._map = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_COPY)
        try:
            self._parse()
        except (struct.error, IndexError, UnicodeDecodeError) as exc:
            self.close()
            raise ValueError(f"{self.path} is not a well-formed GGUF file: {exc}") from exc
        except ValueError:
            self.close()
            raise

    def __enter__(self) -> "GGUFFile":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        try:
            self._map.close()
        except BufferError:  # a view is still alive (say, in an exception's traceback): the map goes with it
            pass

    def raw(self, info: GGUFTensorInfo) -> np.ndarray:
        """uint8 [num_bytes]: the tensor's bytes as stored (rows of blocks, row-major)."""
        return np.frombuffer(self._map, dtype=np.uint8, count=info.num_bytes, offset=info.offset)

    def advise_sequential(self) -> None:
        """Ask the kernel for large read-ahead: tensors are read once, in file order."""
        if hasattr(self._map, "madvise") and hasattr(mmap, "MADV_SEQUENTIAL"):
            self._map.madvise(mmap.MADV_SEQUENTIAL)

    # ---- parsing ---------------------------------------------------------------------------

    def _parse(self) -> None:
        if self._map[:4] != _MAGIC:
            raise ValueError(f"{self.path} is not a GGUF file (bad magic)")
        version, num_tensors, num_fields = struct.unpack_from("<IQQ", self._map, 4)
        if version not in _SUPPORTED_VERSIONS:
            hint = " (a big-endian file?)" if version & 0xFFFF == 0 else ""
            raise ValueError(f"{self.path}: GGUF version {version} is not supported{hint}")
        self.version = version
        self._pos = 24
        self.metadata: dict[str, Any] = {}
        for _ in range(num_fields):
            key = self._string()
            (value_type,) = self._unpack("<I")
            self.metadata[key] = self._value(value_type)
        entries = [self._tensor_entry() for _ in range(num_tensors)]
        alignment = int(self.metadata.get("general.alignment", _DEFAULT_ALIGNMENT))
        if alignment <= 0 or alignment & (alignment - 1):
            raise ValueError(f"{self.path}: alignment {alignment} is not a power of two")
        data_start = -(-self._pos // alignment) * alignment
        self.tensors: dict[str, GGUFTensorInfo] = {}
        for name, shape, ggml_type, offset in entries:
            info = _tensor_info(name, shape, ggml_type, data_start + offset)
            if info.offset + info.num_bytes > len(self._map):
                raise ValueError(f"{self.path}: tensor {name!r} runs past the end of the file (truncated?)")
            self.tensors[name] = info
        del self._pos

    def _unpack(self, fmt: str) -> tuple[Any, ...]:
        values = struct.unpack_from(fmt, self._map, self._pos)
        self._pos += struct.calcsize(fmt)
        return values

    def _string(self) -> str:
        (length,) = struct.unpack_from("<Q", self._map, self._pos)
        start = self._pos + 8
        self._pos = start + length
        return self._map[start : self._pos].decode("utf-8", errors="replace")

    def _value(self, value_type: int) -> Any:
        if value_type == GGUFValueType.STRING:
            return self._string()
        if value_type == GGUFValueType.ARRAY:
            item_type, count = self._unpack("<IQ")
            return self._array(item_type, count)
        fmt = _SCALARS.get(GGUFValueType(value_type))
        return self._unpack(fmt)[0]

    def _array(self, item_type: int, count: int) -> list[Any]:
        fmt = _SCALARS.get(GGUFValueType(item_type))
        if fmt is not None:  # numbers: one vectorised read
            dtype = np.dtype(fmt)
            values = np.frombuffer(self._map, dtype=dtype, count=count, offset=self._pos)
            self._pos += count * dtype.itemsize
            return values.tolist()
        if item_type == GGUFValueType.STRING:
            return self._strings(count)
        return [self._value(item_type) for _ in range(count)]

    def _strings(self, count: int) -> list[str]:
        # NOTE: vocabularies hold ~10^5 strings; a tight loop with local names keeps this ~50 ms.
        data, unpack, pos = self._map, struct.unpack_from, self._pos
        out = []
        append = out.append
        for _ in range(count):
            (length,) = unpack("<Q", data, pos)
            pos += 8
            append(data[pos : pos + length].decode("utf-8", errors="replace"))
            pos += length
        self._pos = pos
        return out

    def _tensor_entry(self) -> tuple[str, tuple[int, ...], int, int]:
        name = self._string()
        (num_dims,) = self._unpack("<I")
        ne = self._unpack(f"<{num_dims}Q")
        ggml_type, offset = self._unpack("<IQ")
        return name, tuple(reversed(ne)), ggml_type, offset


def _tensor_info(name: str, shape: tuple[int, ...], raw_type: int, offset: int) -> GGUFTensorInfo:
    try:
        ggml_type = GGMLQuantizationType(raw_type)
    except ValueError:
        raise ValueError(f"tensor {name!r} has unknown ggml type {raw_type}") from None
    block_size, type_size = GGML_QUANT_SIZES[ggml_type]
    if not shape or shape[-1] % block_size:
        raise ValueError(f"tensor {name!r}: row length {shape[-1:]} is not a multiple of {ggml_type.name}'s block {block_size}")
    num_rows = int(np.prod(shape[:-1], dtype=np.int64))
    num_bytes = num_rows * (shape[-1] // block_size) * type_size
    return GGUFTensorInfo(name, shape, ggml_type, offset, num_bytes)
