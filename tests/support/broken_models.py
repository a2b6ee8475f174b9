"""Broken copies of the fixture models for the source-validation tests: the folder copied
with its weights symlinked, then one thing broken, a config value, the index, or a shard's
header.

A rewritten shard is a sparse file: the new header, then a hole as long as the data
section the header describes. Validation reads only headers and file sizes, and every
test here fails before a weight is read, so the hole is never read; it costs no disk and
no time, where copying real weights would write hundreds of MB per test.
"""

from __future__ import annotations

import json
import shutil
import struct
from collections.abc import Callable
from math import prod
from pathlib import Path
from typing import Any

import pytest

import quantkit
from quantkit.errors import SourceModelError
from quantkit.evaluation.options import EvalOptions
from quantkit.formats.safetensors_index import DTYPE_BITS


def linked_copy(source: Path, dest: Path, *, skip: tuple[str, ...] = ()) -> Path:
    """`source` copied to `dest`: weights symlinked (never written through), the rest
    copied so a test can edit it."""
    dest.mkdir(parents=True)
    for path in source.iterdir():
        if path.name in skip:
            continue
        if path.suffix == ".safetensors":
            (dest / path.name).symlink_to(path.resolve())
        elif path.is_dir():
            shutil.copytree(path, dest / path.name)
        else:
            shutil.copy2(path, dest / path.name)
    return dest


def edit_json(path: Path, edit: Callable[[dict[str, Any]], None]) -> None:
    data = json.loads(path.read_text(encoding="utf-8"))
    edit(data)
    path.write_text(json.dumps(data, indent=2), encoding="utf-8")


def raw_header(path: Path) -> dict[str, Any]:
    """A safetensors file's header as stored, without any validation."""
    with path.open("rb") as fh:
        (length,) = struct.unpack("<Q", fh.read(8))
        return json.loads(fh.read(length))


def write_sparse(path: Path, header: dict[str, Any], data_bytes: int | None = None) -> Path:
    """Write `header` as given, then a hole of `data_bytes` (default: up to the largest
    end offset). Replaces a symlink instead of writing through it."""
    if data_bytes is None:
        ends = [v["data_offsets"][1] for k, v in header.items() if k != "__metadata__"]
        data_bytes = max(ends, default=0)
    raw = json.dumps(header).encode()
    path.unlink(missing_ok=True)
    with path.open("wb") as fh:
        fh.write(struct.pack("<Q", len(raw)) + raw)
        fh.truncate(8 + len(raw) + data_bytes)
    return path


def write_laid_out(path: Path, header: dict[str, Any]) -> Path:
    """Write `header` with valid offsets: its tensors laid end to end in the given order,
    each as long as its dtype and shape need."""
    pos, out = 0, {}
    for name, info in header.items():
        if name == "__metadata__":
            out[name] = info
            continue
        size = prod(info["shape"]) * DTYPE_BITS[info["dtype"]] // 8
        out[name] = {**info, "data_offsets": [pos, pos + size]}
        pos += size
    return write_sparse(path, out, pos)


def edit_shard(path: Path, edit: Callable[[dict[str, Any]], None]) -> Path:
    """Run `edit` on the header of shard `path` (a symlink into the fixture), then write
    the result laid out anew in place of the link."""
    header = raw_header(path)
    edit(header)
    return write_laid_out(path, header)


def convert_refused(model: Path, tmp_path: Path, *needles: str) -> str:
    """convert() fails with a SourceModelError whose message holds every needle, and
    leaves nothing at --out."""
    out = tmp_path / "out"
    with pytest.raises(SourceModelError) as info:
        quantkit.convert(
            model, out=out, format="gguf", quant="Q8_0", evaluation=EvalOptions(enabled=False)
        )
    message = str(info.value)
    for needle in needles:
        assert needle in message, f"{needle!r} not in {message!r}"
    for suffix in ("", ".partial", ".quarantine"):
        assert not out.with_name(out.name + suffix).exists(), f"out{suffix} was left"
    return message
