"""Read safetensors headers (no weights) and validate the files against them.

A safetensors file is an 8-byte little-endian header length, a JSON header mapping tensor
names to dtype/shape/data_offsets, then the data. Reading only the header gives the whole
tensor inventory, and comparing the offsets with the file size catches truncated shards
before any work starts.
"""

from __future__ import annotations

import json
import struct
from dataclasses import dataclass
from math import prod
from pathlib import Path

from ..errors import SourceModelError

DTYPE_BYTES = {
    "F64": 8,
    "F32": 4,
    "F16": 2,
    "BF16": 2,
    "I64": 8,
    "I32": 4,
    "I16": 2,
    "I8": 1,
    "U8": 1,
    "U16": 2,
    "U32": 4,
    "U64": 8,
    "BOOL": 1,
    "F8_E4M3": 1,
    "F8_E5M2": 1,
}
_MAX_HEADER = 100 * 1024 * 1024


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
    """Return (header, data_start) of one safetensors file, checked for truncation."""
    size = path.stat().st_size
    with path.open("rb") as fh:
        raw_len = fh.read(8)
        if len(raw_len) < 8:
            raise _truncated(path, "it is shorter than a safetensors header")
        (header_len,) = struct.unpack("<Q", raw_len)
        if header_len > _MAX_HEADER or 8 + header_len > size:
            raise _truncated(path, "its header length points past the end of the file")
        try:
            header = json.loads(fh.read(header_len))
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise _truncated(path, f"its header is not valid JSON ({exc})") from exc
    data_start = 8 + header_len
    end = max((v["data_offsets"][1] for k, v in header.items() if k != "__metadata__"), default=0)
    if data_start + end > size:
        missing = data_start + end - size
        raise _truncated(path, f"it is {missing} bytes shorter than its header says")
    return header, data_start


def tensors_in_file(path: Path, relative_name: str) -> list[TensorInfo]:
    header, _ = read_header(path)
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
        weight_map = json.loads(index.read_text())["weight_map"]
        files = sorted(set(weight_map.values()))
        missing = [f for f in files if not (folder / f).is_file()]
        if missing:
            raise SourceModelError(
                f"{index} names shards that are missing: {', '.join(missing)}.",
                hint="Download the complete model (all shards) and try again.",
            )
        return [folder / f for f in files]
    return sorted(folder.glob("*.safetensors"))


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
