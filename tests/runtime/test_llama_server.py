"""quantkit.runtime.llama_server without a real server: a binary that dies at start or
never becomes healthy is an error that quotes it, and leaves no process behind. (The real
server is exercised in tests/inspection/test_server_checks.py.)"""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from quantkit.runtime.llama_server import (
    LlamaServer,
    LlamaServerError,
    ServerBinary,
    request_timeout_for,
    startup_timeout_for,
)


def script(path: Path, body: str) -> ServerBinary:
    path.write_text("#!/bin/sh\n" + body + "\n")
    path.chmod(path.stat().st_mode | stat.S_IXUSR)
    return ServerBinary(path, "--llama-server")


def test_a_server_that_dies_at_start_is_an_error_with_its_words(tmp_path: Path) -> None:
    binary = script(tmp_path / "srv", "echo 'error: failed to load model' >&2\nexit 1")
    model = tmp_path / "m.gguf"
    model.write_bytes(b"GGUF")
    with (
        pytest.raises(LlamaServerError, match="exited with code 1.*failed to load model"),
        LlamaServer(binary, model),
    ):
        pass


def test_a_server_that_never_becomes_healthy_is_stopped(tmp_path: Path) -> None:
    pid_file = tmp_path / "pid"
    binary = script(tmp_path / "srv", f"echo $$ > {pid_file}\nexec sleep 600")
    model = tmp_path / "m.gguf"
    model.write_bytes(b"GGUF")
    with (
        pytest.raises(LlamaServerError, match="did not become healthy within 1 s"),
        LlamaServer(binary, model, startup_timeout=1),
    ):
        pass
    pid = int(pid_file.read_text())
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)


def test_the_command_binds_loopback_with_jinja(tmp_path: Path) -> None:
    server = LlamaServer(ServerBinary(tmp_path / "srv", "PATH"), tmp_path / "m.gguf",
                         startup_timeout=5, request_timeout=5)  # fmt: skip
    server.port = 12345
    cmd = server.command()
    assert cmd[cmd.index("--host") + 1] == "127.0.0.1" and "--jinja" in cmd
    assert cmd[cmd.index("--port") + 1] == "12345"


def test_budgets_grow_with_the_weights() -> None:
    assert startup_timeout_for(0) == 15 and startup_timeout_for(40 * 10**9) == 415
    assert request_timeout_for(0) == 60 and request_timeout_for(4 * 10**9) == 460
