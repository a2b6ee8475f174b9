"""The evaluation's file hashes: remembered by (path, size, mtime), computed on a
low-priority background thread while a convert builds, picked up by whoever asks; the
thread itself writes nothing."""

from __future__ import annotations

import hashlib
import os
import threading
from pathlib import Path

import pytest

from quantkit.evaluation import file_hashes
from quantkit.evaluation.file_hashes import file_sha256, hash_in_background


@pytest.fixture()
def cache(tmp_path: Path, monkeypatch) -> Path:
    folder = tmp_path / "cache"
    monkeypatch.setenv("QUANTKIT_CACHE", str(folder))
    return folder


def _files(tmp_path: Path) -> list[Path]:
    files = []
    for i, size in enumerate((0, 1, 40 << 20)):
        path = tmp_path / f"f{i}.bin"
        path.write_bytes(os.urandom(size))
        files.append(path)
    return files


def test_background_digests_are_the_files_and_only_the_asker_writes(cache: Path, tmp_path) -> None:
    files = _files(tmp_path)
    hash_in_background(files)
    pending = [file_hashes._pending[file_hashes._memo_key(p)] for p in files]
    for future in pending:
        future.result(timeout=60)  # computed, not yet asked for
    assert not (cache / "file-hashes.json").exists()
    for path in files:
        assert file_sha256(path) == hashlib.sha256(path.read_bytes()).hexdigest()
    assert (cache / "file-hashes.json").is_file()
    assert not any(file_hashes._memo_key(p) in file_hashes._pending for p in files)
    # remembered: a second background request starts nothing
    hash_in_background(files)
    assert not any(file_hashes._memo_key(p) in file_hashes._pending for p in files)


def test_a_changed_file_is_hashed_again(cache: Path, tmp_path: Path) -> None:
    path = tmp_path / "f.bin"
    path.write_bytes(b"one")
    assert file_sha256(path) == hashlib.sha256(b"one").hexdigest()
    path.write_bytes(b"three")  # another size (and mtime): another key
    assert file_sha256(path) == hashlib.sha256(b"three").hexdigest()


def test_an_error_in_the_background_reaches_the_asker(cache: Path, tmp_path, monkeypatch) -> None:
    path = tmp_path / "f.bin"
    path.write_bytes(b"x")

    def unreadable(_path: Path) -> str:
        raise OSError("read failed")

    monkeypatch.setattr(file_hashes, "_sha256", unreadable)
    hash_in_background([path])
    with pytest.raises(OSError, match="read failed"):
        file_sha256(path)
    assert not (cache / "file-hashes.json").exists()


def test_the_hashing_thread_runs_at_the_lowest_priority() -> None:
    seen = {}

    def probe() -> None:
        file_hashes._lowest_priority()
        seen["nice"] = os.getpriority(os.PRIO_PROCESS, threading.get_native_id())

    thread = threading.Thread(target=probe)
    thread.start()
    thread.join()
    assert seen["nice"] == 19
    assert os.getpriority(os.PRIO_PROCESS, 0) < 19  # the process itself is untouched
