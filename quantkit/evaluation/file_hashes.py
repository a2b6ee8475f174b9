"""Content hashes of the files an evaluation is keyed by (the reference cache's source
fingerprint, an artifact's), remembered in QUANTKIT_CACHE/file-hashes.json by (path, size,
mtime) so a 40 GB source is read once, not at every evaluation.

A convert that evaluates starts hashing its source on a background thread of the lowest
priority as soon as it begins (`hash_in_background`): the conversion's stages leave a core
idle part of the time, and the hash (28 s for the 8B shape's 16 GB on the reference
machine, read back from disk) is ready when the evaluation asks for it. The thread only
computes; the memo file is written by whoever asks (`file_sha256`), so an interrupted
convert leaves no half-written file behind.
"""

from __future__ import annotations

import contextlib
import json
import os
import threading
from collections.abc import Iterable
from concurrent.futures import Future
from pathlib import Path

from ..disk.atomic import building_file
from ..disk.cache import cache_dir

_pending: dict[str, Future] = {}  # memo key -> the background thread's digest
_memo_lock = threading.Lock()


def file_sha256(path: Path) -> str:
    """sha256 of a file: remembered, being computed in the background, or computed now."""
    key = _memo_key(path)
    memo = _read_memo()
    if key in memo:
        return memo[key]
    pending = _pending.pop(key, None)
    digest = pending.result() if pending is not None else _sha256(path)
    with _memo_lock:
        memo = _read_memo()
        memo[key] = digest
        with building_file(_memo_path(), per_process=True) as tmp:  # other processes write too
            tmp.write_text(json.dumps(memo, indent=0, sort_keys=True), encoding="utf-8")
    return digest


def hash_in_background(paths: Iterable[Path]) -> None:
    """Start hashing those of `paths` not yet remembered, one after another, on a daemon
    thread at the lowest priority (a daemon: a convert that stops early does not wait)."""
    memo = _read_memo()
    todo = []
    for path in paths:
        key = _memo_key(path)
        if key not in memo and key not in _pending:
            _pending[key] = Future()
            todo.append((path, _pending[key]))
    if todo:
        threading.Thread(target=_hash_all, args=(todo,), name="quantkit-hash", daemon=True).start()


def _hash_all(todo: list[tuple[Path, Future]]) -> None:
    _lowest_priority()
    for path, future in todo:
        try:
            future.set_result(_sha256(path))
        except BaseException as exc:  # the asker gets the error
            future.set_exception(exc)


def _lowest_priority() -> None:
    """Nice 19 for this thread alone (Linux applies setpriority to a thread id)."""
    with contextlib.suppress(AttributeError, OSError):
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), 19)


def _sha256(path: Path) -> str:
    from ..artifact.manifest import sha256_file

    return sha256_file(path)


def _memo_key(path: Path) -> str:
    stat = path.stat()
    return f"{path.resolve()}|{stat.st_size}|{stat.st_mtime_ns}"


def _memo_path() -> Path:
    return cache_dir() / "file-hashes.json"


def _read_memo() -> dict[str, str]:
    try:
        return json.loads(_memo_path().read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
