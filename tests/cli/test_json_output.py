"""Every command's --json prints one JSON object with exactly the top-level keys docs/json.md
documents, and --quiet prints nothing but errors."""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from pathlib import Path

import pytest
import typer.main
from support.cli_runner import run_cli

from quantkit.cli import app

DOC = Path(__file__).resolve().parents[2] / "docs" / "json.md"


def documented_keys() -> dict[str, set[str]]:
    """Section heading (the command line after `quantkit `) -> its top-level keys: the
    backticked names in the first cell of its key table that are not nested (no . or [])."""
    sections: dict[str, set[str]] = {}
    current = None
    for line in DOC.read_text(encoding="utf-8").splitlines():
        heading = re.match(r"^## `quantkit (.+?)`", line)
        if heading:
            current = heading[1]
            sections[current] = set()
        elif current and line.startswith("| `"):
            for key in re.findall(r"`([^`]+)`", line.split("|")[1]):
                if not re.search(r"[.\[]", key):
                    sections[current].add(key)
    return sections


def _eval_args(fx: Callable[[str], Path]) -> list[object]:
    gguf = next(fx("demo_artifact_cached").glob("*.gguf"))
    return ["eval", gguf, "--against", fx("demo_model"), "--max-chunks", "1", "--no-gate"]


# How each documented section is run, with the fixtures it needs (by name).
RUNS: dict[str, Callable[[Callable[[str], Path]], list[object]]] = {
    "profiles --json": lambda fx: ["profiles"],
    "plan MODEL --profile NAME --json": lambda fx: [
        "plan", fx("demo_model"), "--profile", "rtx4090-4bit",
    ],
    "plan MODEL --all --json": lambda fx: ["plan", fx("demo_model"), "--all"],
    "demo-model --json": lambda fx: ["demo-model", "--out", fx("demo_model")],
    "convert MODEL --out DIR --json": lambda fx: [
        "convert", fx("demo_model"), "-p", "rtx4090-4bit", "--out", fx("tmp_path") / "o",
        "--dry-run",
    ],
    "eval ARTIFACT --against SOURCE --json": _eval_args,
    "inspect ARTIFACT --json": lambda fx: [
        "inspect", next(fx("demo_artifact_cached").glob("*.gguf")),
    ],
    "upload ARTIFACT --repo OWNER/NAME --json": lambda fx: [
        "upload", fx("demo_artifact"), "--repo", "alice/demo-GGUF", "--dry-run",
    ],
    "doctor --json": lambda fx: ["doctor"],
}  # fmt: skip
SLOW = {"eval ARTIFACT --against SOURCE --json"}  # a real measurement, a few seconds


def test_every_command_is_documented() -> None:
    commands = set(typer.main.get_command(app).commands)
    documented = {heading.split()[0] for heading in documented_keys()}
    assert documented == commands
    assert set(documented_keys()) == set(RUNS)


@pytest.mark.parametrize(
    "section",
    [pytest.param(s, marks=[pytest.mark.slow] if s in SLOW else []) for s in RUNS],
)
def test_json_has_the_documented_keys(section: str, request: pytest.FixtureRequest) -> None:
    args = RUNS[section](request.getfixturevalue)
    proc = run_cli(*args, "--json")
    assert proc.returncode == 0, proc.stderr[-2000:]
    payload = json.loads(proc.stdout)  # the whole of stdout is the one object
    assert set(payload) == documented_keys()[section]


@pytest.mark.parametrize(
    "section", [s for s in RUNS if s not in SLOW and not s.startswith("upload")]
)
def test_quiet_prints_nothing(section: str, request: pytest.FixtureRequest) -> None:
    args = RUNS[section](request.getfixturevalue)
    proc = run_cli(*args, "--quiet")
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout == "" and proc.stderr == ""
    both = run_cli(*args, "--quiet", "--json")
    assert json.loads(both.stdout) and both.stderr == ""


def test_quiet_still_prints_errors(tmp_path: Path) -> None:
    proc = run_cli("plan", tmp_path / "nowhere", "--quiet")
    assert proc.returncode != 0 and proc.stdout == ""
    assert proc.stderr.startswith("error:")
