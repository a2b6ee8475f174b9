"""Read a GGUF's header fast: the metadata values asked for and the tensor table, nothing else.

gguf-py's GGUFReader turns every key-value entry into Python objects; a 128k-token vocab and
its merges take it seconds. Most callers want a few keys (the tokenizer, the templates, the
architecture) or only the tensor table (types for the manifest, offsets for one tensor), so
this walks the header in a memory map, decodes the wanted values and skips the rest by their
sizes. Nothing past the header is read, except the one tensor `read_f32_tensor` is asked for.

One table of value types serves every reader: the GGUF value types are gguf-py's
`GGUFValueType`, the ggml tensor type names gguf-py's `GGMLQuantizationType`, and the only
thing added here is how each fixed-width value type is packed (a `struct` format).
"""

from __future__ import annotations

import mmap
import struct
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from gguf import GGUF_DEFAULT_ALIGNMENT, GGMLQuantizationType, GGUFValueType, Keys

from ..errors import QuantkitError

# How each fixed-width GGUF value type is packed, little-endian (gguf-py's GGUFReader
# keeps the same facts as numpy dtypes; tests/formats/test_gguf_read.py checks that both agree and
# that every value type gguf-py knows is here or is STRING / ARRAY).
SCALAR_FORMATS: dict[GGUFValueType, str] = {
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
SCALAR_SIZES: dict[GGUFValueType, int] = {t: struct.calcsize(f) for t, f in SCALAR_FORMATS.items()}
_HEADER = struct.Struct("<4sIQQ")  # magic, version, tensor count, key-value count
_MAGIC = b"GGUF"
# The fewest bytes each counted thing can take, so that a count can be checked against the
# bytes left before it is acted on: a key-value entry (u64 key length, u32 type, a 1-byte
# value), a tensor info (u64 name length, u32 dim count, u32 type, u64 offset), a string
# (its u64 length) and an array (u32 item type, u64 count). A damaged or hostile count of
# 2**63 in a tiny file then fails at once instead of building a format string or a list
# of that length.
_MIN_KV, _MIN_TENSOR_INFO, _MIN_STRING, _MIN_ARRAY = 13, 24, 8, 12
_MAX_DIMS = 4  # GGML_MAX_DIMS: llama.cpp refuses a tensor with more


@dataclass(frozen=True)
class TensorInfo:
    name: str
    dims: tuple[int, ...]  # as stored: innermost first
    ggml_type: int
    offset: int  # from the start of the data section

    @property
    def type_name(self) -> str:
        return ggml_type_name(self.ggml_type)

    @property
    def elements(self) -> int:
        count = 1
        for d in self.dims:
            count *= d
        return count


@dataclass(frozen=True)
class GGUFHeader:
    values: dict[str, Any]  # only the keys asked for
    tensors: dict[str, TensorInfo]
    data_start: int  # where the tensor data begins (the header padded to the alignment)
    alignment: int


def ggml_type_name(ggml_type: int) -> str:
    """The name of a ggml type (Q4_K for 12); "type N" for one this gguf-py does not know."""
    try:
        return GGMLQuantizationType(ggml_type).name
    except ValueError:
        return f"type {ggml_type}"


def chat_template_key(name: str) -> str:
    """Where llama.cpp stores the chat template `name` ("default" is the unnamed one)."""
    if name == "default":
        return Keys.Tokenizer.CHAT_TEMPLATE
    return Keys.Tokenizer.CHAT_TEMPLATE_N.format(name=name)


def chat_templates(values: Mapping[str, Any]) -> dict[str, str]:
    """The chat templates in GGUF metadata (as read here, or as llama.cpp's metadata dict):
    every named `tokenizer.chat_template.<name>`, then "default"."""
    prefix = Keys.Tokenizer.CHAT_TEMPLATE + "."
    out = {key[len(prefix) :]: str(v) for key, v in values.items() if key.startswith(prefix)}
    if Keys.Tokenizer.CHAT_TEMPLATE in values:
        out["default"] = str(values[Keys.Tokenizer.CHAT_TEMPLATE])
    return out


# --- reading -----------------------------------------------------------------------------


def read_metadata(
    path: Path, keys: Callable[[str], bool] | set[str] | frozenset[str]
) -> dict[str, Any]:
    """The values of the keys `keys` names (a set, or a predicate), without decoding the
    rest. QuantkitError when `path` is not a GGUF; struct.error / ValueError /
    UnicodeDecodeError when its header is cut short or damaged (callers say which file)."""
    with _mapped(path) as buf:
        return _Walker(buf).metadata(_predicate(keys))


def read_header(
    path: Path, keys: Callable[[str], bool] | set[str] | frozenset[str] = frozenset()
) -> GGUFHeader:
    """The metadata values `keys` names, the tensor table and where the data starts."""
    with _mapped(path) as buf:
        return _Walker(buf).header(_predicate(keys))


def tensor_types(path: Path) -> dict[str, str]:
    """tensor name -> ggml type name (e.g. "Q4_K"), from the header alone."""
    return {name: info.type_name for name, info in read_header(path).tensors.items()}


class TensorTypeError(ValueError):
    """A tensor stored in another type than the one asked for."""


class GGUFHeaderError(ValueError):
    """A count or length in a GGUF header that the file cannot hold (a ValueError, so the
    callers that already turn a damaged header into a one-line error catch it too)."""


def read_f32_tensor(files: list[Path], name: str):
    """The float32 tensor `name` (a numpy array) from whichever file holds it, or None if
    absent; TensorTypeError when it is stored in another type."""
    import numpy as np

    for path in files:
        with _mapped(path) as buf:
            header = _Walker(buf).header(_predicate(frozenset()))
            info = header.tensors.get(name)
            if info is None:
                continue
            if info.ggml_type != GGMLQuantizationType.F32:
                raise TensorTypeError(
                    f"{name} is stored as {info.type_name} (ggml type {info.ggml_type}), not F32"
                )
            offset = header.data_start + info.offset
            view = np.frombuffer(buf, dtype="<f4", count=info.elements, offset=offset)
            values = view.copy()
            del view  # release the buffer before the mmap closes
            return values
    return None


# --- the byte sizes a writer produces (the split planner's arithmetic) ---------------------


def kv_bytes(key: str, vtype: GGUFValueType, value: str | None = None) -> int:
    """Bytes one metadata entry takes: key (u64 length + UTF-8), u32 value type, payload
    (a scalar's packed size, or a string's u64 length + UTF-8 bytes)."""
    head = 8 + len(key.encode("utf-8")) + 4
    if vtype == GGUFValueType.STRING:
        return head + 8 + len((value or "").encode("utf-8"))
    return head + SCALAR_SIZES[vtype]


def tensor_info_bytes(name: str, n_dims: int) -> int:
    """Bytes one tensor info takes: name, u32 dim count, u64 dims, u32 type, u64 offset."""
    return 8 + len(name.encode("utf-8")) + 4 + 8 * n_dims + 4 + 8


# --- the walk ----------------------------------------------------------------------------


def _predicate(keys: Callable[[str], bool] | set[str] | frozenset[str]) -> Callable[[str], bool]:
    return keys.__contains__ if isinstance(keys, (set, frozenset)) else keys


@contextmanager
def _mapped(path: Path) -> Iterator[mmap.mmap]:
    with Path(path).open("rb") as fh, mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ) as buf:
        if buf[:4] != _MAGIC:
            raise QuantkitError(f"{path} is not a GGUF file.")
        yield buf


class _Walker:
    """A cursor over a mapped GGUF header."""

    def __init__(self, buf: mmap.mmap) -> None:
        self.buf = buf
        if len(buf) < _HEADER.size:
            raise GGUFHeaderError(f"the file is {len(buf)} bytes, shorter than a GGUF header")
        _, _, self.n_tensors, self.n_kv = _HEADER.unpack_from(buf, 0)
        self.pos = _HEADER.size
        self.alignment = GGUF_DEFAULT_ALIGNMENT
        needed = self.n_kv * _MIN_KV + self.n_tensors * _MIN_TENSOR_INFO
        if needed > self._left():
            raise GGUFHeaderError(
                f"the header counts {self.n_kv} key-value entries and {self.n_tensors} "
                f"tensors, which need at least {needed} bytes; the file has {len(buf)}"
            )

    def metadata(self, wanted: Callable[[str], bool]) -> dict[str, Any]:
        found: dict[str, Any] = {}
        for _ in range(self.n_kv):
            key = self._string()
            vtype = self._unpack("<I")
            if key == Keys.General.ALIGNMENT and vtype == GGUFValueType.UINT32:
                self.alignment = struct.unpack_from("<I", self.buf, self.pos)[0]
            if wanted(key):
                found[key] = self._value(vtype)
            else:
                self._skip(vtype)
        return found

    def header(self, wanted: Callable[[str], bool]) -> GGUFHeader:
        values = self.metadata(wanted)
        tensors = {}
        for _ in range(self.n_tensors):
            name = self._string()
            n_dims = self._unpack("<I")
            if n_dims > _MAX_DIMS:
                raise GGUFHeaderError(
                    f"tensor {name} has {n_dims} dimensions; GGUF allows at most {_MAX_DIMS}"
                )
            dims = struct.unpack_from(f"<{n_dims}Q", self.buf, self.pos)
            self.pos += 8 * n_dims
            ggml_type, offset = struct.unpack_from("<IQ", self.buf, self.pos)
            self.pos += 12
            tensors[name] = TensorInfo(name, tuple(dims), ggml_type, offset)
        align = self.alignment
        data_start = (self.pos + align - 1) // align * align
        return GGUFHeader(values, tensors, data_start, align)

    def _unpack(self, fmt: str) -> Any:
        (value,) = struct.unpack_from(fmt, self.buf, self.pos)
        self.pos += struct.calcsize(fmt)
        return value

    def _left(self) -> int:
        return len(self.buf) - self.pos

    def _string(self) -> str:
        length = self._string_length()
        start, self.pos = self.pos, self.pos + length
        return bytes(self.buf[start : self.pos]).decode("utf-8", errors="replace")

    def _string_length(self) -> int:
        at = self.pos
        length = self._unpack("<Q")
        if length > self._left():
            raise GGUFHeaderError(
                f"a string at byte {at} is {length} bytes long, past the end of the file "
                f"({len(self.buf)} bytes)"
            )
        return length

    def _array_head(self) -> tuple[int, int]:
        """(item type, count) of an array, the count checked against the bytes left."""
        at = self.pos
        item, count = self._unpack("<I"), self._unpack("<Q")
        if item == GGUFValueType.ARRAY:
            # llama.cpp reads no array of arrays; refusing it also bounds the recursion.
            raise GGUFHeaderError(f"the array at byte {at} holds arrays, which GGUF forbids")
        if item != GGUFValueType.STRING and item not in SCALAR_SIZES:
            raise GGUFHeaderError(f"the array at byte {at} has unknown item type {item}")
        least = _MIN_STRING if item == GGUFValueType.STRING else SCALAR_SIZES[item]
        if count * least > self._left():
            raise GGUFHeaderError(
                f"the array at byte {at} counts {count} items, which need at least "
                f"{count * least} bytes; {self._left()} are left in the file"
            )
        return item, count

    def _value(self, vtype: int) -> Any:
        if vtype == GGUFValueType.STRING:
            return self._string()
        if vtype == GGUFValueType.ARRAY:
            item, count = self._array_head()
            if item in SCALAR_FORMATS:
                fmt = "<" + SCALAR_FORMATS[item][1] * count
                items = list(struct.unpack_from(fmt, self.buf, self.pos))
                self.pos += SCALAR_SIZES[item] * count
                return items
            return [self._value(item) for _ in range(count)]
        if vtype not in SCALAR_FORMATS:
            raise ValueError(f"unknown GGUF value type {vtype} at byte {self.pos}")
        return self._unpack(SCALAR_FORMATS[vtype])

    def _skip(self, vtype: int) -> None:
        if vtype == GGUFValueType.STRING:
            length = self._string_length()  # moves past the length field
            self.pos += length
        elif vtype == GGUFValueType.ARRAY:
            item, count = self._array_head()
            if item in SCALAR_SIZES:
                self.pos += SCALAR_SIZES[item] * count
            else:
                for _ in range(count):
                    self._skip(item)
        elif vtype in SCALAR_SIZES:
            self.pos += SCALAR_SIZES[vtype]
        else:
            raise ValueError(f"unknown GGUF value type {vtype} at byte {self.pos}")
