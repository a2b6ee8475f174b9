"""A small GGUF reader of the tests' own: independent of quantkit's writer and reader, and
fast (gguf-py's GGUFReader takes ~10 s on a 128k-token vocabulary, element by element)."""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import gguf
import numpy as np

Q = gguf.GGMLQuantizationType
_SCALARS = {0: "<u1", 1: "<i1", 2: "<u2", 3: "<i2", 4: "<u4", 5: "<i4", 6: "<f4", 7: "<u1",
            10: "<u8", 11: "<i8", 12: "<f8"}  # fmt: skip
_STRING, _ARRAY = 8, 9


@dataclass(frozen=True)
class GGUFTensor:
    name: str
    tensor_type: gguf.GGMLQuantizationType
    shape: tuple[int, ...]  # HF order (rows first)
    data: np.ndarray  # as GGUFReader gives it: typed for F32/F16, bytes per row otherwise


@dataclass(frozen=True)
class GGUFFile:
    metadata: dict[str, Any]  # strings as str, string arrays as lists, others as numpy
    tensors: dict[str, GGUFTensor]


def read_gguf(path: Path) -> GGUFFile:
    blob = memoryview(path.read_bytes())
    pos = 0

    def take(fmt: str, count: int = 1) -> np.ndarray:
        nonlocal pos
        dtype = np.dtype(fmt)
        out = np.frombuffer(blob, dtype=dtype, count=count, offset=pos)
        pos += dtype.itemsize * count
        return out

    def string() -> str:
        nonlocal pos
        n = int(take("<u8")[0])
        pos += n
        return bytes(blob[pos - n : pos]).decode("utf-8")

    def value(vtype: int) -> Any:
        if vtype == _STRING:
            return string()
        if vtype == _ARRAY:
            etype, count = int(take("<u4")[0]), int(take("<u8")[0])
            if etype == _STRING:
                return [string() for _ in range(count)]
            return take(_SCALARS[etype], count).copy()
        scalar = take(_SCALARS[vtype])[0]
        return bool(scalar) if vtype == 7 else scalar.item()

    assert bytes(blob[:4]) == b"GGUF"
    pos = 4
    _version, n_tensors, n_kv = int(take("<u4")[0]), int(take("<u8")[0]), int(take("<u8")[0])
    metadata = {}
    for _ in range(n_kv):
        key = string()
        metadata[key] = value(int(take("<u4")[0]))
    infos = []
    for _ in range(n_tensors):
        name = string()
        dims = take("<u8", int(take("<u4")[0])).tolist()
        qtype = gguf.GGMLQuantizationType(int(take("<u4")[0]))
        infos.append((name, tuple(reversed(dims)), qtype, int(take("<u8")[0])))
    align = int(metadata.get("general.alignment", 32))
    data_start = pos + (-pos % align)
    tensors = {}
    for name, shape, qtype, offset in infos:
        block, type_size = gguf.GGML_QUANT_SIZES[qtype]
        nbytes = math.prod(shape) // block * type_size
        raw = np.frombuffer(blob, np.uint8, nbytes, data_start + offset)
        rows = math.prod(shape[:-1]) if len(shape) > 1 else 1
        if qtype in (Q.F32, Q.F16):
            data = raw.view(np.float32 if qtype == Q.F32 else np.float16).reshape(shape)
        else:
            data = raw.reshape(rows, -1) if len(shape) > 1 else raw
        tensors[name] = GGUFTensor(name, qtype, shape, data)
    return GGUFFile(metadata, tensors)


def read_gguf_tensors(path: Path) -> dict[str, GGUFTensor]:
    return read_gguf(path).tensors
