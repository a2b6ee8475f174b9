"""The `quantkit` command, run as a user runs it: a subprocess of `python -m quantkit`."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from support.cli_runner import run_cli

USER_DEFINED, CONTROL = 4, 3  # gguf.TokenType
THINK_ID, END_THINK_ID, IM_END_ID = 49158, 49159, 2  # in the demo model's vocabulary
HEAVY_MODULES = ("torch", "llama_cpp", "transformers")


def imported_top_level(args: list[str]) -> set[str]:
    """Top-level modules a `python -X importtime ...` run imported."""
    proc = subprocess.run(
        [sys.executable, "-X", "importtime", *args], capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    names = set()
    for line in proc.stderr.splitlines():
        if line.startswith("import time:") and "|" in line:
            name = line.rsplit("|", 1)[1].strip()
            names.add(name.split(".")[0])
    assert "quantkit" in names  # the parse worked
    return names


def gguf_token_types(path: Path) -> list[int]:
    from support.gguf_reader import read_gguf  # GGUFReader takes seconds on a vocabulary

    return read_gguf(path).metadata["tokenizer.ggml.token_type"].tolist()


def assert_nothing_written(out: Path) -> None:
    for suffix in ("", ".partial", ".quarantine"):
        assert not out.with_name(out.name + suffix).exists(), f"{out.name}{suffix} exists"


# --- help and imports ---------------------------------------------------------------------


def test_help_lists_the_commands() -> None:
    proc = run_cli("--help")
    assert proc.returncode == 0, proc.stderr
    for command in ("convert", "plan", "profiles"):
        assert command in proc.stdout
    convert_help = run_cli("convert", "--help")
    assert convert_help.returncode == 0, convert_help.stderr
    flags = ("--out", "--profile", "--quant", "--dry-run", "--token-type", "--imatrix", "--json")
    for flag in flags:
        assert flag in convert_help.stdout


def test_importing_the_cli_imports_no_heavy_library() -> None:
    code = (
        "import json, sys, quantkit.cli; "
        f"print(json.dumps([m for m in {list(HEAVY_MODULES)!r} if m in sys.modules]))"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout) == []


@pytest.mark.parametrize("args", [["--help"], ["convert", "--help"]])
def test_help_imports_no_heavy_library(args: list[str]) -> None:
    names = imported_top_level(["-m", "quantkit", *args])
    assert not names & set(HEAVY_MODULES), sorted(names & set(HEAVY_MODULES))


# --- convert ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "target",
    [["--profile", "rtx4090-4bit"], ["--format", "gguf", "--quant", "Q4_K_M"]],
    ids=["profile", "format"],
)
def test_dry_run_prints_one_json_object_and_writes_nothing(
    demo_model: Path, tmp_path: Path, target: list[str]
) -> None:
    out = tmp_path / "out"
    proc = run_cli("convert", demo_model, *target, "--out", out, "--dry-run", "--json")
    assert proc.returncode == 0, proc.stderr
    payload = json.loads(proc.stdout)  # the whole of stdout is one JSON document
    assert isinstance(payload, dict)
    assert payload["dry_run"] is True
    assert payload["format"] == "gguf" and payload["quant"] == "Q4_K_M"
    assert payload["files"] == [] and payload["checks"] == [] and payload["out"] is None
    # Peak disk use: the Q4_K_M file (about 0.41 of the BF16 source here), with or without
    # the profile's importance matrix (computed from the shards: nothing is written for it
    # but the matrix itself).
    ratio = payload["estimated_bytes"] / payload["source"]["weight_bytes"]
    assert 0.4 < ratio < 0.5
    if "--profile" in target:
        assert payload["profile"] == "rtx4090-4bit"
        assert payload["plan"]["fit"] == "full"
        assert payload["plan"]["quant"] == "Q4_K_M"
    else:
        assert payload["plan"] is None
    assert list(tmp_path.iterdir()) == []


@pytest.mark.slow
def test_convert_json_writes_the_artifact_and_reports_it(demo_model: Path, tmp_path: Path) -> None:
    import hashlib

    out = tmp_path / "demo-q4"
    proc = run_cli("convert", demo_model, "--profile", "rtx4090-4bit", "--out", out, "--json")
    assert proc.returncode == 0, proc.stderr
    payload = json.loads(proc.stdout)
    assert payload["dry_run"] is False
    assert Path(payload["out"]).resolve() == out.resolve()
    record, matrix = payload["files"]  # the profile turns the importance matrix on
    assert (record["role"], matrix["role"]) == ("artifact", "imatrix")
    assert (out / matrix["name"]).is_file()
    assert record["imatrix"]["origin"] == "profile rtx4090-4bit"
    gguf_path = out / record["name"]
    assert record["name"] == f"{demo_model.name}-Q4_K_M.gguf"
    assert gguf_path.is_file() and record["bytes"] == gguf_path.stat().st_size
    assert record["sha256"] == hashlib.sha256(gguf_path.read_bytes()).hexdigest()
    assert record["tensor_types"]["Q4_K"] > 0
    names = [c["name"] for c in payload["checks"]]
    assert names == [  # the inspect battery against the source, generation, llama-server
        "special tokens single ids",
        "token types follow the policy",
        "turn end is end-of-generation",
        "BOS and PAD tokens",
        "chat templates byte-identical",
        "chat templates render identically",
        "tokenization parity",
        "rope_freqs",
        "greedy generation stops",
        "llama-server uses the artifact's template",
        "tool-call round trip",
        "reasoning round trip",
    ]
    assert all(c["passed"] for c in payload["checks"]), payload["checks"]
    assert payload["plan"]["profile"] == "rtx4090-4bit"
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["files"] == payload["files"]
    assert manifest["checks"] == payload["checks"]
    assert not out.with_name(out.name + ".partial").exists()


def test_token_type_override_reaches_the_gguf(demo_model: Path, tmp_path: Path) -> None:
    out = tmp_path / "q8"
    proc = run_cli(
        "convert", demo_model, "--format", "gguf", "--quant", "Q8_0", "--out", out,
        "--no-verify", "--token-type", "<think>=control", "--json",
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    payload = json.loads(proc.stdout)
    assert payload["checks"] == []  # --no-verify
    types = gguf_token_types(out / payload["files"][0]["name"])
    assert types[THINK_ID] == CONTROL
    # Only the named token changed: the policy still holds for the others.
    assert types[END_THINK_ID] == USER_DEFINED
    assert types[IM_END_ID] == CONTROL


def test_malformed_token_type_fails_and_writes_nothing(demo_model: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    proc = run_cli(
        "convert", demo_model, "--format", "gguf", "--quant", "Q8_0", "--out", out,
        "--token-type", "think",
    )  # fmt: skip
    assert proc.returncode != 0
    assert "TOKEN=TYPE" in proc.stderr
    assert_nothing_written(out)


def test_unknown_token_type_kind_is_one_line_error(demo_model: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    proc = run_cli(
        "convert", demo_model, "--format", "gguf", "--quant", "Q8_0", "--out", out,
        "--token-type", "<think>=bogus",
    )  # fmt: skip
    assert proc.returncode != 0
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:"), proc.stderr
    assert "bogus" in lines[0] and "control" in lines[0]
    assert_nothing_written(out)


@pytest.mark.parametrize(
    "args",
    [
        ["--format", "gguf", "--out", "OUT", "--token-type", "think"],  # BadParameter
        ["--format", "gguf"],  # missing --out
        ["--format", "gguf", "--out", "OUT", "--no-such-flag"],  # unknown option
    ],
    ids=["malformed-token-type", "missing-out", "unknown-option"],
)
def test_usage_errors_are_usage_messages(demo_model: Path, tmp_path: Path, args) -> None:
    args = [str(tmp_path / "out") if a == "OUT" else a for a in args]
    proc = run_cli("convert", demo_model, *args)
    assert "Traceback" not in proc.stderr, proc.stderr[-1500:]
    assert proc.returncode == 2  # click's usage-error code
    assert "Usage:" in proc.stderr or "Error" in proc.stderr
    assert_nothing_written(tmp_path / "out")


def test_human_output_prints_evidence_verbatim(
    demo_model: Path, tmp_path: Path, monkeypatch
) -> None:
    from typer.testing import CliRunner

    import quantkit.inspection.convert_checks
    from quantkit.cli import app
    from quantkit.inspection.check import Check

    evidence = "said '[/INST] [b]ok'"

    def fake_checks(path, source, **kwargs):
        return [Check("greedy generation stops", True, evidence, False)]

    monkeypatch.setattr(quantkit.inspection.convert_checks, "check_gguf", fake_checks)
    monkeypatch.setenv("COLUMNS", "200")  # no wrapping inside the table cell
    out = tmp_path / "q8"
    result = CliRunner().invoke(
        app, ["convert", str(demo_model), "--format", "gguf", "--quant", "Q8_0", "--out",
              str(out), "--no-eval"],
    )  # fmt: skip
    assert out.is_dir()  # the artifact itself was fine
    assert result.exception is None, repr(result.exception)
    assert result.exit_code == 0
    assert "[/INST] [b]ok" in result.output.replace("\n", "")
