"""`quantkit doctor` on the command line: a table or one JSON object, exit 0 whatever is
missing, the user's own llama-server reported with its version, a failed
--build-llama-server as one error line and exit 9; and no heavy library imported."""

from __future__ import annotations

import json
import subprocess
import sys
from importlib import metadata
from pathlib import Path

import pytest
from support.cli_runner import run_cli
from support.llama_server import fake_server

from quantkit.runtime.llama_server import TOOLS, build_folder

HEAVY = ("torch", "transformers", "llama_cpp", "gguf", "llmcompressor", "mlx", "mlx_lm")






def test_json_lists_every_runtime_with_its_fields(no_server: Path) -> None:
    proc = run_cli("doctor", "--json")
    assert proc.returncode == 0, proc.stderr  # llama-server and vllm missing: still 0
    payload = json.loads(proc.stdout)
    assert set(payload) == {"runtimes"}
    rows = {row["name"]: row for row in payload["runtimes"]}
    assert all(set(row) == {"name", "available", "version", "detail"} for row in rows.values())
    assert rows["llama-cpp-python"]["available"] is True
    assert rows["llama-cpp-python"]["version"] == metadata.version("llama-cpp-python")
    assert rows["transformers"]["version"] == metadata.version("transformers")
    assert rows["llama-server"]["available"] is False
    assert rows["llama-server"]["version"] is None
    assert "--build-llama-server" in rows["llama-server"]["detail"]


def test_table_shows_your_own_build_and_its_version(no_server: Path, tmp_path: Path) -> None:
    binary = fake_server(tmp_path / "build" / "bin" / "llama-server")
    proc = run_cli("doctor", "--llama-server", binary, columns=200)
    assert proc.returncode == 0, proc.stderr
    line = next(ln for ln in proc.stdout.splitlines() if "llama-server " in ln)
    assert "1234 (abc)" in line and str(binary) in line and "--llama-server" in line
    llama = next(ln for ln in proc.stdout.splitlines() if "llama-cpp-python" in ln)
    assert metadata.version("llama-cpp-python") in llama


def test_a_non_executable_llama_server_is_reported_not_fatal(
    no_server: Path, tmp_path: Path
) -> None:
    plain = tmp_path / "llama-server"
    plain.write_text("not a program\n")
    plain.chmod(0o644)
    proc = run_cli("doctor", "--llama-server", plain, "--json")
    assert proc.returncode == 0, proc.stderr
    server = next(r for r in json.loads(proc.stdout)["runtimes"] if r["name"] == "llama-server")
    assert server == {
        "name": "llama-server",
        "available": False,
        "version": None,
        "detail": f"--llama-server {plain}: not an executable file.",
    }
    table = run_cli("doctor", "--llama-server", plain, columns=200)
    assert table.returncode == 0 and "not an executable file" in table.stdout
    assert "missing" in next(ln for ln in table.stdout.splitlines() if "llama-server " in ln)


def test_quiet_prints_nothing(no_server: Path) -> None:
    proc = run_cli("doctor", "--quiet")
    assert proc.returncode == 0 and proc.stdout == "" and proc.stderr == ""
    both = run_cli("doctor", "--quiet", "--json")
    assert json.loads(both.stdout)["runtimes"] and both.stderr == ""


def test_a_failed_build_is_one_error_line_and_exit_9(no_server: Path) -> None:
    """No cmake on PATH: the build stops before downloading anything."""
    proc = run_cli("doctor", "--build-llama-server")
    assert proc.returncode == 9, proc.stdout + proc.stderr
    assert "about 5 minutes on 2 cores" in proc.stdout
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: cannot build llama-server"), lines
    assert "Traceback" not in proc.stderr


def test_build_when_already_built_reports_it(no_server: Path) -> None:
    cached = fake_server(build_folder() / "bin" / "llama-server")  # QUANTKIT_CACHE is tmp
    for tool in TOOLS[1:]:  # the tools built beside it: all there, so nothing is built
        fake_server(build_folder() / "bin" / tool)
    proc = run_cli("doctor", "--build-llama-server", "--json")
    assert proc.returncode == 0, proc.stderr
    assert "about 5 minutes" in proc.stderr  # the human text goes to stderr with --json
    server = next(r for r in json.loads(proc.stdout)["runtimes"] if r["name"] == "llama-server")
    assert server["available"] and server["version"] == "1234 (abc)"
    assert server["detail"].startswith(f"{cached} (quantkit's build)")


_PROBE = """
import json, runpy, sys
heavy = {heavy!r}
if {blocked!r}:
    for name in heavy:
        sys.modules[name] = None  # importing it now raises ImportError, as if broken
sys.argv = ["quantkit", "doctor", "--json"]
try:
    runpy.run_module("quantkit", run_name="__main__")
except SystemExit as exc:
    code = exc.code
print(json.dumps({{"code": code, "imported": [m for m in heavy if sys.modules.get(m)]}}),
      file=sys.stderr)
"""


@pytest.mark.parametrize("blocked", [False, True], ids=["installed", "unimportable"])
def test_doctor_imports_no_heavy_library(no_server: Path, blocked: bool) -> None:
    """Fast, and working when a library is broken: versions come from package metadata, not
    from importing the library."""
    probe = _PROBE.format(heavy=HEAVY, blocked=blocked)
    proc = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, timeout=120
    )
    result = json.loads(proc.stderr.strip().splitlines()[-1])
    assert result == {"code": 0, "imported": []}, proc.stderr
    rows = {row["name"]: row for row in json.loads(proc.stdout)["runtimes"]}
    assert rows["torch"]["available"] is (not blocked)
    assert rows["torch"]["version"] == metadata.version("torch")
    if blocked:
        assert "`torch` is missing" in rows["torch"]["detail"]
