"""The checks `quantkit convert` runs before it reads a weight: the output path, and the
free disk space against the peak the conversion needs."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from ..errors import DiskSpaceError, OutputPathError

DISK_MARGIN = 1.05  # a little room for metadata and filesystem overhead


def check_output_path(out_dir: Path, model: str | Path) -> None:
    if out_dir.exists():
        raise OutputPathError(
            f"{out_dir} already exists.",
            hint="Choose a new --out folder, or remove the old one first.",
        )
    src = Path(model).expanduser()
    if src.exists() and out_dir.resolve().is_relative_to(src.resolve()):
        raise OutputPathError(f"{out_dir} is inside the source model folder {src}.")
    anchor = existing_ancestor(out_dir)
    if not anchor.is_dir() or not os.access(anchor, os.W_OK):
        raise OutputPathError(
            f"Cannot create {out_dir}: {anchor} is not a writable folder.",
            hint="Choose an --out path in a folder you can write to.",
        )


def existing_ancestor(path: Path) -> Path:
    for candidate in (path.resolve(), *path.resolve().parents):
        if candidate.exists():
            return candidate
    return Path("/")


def check_disk_space(out_dir: Path, needed: int) -> None:
    free = shutil.disk_usage(existing_ancestor(out_dir)).free
    if free < needed:
        raise DiskSpaceError(
            f"{out_dir.parent} has {free / 1e9:.2f} GB free; this conversion needs about "
            f"{needed / 1e9:.2f} GB.",
            hint="Free some space or choose an --out folder on a larger disk.",
        )
