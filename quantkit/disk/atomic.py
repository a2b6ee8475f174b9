"""Atomic writes: build in a sibling `<name>.partial`, rename into place at the end.

A rename within one folder is atomic, so a reader sees the old file or folder, or the
finished new one, never half of one; an exception (Ctrl-C included: KeyboardInterrupt is a
BaseException) removes the `.partial` and leaves the target as it was.

    with building_folder(out) as work:      # work = <out>.partial, fresh and empty
        write_everything_into(work)
    # out now exists; on an exception neither out (if new) nor <out>.partial does

    with building_file(path) as tmp:        # tmp = <path>.partial
        tmp.write_bytes(data)

An artifact whose checks failed is kept for a post-mortem: `quarantine(work, out)` renames
the work folder to `<out>.quarantine` (inside `building_folder` too: the block then has
nothing left to rename or remove).
"""

from __future__ import annotations

import logging
import os
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

log = logging.getLogger(__name__)

PARTIAL_SUFFIX = ".partial"
QUARANTINE_SUFFIX = ".quarantine"


def partial_path(target: Path, *, per_process: bool = False) -> Path:
    """`<target>.partial` beside `target`; `<target>.<pid>.partial` with `per_process`, for
    files that several processes may write at once (shared caches)."""
    target = Path(target)
    middle = f".{os.getpid()}" if per_process else ""
    return target.with_name(f"{target.name}{middle}{PARTIAL_SUFFIX}")


def quarantine_path(out: Path) -> Path:
    out = Path(out)
    return out.with_name(out.name + QUARANTINE_SUFFIX)


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


@contextmanager
def building_folder(target: Path, *, replace: bool = True) -> Iterator[Path]:
    """Yield an empty `<target>.partial` folder (its parents created; one left by a crashed
    run is removed first); rename it to `target` when the block ends normally, removing an
    earlier `target` first when `replace` (without it, an existing non-empty `target` makes
    the rename fail with OSError). Any exception removes the `.partial` and propagates.
    If the block moved the folder away (`quarantine`), nothing is renamed."""
    target = Path(target)
    work = partial_path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    if work.exists() or work.is_symlink():
        log.warning("Removing %s left by an interrupted run", work)
        _remove(work)
    work.mkdir()
    try:
        yield work
    except BaseException:
        _remove(work)
        raise
    if not work.exists():
        return  # quarantined (or otherwise moved) by the block: nothing to commit
    try:
        if replace and (target.exists() or target.is_symlink()):
            _remove(target)
        work.rename(target)
    except BaseException:
        _remove(work)
        raise


@contextmanager
def building_file(target: Path, *, per_process: bool = False) -> Iterator[Path]:
    """Yield the path `<target>.partial` (nothing created there; parents are) for the block
    to write; `os.replace` it onto `target` when the block ends normally. Any exception
    removes the partial file and propagates. `per_process` names it `<target>.<pid>.partial`
    for files other processes may write at the same moment (shared caches)."""
    target = Path(target)
    tmp = partial_path(target, per_process=per_process)
    target.parent.mkdir(parents=True, exist_ok=True)
    try:
        yield tmp
        os.replace(tmp, target)
    except BaseException:
        _remove(tmp)
        raise


def quarantine(work: Path, out: Path) -> Path:
    """Rename the work folder `work` to `<out>.quarantine` (replacing an earlier one) and
    return that path: a failed artifact is kept to look at, under a name that does not
    look finished."""
    target = quarantine_path(out)
    if target.exists() or target.is_symlink():
        _remove(target)
    Path(work).rename(target)
    return target
