"""A machine without llama-server, and a stand-in binary that answers `--version` as
llama-server does: for the doctor and lookup tests (the real server is
tests/inspection/test_server_checks.py's)."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest

from quantkit.runtime.llama_server import ENV_VAR


@pytest.fixture
def no_server(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """No llama-server anywhere: no QUANTKIT_LLAMA_SERVER, an empty cache, a PATH with
    nothing on it (no cmake either). Returns the PATH folder, where a test may put one.
    CLI runs inherit this environment."""
    monkeypatch.delenv(ENV_VAR, raising=False)
    monkeypatch.setenv("QUANTKIT_CACHE", str(tmp_path / "cache"))
    on_path = tmp_path / "bin"
    on_path.mkdir()
    monkeypatch.setenv("PATH", str(on_path))
    return on_path


def fake_server(path: Path, *, output: str = "version: 1234 (abc)") -> Path:
    """An executable that answers --version as llama-server does (on stderr)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(
        f"#!/bin/sh\necho 'load_backend: loaded CPU backend' >&2\necho '{output}' >&2\n"
    )
    path.chmod(path.stat().st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)
    return path
