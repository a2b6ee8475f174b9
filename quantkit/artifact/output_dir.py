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


def check_download_space(cache: Path, download: int, out_dir: Path, needed: int) -> None:
    """Room for a Hub source's weights in the Hugging Face cache (`download` bytes still to
    fetch), checked before the download starts; on the output's disk too, the two add up."""
    where = existing_ancestor(cache)
    free = shutil.disk_usage(where).free
    shared = where.stat().st_dev == existing_ancestor(out_dir).stat().st_dev
    total = download + (needed if shared else 0)
    if free < total:
        also = f" and {needed / 1e9:.2f} GB for the conversion on the same disk" if shared else ""
        raise DiskSpaceError(
            f"The Hugging Face cache ({cache}) has {free / 1e9:.2f} GB free; the model's "
            f"weights need {download / 1e9:.2f} GB more{also}.",
            hint="Free some space, or point HF_HOME at a larger disk (the download starts "
            "only once there is room).",
        )


def check_disk_space(out_dir: Path, needed: int) -> None:
    free = shutil.disk_usage(existing_ancestor(out_dir)).free
    if free < needed:
        raise DiskSpaceError(
            f"{out_dir.parent} has {free / 1e9:.2f} GB free; this conversion needs about "
            f"{needed / 1e9:.2f} GB.",
            hint="Free some space or choose an --out folder on a larger disk.",
        )
