"""`--quant auto` from the command line: every bad budget, recipe or flag combination fails
in one line before any weight is read (the output folder is never made), and `quantkit
plan --quant auto` shows the budget and the starting mix."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from support.cli_runner import run_cli


def _fails(proc, code: int, message: str) -> None:
    assert proc.returncode == code, proc.stderr
    assert message in proc.stderr and "Traceback" not in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1


@pytest.mark.parametrize(
    ("args", "code", "message"),
    [
        (("--format", "gguf", "--quant", "auto"), 8, "--quant auto needs a budget to fill"),
        (("--format", "gguf", "--quant", "Q4_K_M", "--max-size", "1GB"), 1,
         "--max-size applies to --quant auto, not Q4_K_M"),
        (("--format", "gguf", "--quant", "auto", "--max-size", "1GB", "--bpw", "4"), 8,
         "not both"),
        (("--format", "gguf", "--quant", "auto", "--max-size", "lots"), 8,
         "Cannot read the size 'lots'"),
        (("--profile", "a100-fp8", "--quant", "auto"), 1, "it makes GGUF files, not fp8"),
        (("--format", "gguf", "--quant", "auto", "--max-size", "20MB"), 8,
         "is below the smallest mix"),
        (("--format", "gguf", "--quant", "auto", "--max-size", "1GB", "--imatrix", "none"), 18,
         "--quant auto needs an importance matrix"),
    ],
)  # fmt: skip
def test_bad_auto_flags_fail_before_any_weight(demo_model, tmp_path, args, code, message):
    out = tmp_path / "out"
    _fails(run_cli("convert", demo_model, *args, "--out", out), code, message)
    assert not out.exists() and not Path(f"{out}.partial").exists()


def _write_preview_recipe(model: Path, path: Path, **changes) -> Path:
    from quantkit.formats.gguf_recipe import write_recipe
    from quantkit.planning.budget import FILE, Budget
    from quantkit.planning.mix import preview_recipe
    from quantkit.planning.planner import load_spec

    recipe = preview_recipe(load_spec(str(model)), Budget(10**9, FILE, "test"))
    for key, value in changes.items():
        object.__setattr__(recipe, key, value)
    json_path, _ = write_recipe(recipe, path, "made")
    return json_path


def test_a_recipe_from_another_architecture_is_refused(demo_model, qwen3_model, tmp_path):
    recipe = _write_preview_recipe(qwen3_model, tmp_path)
    out = tmp_path / "out"
    proc = run_cli("convert", demo_model, "--format", "gguf", "--recipe", recipe, "--out", out)
    _fails(proc, 19, "The recipe is for qwen3 models; this model is llama")
    assert not out.exists()


def test_a_recipe_for_another_shape_is_refused(demo_model, llama31_model, tmp_path):
    recipe = _write_preview_recipe(llama31_model, tmp_path)
    out = tmp_path / "out"
    proc = run_cli("convert", demo_model, "--format", "gguf", "--recipe", recipe, "--out", out)
    _fails(proc, 19, "it was made for another model shape")


def test_a_recipe_with_a_budget_flag_is_refused(demo_model, tmp_path):
    recipe = _write_preview_recipe(demo_model, tmp_path)
    proc = run_cli("convert", demo_model, "--format", "gguf", "--recipe", recipe,
                   "--max-size", "1GB", "--out", tmp_path / "o")  # fmt: skip
    _fails(proc, 1, "--recipe brings its own types; --max-size would be ignored")


def test_a_recipe_dry_run_names_the_quant(demo_model, tmp_path):
    recipe = _write_preview_recipe(demo_model, tmp_path)
    proc = run_cli("convert", demo_model, "--format", "gguf", "--recipe", recipe, "--dry-run",
                   "--json", "--out", tmp_path / "o")  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["quant"] == "AUTO"


@pytest.mark.parametrize(("args", "q8_files"), [((), 2), (("--auto-probe-chunks", "0"), 1)])
def test_the_disk_check_counts_the_probe_files(demo_model, tmp_path, args, q8_files):
    """Probing needs two Q8_0 sizes at once (probes.py; no BF16 file); without probes, one
    Q8_0 size bounds the file."""
    from quantkit.artifact.output_dir import DISK_MARGIN
    from quantkit.planning.memory import gguf_file_bytes
    from quantkit.planning.model_spec import spec_from_source
    from quantkit.source.model import load_source

    proc = run_cli("convert", demo_model, "--format", "gguf", "--quant", "auto", "--max-size",
                   "100MB", *args, "--dry-run", "--json", "--out", tmp_path / "o")  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    spec = spec_from_source(load_source(demo_model))
    bytes_ = q8_files * gguf_file_bytes(spec, "Q8_0")
    assert json.loads(proc.stdout)["estimated_bytes"] == int(bytes_ * DISK_MARGIN)


def test_plan_shows_the_budget_and_the_starting_mix(demo_model):
    proc = run_cli("plan", demo_model, "--profile", "cpu-64gb", "--quant", "auto",
                   "--max-size", "90MB", "--json")  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    auto = json.loads(proc.stdout)["auto"]
    assert auto["budget"] == {"bytes": 90_000_000, "scope": "file", "origin": "--max-size 90MB"}
    assert 0.97 * 90e6 <= auto["expected_bytes"] <= 90e6
    assert set(auto["types_by_role"]) >= {"attn_q", "ffn_down", "token_embd"}
    assert sum(auto["types"].values()) == 30 * 7 + 1  # every quantized tensor of the demo
    text = run_cli("plan", demo_model, "--profile", "cpu-64gb", "--quant", "auto").stdout
    assert "--quant auto: budget" in text and "profile cpu-64gb at context" in text


@pytest.mark.parametrize(
    ("args", "message"),
    [(("--quant", "Q4_K_M"), "plan takes --quant auto"),
     (("--max-size", "1GB"), "go with --quant auto"),
     (("--all", "--quant", "auto"), "--quant auto plans one GGUF profile")],
)  # fmt: skip
def test_plan_refuses_auto_flags_it_cannot_use(demo_model, args, message):
    proc = run_cli("plan", demo_model, *args)
    assert proc.returncode != 0 and message in proc.stderr
