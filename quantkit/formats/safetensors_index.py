"""Read safetensors headers (no weights) and validate the files against them.

A safetensors file is an 8-byte little-endian header length, a JSON header mapping tensor
names to dtype/shape/data_offsets, then the data. Reading only the header gives the whole
tensor inventory, and comparing the offsets with the file size catches truncated shards
before any work starts.
"""

from __future__ import annotations

import json
import struct
from collections.abc import Callable
from dataclasses import dataclass
from math import prod
from pathlib import Path

from ..errors import SourceModelError

# Bits per element of every dtype the safetensors library (0.8) accepts; a header naming
# another one is refused, as safe_open refuses it. Sub-byte types (F4, F6_*) pack elements,
# so a tensor's bit count must end on a byte boundary.
DTYPE_BITS = {
    "BOOL": 8,
    "F4": 4,
    "F6_E2M3": 6,
    "F6_E3M2": 6,
    "U8": 8,
    "I8": 8,
    "F8_E5M2": 8,
    "F8_E4M3": 8,
    "F8_E8M0": 8,
    "F8_E4M3FNUZ": 8,
    "F8_E5M2FNUZ": 8,
    "I16": 16,
    "U16": 16,
    "F16": 16,
    "BF16": 16,
    "I32": 32,
    "U32": 32,
    "F32": 32,
    "C64": 64,
    "F64": 64,
    "I64": 64,
    "U64": 64,
}
DTYPE_BYTES = {name: bits // 8 for name, bits in DTYPE_BITS.items() if bits % 8 == 0}
# The safetensors library's MAX_HEADER_SIZE: a longer header is refused before it is read,
# so a damaged length field cannot make us read (or allocate) gigabytes.
_MAX_HEADER = 100_000_000


@dataclass(frozen=True)
class TensorInfo:
    name: str
    dtype: str  # safetensors dtype name, e.g. "BF16"
    shape: tuple[int, ...]
    file: str  # shard file name, relative to the model folder
    nbytes: int

    @property
    def numel(self) -> int:
        return prod(self.shape)


def read_header(path: Path) -> tuple[dict, int]:
    """Return (header, data_start) of one safetensors file, validated as the safetensors
    library validates it before loading: a sane header length inside the file, a JSON
    object, known dtypes, each tensor's byte length equal to its dtype size times its
    element count, and the tensors' byte ranges tiling the data section exactly (no
    overlap, no gap, nothing after the last). A file that passes loads in safetensors,
    transformers and quantkit's own readers alike; one that does not fails here, naming
    the file and the tensor, instead of as garbage weights or a crash mid-conversion."""
    size = path.stat().st_size
    with path.open("rb") as fh:
        raw = read_raw_header(lambda start, length: _read_at(fh, start, length), path, size)
    return parse_header(path, raw, size)


def _read_at(fh, start: int, length: int) -> bytes:
    fh.seek(start)
    return fh.read(length)


def read_raw_header(read: Callable[[int, int], bytes], path: Path | str, size: int) -> bytes:
    """The header's JSON bytes of a safetensors file of `size` bytes, read with
    `read(start, length)`: from a local file, or with HTTP Range requests from the Hub."""
    raw_len = read(0, 8)
    if len(raw_len) < 8:
        raise _truncated(path, "it is shorter than a safetensors header")
    (header_len,) = struct.unpack("<Q", raw_len)
    if header_len > _MAX_HEADER:
        raise _malformed(
            path, f"its header length field says {header_len} bytes; safetensors "
            f"allows at most {_MAX_HEADER}",
        )  # fmt: skip
    if 8 + header_len > size:
        raise _truncated(path, "its header length points past the end of the file")
    return read(8, header_len)


def parse_header(path: Path | str, raw: bytes, size: int) -> tuple[dict, int]:
    """(header, data_start) from a header's JSON bytes, checked against the file's size
    (read_header says what is checked)."""
    try:
        text = raw.decode("utf-8")
        header = json.loads(text) if text.startswith("{") else None
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise _truncated(path, f"its header is not valid JSON ({exc})") from exc
    if not isinstance(header, dict):
        raise _malformed(path, "its header is not a JSON object")
    data_start = 8 + len(raw)
    end = _check_layout(path, header)
    if data_start + end > size:
        missing = data_start + end - size
        raise _truncated(path, f"it is {missing} bytes shorter than its header says")
    if data_start + end < size:
        extra = size - data_start - end
        raise _malformed(path, f"it has {extra} bytes after the last tensor's data")
    return header, data_start


def _check_layout(path: Path, header: dict) -> int:
    """Check every entry of a parsed header; return the end of the data section."""
    meta = header.get("__metadata__", {})
    if not isinstance(meta, dict) or not all(isinstance(v, str) for v in meta.values()):
        raise _malformed(path, "its __metadata__ is not a map of strings")
    spans: list[tuple[int, int, str]] = []
    for name, info in header.items():
        if name == "__metadata__":
            continue
        spans.append((*_tensor_span(path, name, info), name))
    spans.sort()
    pos, previous = 0, ""
    for begin, end, name in spans:
        if begin < pos:
            raise _malformed(path, f"tensor {name} (bytes {begin}-{end}) overlaps {previous}")
        if begin > pos:
            after = f"after {previous}" if previous else "at the start of the data"
            raise _malformed(
                path, f"{begin - pos} bytes {after} belong to no tensor (next: {name})"
            )
        pos, previous = end, name
    return pos


def _tensor_span(path: Path, name: str, info: object) -> tuple[int, int]:
    """(begin, end) of one tensor's data, after checking its entry is well formed and
    its byte length is what its dtype and shape need."""
    if not isinstance(info, dict):
        raise _malformed(path, f"the entry of tensor {name} is not a JSON object")
    dtype, shape, offsets = info.get("dtype"), info.get("shape"), info.get("data_offsets")
    if dtype not in DTYPE_BITS:
        raise _malformed(
            path, f"tensor {name} has dtype {dtype!r}, which safetensors does not know"
        )
    if not isinstance(shape, list) or not all(_is_count(d) for d in shape):
        raise _malformed(path, f"tensor {name} has shape {shape!r}, not a list of sizes")
    if (
        not isinstance(offsets, list)
        or len(offsets) != 2
        or not all(_is_count(o) for o in offsets)
        or offsets[0] > offsets[1]
    ):
        raise _malformed(path, f"tensor {name} has data_offsets {offsets!r}")
    bits = prod(shape) * DTYPE_BITS[dtype]
    if bits % 8:
        raise _malformed(path, f"tensor {name} ({dtype} {shape}) does not end on a byte")
    begin, end = offsets
    if end - begin != bits // 8:
        raise _malformed(
            path, f"tensor {name} ({dtype} {shape}) needs {bits // 8} bytes but its "
            f"data_offsets [{begin}, {end}] hold {end - begin}",
        )  # fmt: skip
    return begin, end


def _is_count(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def tensors_in_file(path: Path, relative_name: str) -> list[TensorInfo]:
    header, _ = read_header(path)
    return tensors_in_header(header, relative_name)


def tensors_in_header(header: dict, relative_name: str) -> list[TensorInfo]:
    out = []
    for name, meta in header.items():
        if name == "__metadata__":
            continue
        start, end = meta["data_offsets"]
        out.append(
            TensorInfo(name, meta["dtype"], tuple(meta["shape"]), relative_name, end - start)
        )
    return out


def shard_files(folder: Path) -> list[Path]:
    """The safetensors shards of a model folder, following the index when there is one."""
    index = folder / "model.safetensors.index.json"
    if index.is_file():
        files = sorted(set(index_weight_map(index).values()))
        missing = [f for f in files if not (folder / f).is_file()]
        if missing:
            raise SourceModelError(
                f"{index} names shards that are missing: {', '.join(missing)}.",
                hint="Download the complete model (all shards) and try again.",
            )
        return [folder / f for f in files]
    return sorted(folder.glob("*.safetensors"))


def index_weight_map(index: Path) -> dict[str, str]:
    """tensor name -> shard file name, from a model.safetensors.index.json, checked to be
    a map of names to plain file names inside the folder (a hostile index must not point
    a reader at ../../anything)."""
    try:
        data = json.loads(index.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise _bad_index(index, f"it is not valid JSON ({exc})") from exc
    if not isinstance(data, dict):
        raise _bad_index(index, "it is not a JSON object")
    weight_map = data.get("weight_map")
    if not isinstance(weight_map, dict) or not weight_map:
        raise _bad_index(index, "it has no weight_map")
    for name, file in weight_map.items():
        if (
            not isinstance(file, str)
            or not file
            or Path(file).is_absolute()
            or ".." in Path(file).parts
        ):
            raise _bad_index(index, f"it maps {name} to {file!r}, not a file in the folder")
    return weight_map


def _bad_index(index: Path, why: str) -> SourceModelError:
    return SourceModelError(
        f"{index} is not a valid safetensors index: {why}.",
        hint="Download model.safetensors.index.json again from the original model.",
    )


def tensor_inventory(folder: Path) -> tuple[TensorInfo, ...]:
    inventory: list[TensorInfo] = []
    for shard in shard_files(folder):
        inventory.extend(tensors_in_file(shard, shard.name))
    return tuple(inventory)


def _truncated(path: Path, why: str) -> SourceModelError:
    return SourceModelError(
        f"{path} is not a complete safetensors file: {why}.",
        hint="The download was probably interrupted; download this file again.",
    )


def _malformed(path: Path, why: str) -> SourceModelError:
    return SourceModelError(
        f"{path} is not a valid safetensors file: {why}.",
        hint="The file is damaged or was written by a faulty tool; download it again, or "
        "re-save the model with safetensors (save_pretrained).",
    )
