"""Split a GGUF file into llama.cpp's split format, streaming.

llama.cpp's split format (what `llama-gguf-split --split` writes and what llama.cpp, and
so llama-cpp-python, llama-server and LM Studio load): shards named
`<stem>-00001-of-0000N.gguf`; every shard carries `split.no` (u16, 0-based),
`split.count` (u16) and `split.tensors.count` (i32, the tensors of the whole set); the
first shard carries all the other metadata; each tensor lives in exactly one shard.
Loading the first shard loads the set.

The Hugging Face Hub refuses files over 50 GB, so `quantkit upload` splits larger GGUFs.
Metadata and tensor infos are written with gguf-py's GGUFWriter; tensor bytes are copied
from the source in bounded blocks (never the whole file in memory) and hashed on the way.
"""

from __future__ import annotations

import logging
import os
from collections import Counter
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from gguf import GGUFValue, GGUFValueType, Keys

from ..disk.atomic import building_file
from ..errors import SplitError
from .gguf_names import is_shard_name, shard_name
from .gguf_read import kv_bytes, tensor_info_bytes

log = logging.getLogger(__name__)

HUB_MAX_FILE_BYTES = 50 * 10**9  # the Hub's per-file limit
DEFAULT_SHARD_BYTES = 48 * 10**9  # shards stay clear of the limit
SPLIT_NO = Keys.Split.LLM_KV_SPLIT_NO  # u16, 0-based
SPLIT_COUNT = Keys.Split.LLM_KV_SPLIT_COUNT  # u16
SPLIT_TENSORS_COUNT = Keys.Split.LLM_KV_SPLIT_TENSORS_COUNT  # i32, the whole set's tensors
SPLIT_PREFIX = SPLIT_NO.split(".")[0] + "."  # "split.": any key of the split format
_ARCH, _ALIGNMENT = Keys.General.ARCHITECTURE, Keys.General.ALIGNMENT
_COPY_BLOCK = 16 * 1024 * 1024
# Bytes a shard's header needs besides the copied metadata and tensor infos: magic,
# version, counts, the three split keys, general.architecture and alignment padding.
_HEADER_SLACK = 512


@dataclass(frozen=True)
class ShardPlan:
    path: Path
    tensors: tuple[str, ...]
    bytes: int  # exact size of the shard file
    tensor_types: dict[str, int] = field(default_factory=dict)


def needs_split(path: Path, limit: int = HUB_MAX_FILE_BYTES) -> bool:
    return path.suffix == ".gguf" and path.stat().st_size > limit and not is_shard_name(path.name)


def plan_split(path: Path, max_bytes: int, out_dir: Path | None = None) -> list[ShardPlan]:
    """The shards `split_gguf` would write, with their exact sizes; reads the header only."""
    from gguf import GGUFReader

    reader = GGUFReader(path)
    return _plan(reader, Path(path), max_bytes, out_dir or Path(path).parent)


def split_gguf(path: Path, max_bytes: int, out_dir: Path | None = None) -> list[Path]:
    """Split `path` into shards of at most `max_bytes` each; returns the shard paths in
    order (`[path]` itself when it already fits). The source is left in place."""
    from gguf import GGUFReader

    path = Path(path)
    if path.stat().st_size <= max_bytes:
        return [path]
    reader = GGUFReader(path)
    plans = _plan(reader, path, max_bytes, out_dir or path.parent)
    header = set_header(reader)
    # Every shard is written as <name>.partial and renamed only once all are written and
    # have their planned sizes; any failure (Ctrl-C too) removes every .partial.
    with ExitStack() as stack:
        for index, plan in enumerate(plans):
            partial = stack.enter_context(building_file(plan.path))
            _write_shard(reader, header, path, partial, plan, index, len(plans))
            size = partial.stat().st_size
            if size != plan.bytes:
                raise SplitError(f"{plan.path.name}: wrote {size} bytes, planned {plan.bytes}.")
    return [plan.path for plan in plans]


# --- planning -------------------------------------------------------------------------


def _copied_fields(reader) -> list:
    """Metadata fields to copy into the first shard (pseudo-fields and split keys excluded)."""
    names = [name for name in reader.fields if not name.startswith("GGUF.")]
    if any(name.startswith(SPLIT_PREFIX) for name in names):
        raise SplitError(
            "This GGUF is already a shard of a split set.",
            hint="Split the merged file, or upload the shards as they are.",
        )
    return [reader.fields[name] for name in names]


def _kv_bytes(reader) -> int:
    """Bytes of the metadata section as the source stores it (same encoding we write)."""
    total = 0
    for fld in _copied_fields(reader):
        total += sum(int(part.nbytes) for part in fld.parts)
    return total


def _pad(n: int, align: int) -> int:
    return ((n + align - 1) // align) * align


def _plan(reader, path: Path, max_bytes: int, out_dir: Path) -> list[ShardPlan]:
    align = reader.alignment
    first_header = 24 + _kv_bytes(reader) + _HEADER_SLACK
    other_header = 24 + _HEADER_SLACK
    groups: list[list] = [[]]
    header, data = first_header, 0
    for tensor in reader.tensors:
        info = tensor_info_bytes(tensor.name, len(tensor.shape))
        padded = _pad(int(tensor.n_bytes), align)
        # header + infos padded to the alignment, then the padded tensor data
        if groups[-1] and _pad(header + info, align) + data + padded > max_bytes:
            groups.append([])
            header, data = other_header, 0
        if _pad(header + info, align) + data + padded > max_bytes:
            raise SplitError(
                f"Tensor {tensor.name} ({tensor.n_bytes:,} bytes) does not fit in a shard of "
                f"{max_bytes:,} bytes.",
                hint="Use a larger shard size.",
            )
        groups[-1].append(tensor)
        header += info
        data += padded
    count = len(groups)
    stem = Path(path).stem
    plans = []
    for index, group in enumerate(groups):
        head = (first_header if index == 0 else other_header) - _HEADER_SLACK
        head += _split_keys_bytes() + sum(tensor_info_bytes(t.name, len(t.shape)) for t in group)
        if index > 0:
            head += _arch_key_bytes(reader)
            if _ALIGNMENT in reader.fields:
                head += kv_bytes(_ALIGNMENT, GGUFValueType.UINT32)
        size = _pad(head, align) + sum(_pad(int(t.n_bytes), align) for t in group)
        # The writer pads the last tensor too, so the file ends on the alignment.
        plans.append(
            ShardPlan(
                path=out_dir / shard_name(stem, index + 1, count),
                tensors=tuple(t.name for t in group),
                bytes=size,
                tensor_types=dict(Counter(t.tensor_type.name for t in group)),
            )
        )
    return plans


def _split_keys_bytes() -> int:
    return (
        kv_bytes(SPLIT_NO, GGUFValueType.UINT16)
        + kv_bytes(SPLIT_COUNT, GGUFValueType.UINT16)
        + kv_bytes(SPLIT_TENSORS_COUNT, GGUFValueType.INT32)
    )


def _arch_key_bytes(reader) -> int:
    return kv_bytes(_ARCH, GGUFValueType.STRING, _architecture(reader))


def _architecture(reader) -> str:
    fld = reader.fields.get(_ARCH)
    return str(fld.contents()) if fld is not None else "llama"


# --- writing --------------------------------------------------------------------------


def _write_shard(
    reader, header: SetHeader, source: Path, target: Path, plan: ShardPlan, index: int, count: int
):
    by_name = {t.name: t for t in reader.tensors}
    tensors = [by_name[name] for name in plan.tensors]
    infos = [ShardTensor(t.name, _numpy_shape(t), t.tensor_type, int(t.n_bytes)) for t in tensors]
    writer, fout = open_shard(header, target, infos, index, count)
    with source.open("rb") as src:
        for t in tensors:
            _copy_range(src, fout, int(t.data_offset), int(t.n_bytes))
            writer.write_padding(fout, int(t.n_bytes))
    fout.flush()
    os.fsync(fout.fileno())
    writer.close()
    log.info("wrote %s (%d tensors)", target.name, len(tensors))


@dataclass(frozen=True)
class ShardTensor:
    """A tensor as a shard's header describes it (shape in numpy order, row length last)."""

    name: str
    shape: tuple[int, ...]
    tensor_type: Any  # gguf.GGMLQuantizationType
    nbytes: int


@dataclass(frozen=True)
class SetHeader:
    """What the shards of a set take from the whole file: its architecture and alignment,
    its metadata (all of it in the first shard, as typed values) and its tensor count."""

    architecture: str
    alignment: int
    metadata: dict[str, GGUFValue]  # without general.architecture: the writer puts it first
    tensor_count: int


def set_header(reader) -> SetHeader:
    """The SetHeader of the GGUF a gguf-py GGUFReader reads."""
    metadata = {}
    for fld in _copied_fields(reader):
        if fld.name == _ARCH:
            continue
        main = GGUFValueType(fld.types[0])
        sub = GGUFValueType(fld.types[-1]) if main == GGUFValueType.ARRAY else None
        metadata[fld.name] = GGUFValue(fld.contents(), main, sub)
    return SetHeader(_architecture(reader), reader.alignment, metadata, len(reader.tensors))


def open_shard(header: SetHeader, target: Path, tensors: list[ShardTensor], index: int,
               count: int):  # fmt: skip
    """Write the header of shard `index` (0-based) of `count` of a set described by
    `header` (all its metadata in the first shard; the split keys in every one) with
    `tensors`' infos; return the gguf-py writer and its file, positioned where the first
    tensor's data goes. The caller writes each tensor's bytes in order, each followed by
    `writer.write_padding(fout, nbytes)`, then closes the writer."""
    import numpy as np
    from gguf import GGUFWriter

    writer = GGUFWriter(target, header.architecture)
    if header.alignment != 32:  # gguf's default; a custom one is a metadata key too
        writer.data_alignment = header.alignment
    if index == 0:
        for key, value in header.metadata.items():
            writer.add_key_value(key, value.value, value.type, sub_type=value.sub_type)
    elif _ALIGNMENT in header.metadata:
        writer.add_uint32(_ALIGNMENT, header.alignment)
    writer.add_uint16(SPLIT_NO, index)
    writer.add_uint16(SPLIT_COUNT, count)
    writer.add_int32(SPLIT_TENSORS_COUNT, header.tensor_count)
    for t in tensors:
        # Passing the byte count with a non-uint8 dtype keeps the shape as given.
        writer.add_tensor_info(
            t.name, list(t.shape), np.dtype(np.float32), t.nbytes, raw_dtype=t.tensor_type
        )
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_ti_data_to_file()
    fout = writer.fout[0]
    writer.write_padding(fout, fout.tell())
    return writer, fout


def _numpy_shape(tensor) -> tuple[int, ...]:
    # GGUF stores dims innermost first; the writer takes numpy order
    return tuple(int(d) for d in reversed(tensor.shape.tolist()))


def _copy_range(src, dst, offset: int, length: int) -> None:
    src.seek(offset)
    left = length
    while left > 0:
        block = src.read(min(_COPY_BLOCK, left))
        if not block:
            raise SplitError(f"{src.name} ended early: the GGUF is truncated.")
        dst.write(block)
        left -= len(block)
