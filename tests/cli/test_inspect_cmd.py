"""`quantkit inspect` on the command line: a table or one JSON object, exit 0 when every
check passes, 11 (one line on stderr) when one fails, 3 for an unreadable artifact."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from support.cli_runner import run_cli
from support.gguf_corrupt import edited_copy, set_token_type


@pytest.fixture(scope="module")
def demo_gguf(demo_q8: Path) -> Path:
    return demo_q8  # the session's export of the demo as Q8_0 (read-only: copies are edited)


def test_passing_artifact_prints_a_table_and_exits_0(demo_gguf: Path, demo_model: Path) -> None:
    proc = run_cli("inspect", demo_gguf, "--against", demo_model, columns=200)
    assert proc.returncode == 0, proc.stderr
    assert "special tokens single ids" in proc.stdout and "pass" in proc.stdout
    assert "chat templates byte-identical" in proc.stdout
    assert "FAIL" not in proc.stdout
    assert "checks passed" in proc.stdout


def test_json_is_one_object(demo_gguf: Path) -> None:
    proc = run_cli("inspect", demo_gguf, "--json")
    assert proc.returncode == 0, proc.stderr
    payload = json.loads(proc.stdout)
    assert payload["passed"] is True and payload["kind"] == "gguf"
    assert payload["against"] is None
    assert all({"name", "passed", "evidence", "fatal"} <= set(c) for c in payload["checks"])


@pytest.mark.slow
def test_failing_artifact_exits_11_with_one_line(demo_gguf: Path, tmp_path: Path) -> None:
    bad = edited_copy(demo_gguf, tmp_path / "b.gguf", lambda f: set_token_type(f, "<think>", 3))
    proc = run_cli("inspect", bad, "--json")
    assert proc.returncode == 11
    payload = json.loads(proc.stdout)  # the report is still printed
    assert payload["passed"] is False
    assert [c["name"] for c in payload["checks"] if not c["passed"]] == [
        "token types follow the policy",
        "reasoning round trip",  # llama-server hides it too
    ]
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:"), proc.stderr
    assert "token types follow the policy" in lines[0]
    table = run_cli("inspect", bad, columns=200)
    assert table.returncode == 11 and "FAIL" in table.stdout


def test_unreadable_artifact_exits_3_without_traceback(tmp_path: Path) -> None:
    proc = run_cli("inspect", tmp_path / "nope.gguf")
    assert proc.returncode == 3
    assert "Traceback" not in proc.stderr and "does not exist" in proc.stderr
    (tmp_path / "notes.txt").write_text("x")
    proc = run_cli("inspect", tmp_path / "notes.txt")
    assert proc.returncode == 3 and "not a .gguf file" in proc.stderr


def test_against_a_file_is_refused(demo_gguf: Path) -> None:
    proc = run_cli("inspect", demo_gguf, "--against", demo_gguf)
    assert proc.returncode == 3 and "takes the source model's folder" in proc.stderr


def test_any_failed_check_exits_11(monkeypatch) -> None:
    """A failed non-fatal check (as "generation never stops") fails `inspect` too: exit 0
    only when every check passes; the table says FAIL, not warn."""
    from typer.testing import CliRunner

    import quantkit.inspection as inspection
    from quantkit.cli import app
    from quantkit.errors import VerificationError
    from quantkit.inspection import Check, InspectReport

    report = InspectReport(
        "x.gguf", "gguf", ("x.gguf",), None,
        (Check("a", True, "ok"), Check("greedy generation stops", False, "no eog", False)),
    )  # fmt: skip
    monkeypatch.setattr(inspection, "inspect", lambda *args, **kwargs: report)
    # In process: quantkit's main() turns the VerificationError into exit code 11.
    result = CliRunner().invoke(app, ["inspect", "x.gguf"], env={"COLUMNS": "200"})
    assert isinstance(result.exception, VerificationError) and result.exception.exit_code == 11
    assert "FAIL" in result.output and "warn" not in result.output
    result = CliRunner().invoke(app, ["inspect", "x.gguf", "--json"])
    assert isinstance(result.exception, VerificationError)
    payload = json.loads(result.stdout)
    assert payload["passed"] is False and payload["checks"][1]["fatal"] is False
