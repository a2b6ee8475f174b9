"""A small GGUF reader of the tests' own: independent of quantkit's writer and reader, and
fast (gguf-py's GGUFReader takes ~10 s on a 128k-token vocabulary: it makes a numpy view
per array element; this one reads a string with one struct call).

It keeps what a test needs to compare two files as GGUFReader would (every field's value
types, the header's counts, tensors in file order with their raw bytes) and where each
value lies in the file, for in-place edits of copies (tests/support/gguf_corrupt.py).
tests/support/test_gguf_support.py holds it to GGUFReader on small files.
"""

from __future__ import annotations

import math
import struct
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import gguf
import numpy as np

Q = gguf.GGMLQuantizationType
V = gguf.GGUFValueType
SCALAR_DTYPES = {V.UINT8: "<u1", V.INT8: "<i1", V.UINT16: "<u2", V.INT16: "<i2",
                 V.UINT32: "<u4", V.INT32: "<i4", V.FLOAT32: "<f4", V.BOOL: "?",
                 V.UINT64: "<u8", V.INT64: "<i8", V.FLOAT64: "<f8"}  # fmt: skip
# Tensor types GGUFReader gives as typed elements; every other type is bytes per row.
_TYPED_TENSORS = {Q.F32: np.float32, Q.F16: np.float16, Q.F64: np.float64, Q.I8: np.int8,
                  Q.I16: np.int16, Q.I32: np.int32, Q.I64: np.int64}  # fmt: skip
# The header's counts, which GGUFReader lists as fields ahead of the metadata.
HEADER_FIELDS = ("GGUF.version", "GGUF.tensor_count", "GGUF.kv_count")
_SUPPORTED_VERSIONS = (2, 3)


@dataclass(frozen=True)
class GGUFField:
    """One metadata value and where it lies in the file.

    types: as GGUFReader's ReaderField.types: (type,) or (ARRAY, element type).
    value: str, a Python scalar, a list of str, or a numpy array of numeric elements.
    offset: the value's first byte: a scalar's, a string's text (after its length), or
    an array's first element (after its element type and count).
    element_offsets: for string arrays, where each element's text begins.
    span: the whole entry's bytes (key, type and value; the value alone for the header's
    counts), as GGUFReader's parts joined: what a byte-for-byte copy must reproduce.
    """

    name: str
    types: tuple[gguf.GGUFValueType, ...]
    value: Any
    offset: int
    element_offsets: tuple[int, ...] = ()
    span: tuple[int, int] = (0, 0)

    def contents(self) -> Any:
        """The value as GGUFReader's ReaderField.contents() gives it (arrays as lists)."""
        return self.value.tolist() if isinstance(self.value, np.ndarray) else self.value

    def element_dtype(self) -> np.dtype:
        return np.dtype(SCALAR_DTYPES[self.types[-1]])


@dataclass(frozen=True)
class GGUFTensor:
    name: str
    tensor_type: gguf.GGMLQuantizationType
    shape: tuple[int, ...]  # HF order (rows first); the file stores it reversed
    data: np.ndarray  # as GGUFReader gives it: typed for F32/F16/F64/I*, bytes per row else

    @property
    def n_bytes(self) -> int:
        return int(self.data.nbytes)


@dataclass(frozen=True)
class GGUFFile:
    metadata: dict[str, Any]  # strings as str, string arrays as lists, others as numpy
    tensors: dict[str, GGUFTensor]  # in the file's order
    fields: dict[str, GGUFField]  # the header's counts, then every metadata key in order


class _Cursor:
    """Reads little-endian GGUF values from a buffer, front to back."""

    def __init__(self, blob: bytes | bytearray) -> None:
        self.blob = blob
        self.pos = 0

    def scalar(self, fmt: str) -> Any:
        (value,) = struct.unpack_from(fmt, self.blob, self.pos)
        self.pos += struct.calcsize(fmt)
        return value

    def string(self) -> str:
        n = self.scalar("<Q")
        self.pos += n
        return bytes(self.blob[self.pos - n : self.pos]).decode("utf-8")

    def array(self, dtype: str, count: int) -> np.ndarray:
        out = np.frombuffer(self.blob, dtype=dtype, count=count, offset=self.pos).copy()
        self.pos += out.nbytes
        return out


def read_gguf(path: Path) -> GGUFFile:
    return parse_gguf(Path(path).read_bytes())


def read_gguf_tensors(path: Path) -> dict[str, GGUFTensor]:
    return read_gguf(path).tensors


def parse_gguf(blob: bytes | bytearray) -> GGUFFile:
    """Raises where GGUFReader does: bad magic or version, a duplicate key or tensor name,
    a file too short for its tensors; and on what it cannot read (big-endian files,
    arrays of arrays) rather than read them wrongly."""
    cur = _Cursor(blob)
    if bytes(blob[:4]) != b"GGUF":
        raise ValueError("GGUF magic invalid")
    cur.pos = 4
    version = cur.scalar("<I")
    if version not in _SUPPORTED_VERSIONS:
        raise ValueError(f"GGUF version {version} (or a big-endian file) is not supported")
    fields = {"GGUF.version": GGUFField("GGUF.version", (V.UINT32,), version, 4, span=(4, 8))}
    n_tensors, n_kv = cur.scalar("<Q"), cur.scalar("<Q")
    for name, value, offset in (("GGUF.tensor_count", n_tensors, 8), ("GGUF.kv_count", n_kv, 16)):
        fields[name] = GGUFField(name, (V.UINT64,), value, offset, span=(offset, offset + 8))
    for _ in range(n_kv):
        start = cur.pos
        field = replace(_read_field(cur), span=(start, cur.pos))
        if field.name in fields:
            raise KeyError(f"Duplicate {field.name}")
        fields[field.name] = field
    infos = [_read_tensor_info(cur) for _ in range(n_tensors)]
    data_start = cur.pos + (-cur.pos % _alignment(fields))
    tensors: dict[str, GGUFTensor] = {}
    for name, shape, qtype, offset in infos:
        if name in tensors:
            raise ValueError(f"Found duplicated tensor with name {name}")
        tensors[name] = _tensor(blob, name, shape, qtype, data_start + offset)
    metadata = {k: f.value for k, f in fields.items() if k not in HEADER_FIELDS}
    return GGUFFile(metadata, tensors, fields)


def _read_field(cur: _Cursor) -> GGUFField:
    name = cur.string()
    vtype = V(cur.scalar("<I"))
    if vtype == V.STRING:
        n = cur.scalar("<Q")
        offset = cur.pos
        cur.pos += n
        return GGUFField(name, (vtype,), bytes(cur.blob[offset : cur.pos]).decode(), offset)
    if vtype != V.ARRAY:
        offset = cur.pos
        return GGUFField(name, (vtype,), cur.array(SCALAR_DTYPES[vtype], 1)[0].item(), offset)
    etype, count = V(cur.scalar("<I")), cur.scalar("<Q")
    offset = cur.pos
    if etype == V.STRING:
        starts, texts = _string_array(cur, count)
        return GGUFField(name, (vtype, etype), texts, offset, starts)
    if etype == V.ARRAY:
        raise ValueError(f"{name}: arrays of arrays are not supported")
    return GGUFField(name, (vtype, etype), cur.array(SCALAR_DTYPES[etype], count), offset)


def _string_array(cur: _Cursor, count: int) -> tuple[tuple[int, ...], list[str]]:
    """Each string's text offset and text; the hot loop of a 128k-token vocabulary."""
    blob, pos, length = cur.blob, cur.pos, struct.Struct("<Q").unpack_from
    starts, texts = [], []
    for _ in range(count):
        (n,) = length(blob, pos)
        pos += 8
        starts.append(pos)
        texts.append(bytes(blob[pos : pos + n]).decode("utf-8"))
        pos += n
    cur.pos = pos
    return tuple(starts), texts


def _read_tensor_info(cur: _Cursor) -> tuple[str, tuple[int, ...], Q, int]:
    name = cur.string()
    dims = cur.array("<u8", cur.scalar("<I")).tolist()
    qtype = Q(cur.scalar("<I"))
    return name, tuple(reversed(dims)), qtype, cur.scalar("<Q")


def _alignment(fields: dict[str, GGUFField]) -> int:
    field = fields.get("general.alignment")
    if field is None:
        return gguf.GGUF_DEFAULT_ALIGNMENT
    if field.types != (V.UINT32,) or field.value <= 0 or field.value & (field.value - 1):
        raise ValueError(f"bad general.alignment: {field.types} {field.value}")
    return field.value


def _tensor(blob, name: str, shape: tuple[int, ...], qtype: Q, start: int) -> GGUFTensor:
    block, type_size = gguf.GGML_QUANT_SIZES[qtype]
    n_bytes = math.prod(shape) // block * type_size
    raw = np.frombuffer(blob, np.uint8, n_bytes, start)
    if qtype in _TYPED_TENSORS:
        data = raw.view(_TYPED_TENSORS[qtype]).reshape(shape)
    else:
        data = raw.reshape(*shape[:-1], -1)  # GGUFReader's byte shape: bytes per row
    return GGUFTensor(name, qtype, shape, data)
