"""quantkit.disk: the one cache folder every cache uses, and the atomic-write helpers (an
exception, Ctrl-C included, leaves neither a `.partial` nor a half-made target)."""

from __future__ import annotations

from pathlib import Path

import pytest

from quantkit.disk.atomic import (
    building_file,
    building_folder,
    partial_path,
    quarantine,
    quarantine_path,
)
from quantkit.disk.cache import cache_dir


class Boom(Exception):
    pass


# --- the cache folder ------------------------------------------------------------------


def test_cache_dir_follows_the_environment(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("QUANTKIT_CACHE", str(tmp_path / "c"))
    assert cache_dir() == tmp_path / "c"
    assert cache_dir("a", "b.json") == tmp_path / "c" / "a" / "b.json"
    monkeypatch.delenv("QUANTKIT_CACHE")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert cache_dir() == tmp_path / "home" / ".cache" / "quantkit"
    assert not cache_dir().exists()  # asking does not create it


def test_every_cache_lives_in_the_one_cache_dir(tmp_path: Path, monkeypatch) -> None:
    from quantkit.evaluation import file_hashes, reference_cache

    monkeypatch.setenv("QUANTKIT_CACHE", str(tmp_path / "c"))
    assert file_hashes.cache_dir() == cache_dir() == reference_cache.cache_dir()
    assert reference_cache.reference_path("k").is_relative_to(cache_dir())


# --- folders ---------------------------------------------------------------------------


def test_folder_is_built_aside_then_renamed(tmp_path: Path) -> None:
    out = tmp_path / "sub" / "out"
    with building_folder(out) as work:
        assert work == partial_path(out) == tmp_path / "sub" / "out.partial"
        assert work.is_dir() and not out.exists()
        (work / "f").write_text("x")
    assert (out / "f").read_text() == "x" and not partial_path(out).exists()


def test_folder_replaces_an_earlier_one_only_when_done(tmp_path: Path) -> None:
    out = tmp_path / "out"
    out.mkdir()
    (out / "old").write_text("old")
    with pytest.raises(Boom), building_folder(out) as work:
        (work / "new").write_text("new")
        raise Boom
    assert (out / "old").is_file() and not partial_path(out).exists()
    with building_folder(out) as work:
        (work / "new").write_text("new")
    assert sorted(p.name for p in out.iterdir()) == ["new"]


@pytest.mark.parametrize("error", [Boom, KeyboardInterrupt])
def test_folder_failure_leaves_nothing(tmp_path: Path, error) -> None:
    out = tmp_path / "out"
    with pytest.raises(error), building_folder(out) as work:
        (work / "half").write_text("half")
        raise error
    assert not out.exists() and not partial_path(out).exists()


def test_leftover_partial_is_replaced(tmp_path: Path) -> None:
    out = tmp_path / "out"
    partial_path(out).mkdir()
    (partial_path(out) / "stale").write_text("x")
    with building_folder(out) as work:
        assert not any(work.iterdir())
    assert out.is_dir() and not (out / "stale").exists()


def test_quarantine_inside_the_block(tmp_path: Path) -> None:
    out = tmp_path / "out"
    quarantine_path(out).mkdir()  # an earlier failure's, replaced
    with pytest.raises(Boom), building_folder(out) as work:
        (work / "bad").write_text("bad")
        kept = quarantine(work, out)
        raise Boom
    assert kept == tmp_path / "out.quarantine" and (kept / "bad").is_file()
    assert not out.exists() and not partial_path(out).exists()


# --- files -----------------------------------------------------------------------------


def test_file_is_written_aside_then_replaced(tmp_path: Path) -> None:
    target = tmp_path / "d" / "f.json"
    with building_file(target) as tmp:
        assert tmp == tmp_path / "d" / "f.json.partial"
        tmp.write_text("1")
    with building_file(target, per_process=True) as tmp:
        assert tmp.name.endswith(".partial") and tmp.name != "f.json.partial"
        tmp.write_text("2")
    assert target.read_text() == "2"
    assert [p.name for p in target.parent.iterdir()] == ["f.json"]


@pytest.mark.parametrize("error", [Boom, KeyboardInterrupt])
def test_file_failure_leaves_the_old_file(tmp_path: Path, error) -> None:
    target = tmp_path / "f"
    target.write_text("old")
    with pytest.raises(error), building_file(target) as tmp:
        tmp.write_text("half")
        raise error
    assert target.read_text() == "old" and not partial_path(target).exists()
    fresh = tmp_path / "g"
    with pytest.raises(error), building_file(fresh) as tmp:
        tmp.write_text("half")
        raise error
    assert not fresh.exists() and not partial_path(fresh).exists()


# --- one builder at a time -----------------------------------------------------------


def test_a_second_builder_waits_for_the_first(tmp_path: Path) -> None:
    """flock locks belong to an open file, so a second open in a thread contends like a
    second process would (two test workers building one fixture)."""
    import threading

    from quantkit.disk.lock import exclusive

    target = tmp_path / "sub" / "model"
    acquired = threading.Event()

    def second() -> None:
        with exclusive(target):
            acquired.set()

    with exclusive(target):
        assert (tmp_path / "sub" / "model.lock").is_file() and not target.exists()
        thread = threading.Thread(target=second)
        thread.start()
        assert not acquired.wait(0.5)  # held here, so it cannot have it
    assert acquired.wait(10)
    thread.join()
