"""A server process quantkit starts for a check: bound to 127.0.0.1 on a free port, healthy
within a deadline, spoken to over HTTP with JSON, and always stopped.

llama-server (quantkit.runtime.llama_server) and vLLM's OpenAI server
(quantkit.runtime.vllm_server) are both run this way; a subclass says what to run
(`command()`), what it is called (`name`) and which error it raises (`error`).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from ..errors import QuantkitError

KEEP_LOGS = "QUANTKIT_KEEP_SERVER_LOGS"  # a folder: each server's whole log is copied there


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class LocalServer:
    """One server process for the length of a `with` block.

    Its output goes to a log file read by `log_text()`. The process runs in its own session,
    so a Ctrl-C at the terminal reaches quantkit alone, and the block's exit stops the whole
    process group in every case (vLLM starts an engine process of its own)."""

    name = "server"
    error: type[QuantkitError] = QuantkitError

    def __init__(self, *, startup_timeout: float, request_timeout: float) -> None:
        self.startup_timeout = startup_timeout
        self.request_timeout = request_timeout
        self.port = 0
        self._proc: subprocess.Popen | None = None
        self._logdir: tempfile.TemporaryDirectory | None = None

    def command(self) -> list[str]:
        raise NotImplementedError

    def environment(self) -> dict[str, str] | None:
        return None  # the caller's

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def __enter__(self) -> LocalServer:
        self._logdir = tempfile.TemporaryDirectory(prefix=f"quantkit-{self.name}-")
        try:
            self._start()
        except BaseException:
            self.__exit__()  # stopped, its log kept where asked, its folder removed
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
        keep = os.environ.get(KEEP_LOGS)
        if keep and self._logdir is not None and self.logfile.is_file():
            Path(keep).mkdir(parents=True, exist_ok=True)
            shutil.copy2(self.logfile, Path(keep) / f"{self.name}-{self.model_name()}.log")
        if self._logdir is not None:
            self._logdir.cleanup()
            self._logdir = None

    def _start(self) -> None:
        self.port = free_port()
        assert self._logdir is not None
        with self.logfile.open("wb") as out:
            self._proc = subprocess.Popen(
                self.command(),
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                env=self.environment(),
            )
        deadline = time.monotonic() + self.startup_timeout
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                raise self.error(
                    f"{self.name} exited with code {self._proc.returncode} while loading "
                    f"{self.model_name()}: {self.log_tail()}"
                )
            if self._healthy():
                return
            time.sleep(0.2)
        raise self.error(
            f"{self.name} did not become healthy within {self.startup_timeout:.0f} s: "
            f"{self.log_tail()}"
        )

    def model_name(self) -> str:
        return "the model"

    def _healthy(self) -> bool:
        try:
            with urllib.request.urlopen(self.url + "/health", timeout=2) as resp:
                return resp.status == 200
        except (urllib.error.URLError, OSError):
            return False

    @property
    def logfile(self) -> Path:
        assert self._logdir is not None
        return Path(self._logdir.name) / f"{self.name}.log"

    def log_text(self) -> str:
        try:
            return self.logfile.read_text(encoding="utf-8", errors="replace")
        except (OSError, AssertionError):
            return ""

    def log_tail(self, lines: int = 6) -> str:
        tail = [ln for ln in self.log_text().splitlines() if ln.strip()][-lines:]
        return " | ".join(tail) or "(no output)"

    def stop(self) -> None:
        proc, self._proc = self._proc, None
        if proc is not None and proc.poll() is None:
            try:
                os.killpg(proc.pid, signal.SIGTERM)
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
            except ProcessLookupError:
                pass

    # -- HTTP ------------------------------------------------------------------------

    def get(self, path: str) -> dict[str, Any]:
        try:
            with urllib.request.urlopen(self.url + path, timeout=self.request_timeout) as resp:
                return json.loads(resp.read())
        except (TimeoutError, urllib.error.URLError) as exc:
            raise self.error(f"{self.name} did not answer {path}: {exc}") from exc

    def post(self, path: str, body: dict[str, Any]) -> tuple[int, Any]:
        """(status, parsed JSON body); an HTTP error status is returned, not raised, since
        the server's refusals are evidence. No answer within `request_timeout` raises."""
        request = urllib.request.Request(
            self.url + path,
            data=json.dumps(body).encode(),
            headers={"Content-Type": "application/json"},
        )
        try:
            with urllib.request.urlopen(request, timeout=self.request_timeout) as resp:
                return resp.status, json.loads(resp.read())
        except TimeoutError as exc:
            raise self.error(
                f"{self.name} did not answer {path} within {self.request_timeout:.0f} s"
            ) from exc
        except urllib.error.HTTPError as exc:
            raw = exc.read()
            try:
                return exc.code, json.loads(raw)
            except ValueError:
                return exc.code, raw.decode(errors="replace")
        except urllib.error.URLError as exc:  # refused or reset: the server is gone
            raise self.error(
                f"{self.name} stopped answering ({exc.reason}): {self.log_tail()}"
            ) from exc
