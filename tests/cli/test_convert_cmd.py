"""`quantkit convert`'s MLX flags: --format mlx --quant 4bit and --mlx-group-size reach the
backend (dry runs, no weights read), bad values fail with one line, and a real run."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from support.cli_runner import run_cli


def test_help_lists_the_mlx_flags():
    proc = run_cli("convert", "--help", columns=200)
    assert proc.returncode == 0
    assert "--mlx-group-size" in proc.stdout and "mixed_4_6" in proc.stdout


def test_mlx_dry_run(demo_model: Path, tmp_path: Path):
    pytest.importorskip("mlx_lm")
    out = tmp_path / "out"
    args = ("--format", "mlx", "--quant", "MIXED_3_6", "--mlx-group-size", "32")
    proc = run_cli("convert", demo_model, *args, "--out", out, "--dry-run", "--json")
    assert proc.returncode == 0, proc.stderr
    payload = json.loads(proc.stdout)
    assert (payload["format"], payload["quant"]) == ("mlx", "mixed_3_6")
    assert 0 < payload["estimated_bytes"] < payload["source"]["weight_bytes"]
    proc = run_cli("convert", demo_model, "--profile", "mac-m3max-128gb-mlx", "--out", out,
                   "--dry-run", "--json")  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    plan = json.loads(proc.stdout)["plan"]
    assert plan["command"].startswith("mlx_lm.server --model ./") and plan["quant"] == "4bit"
    assert not out.exists()


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("--quant", "4bit", "--mlx-group-size", "48"), "group size must be one of 32, 64, 128"),
        (("--quant", "Q4_K_M"), "Unknown MLX quant 'Q4_K_M'"),
    ],
)
def test_bad_mlx_flags_fail_in_one_line(demo_model: Path, tmp_path: Path, args, message):
    proc = run_cli("convert", demo_model, "--format", "mlx", *args, "--out", tmp_path / "o")
    assert proc.returncode == 1
    assert message in proc.stderr and "Traceback" not in proc.stderr


@pytest.mark.slow
def test_mlx_convert_json(demo_model: Path, tmp_path: Path):
    pytest.importorskip("mlx_lm")
    out = tmp_path / "demo-mlx"
    proc = run_cli("convert", demo_model, "--format", "mlx", "--quant", "4bit", "--out", out,
                   "--no-verify", "--json")  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    payload = json.loads(proc.stdout)  # mlx-lm's own prints stay off stdout
    assert payload["files"][0]["name"] == "model.safetensors"
    assert (out / "config.json").is_file() and (out / "manifest.json").is_file()
