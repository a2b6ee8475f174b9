"""`quantkit eval`: flags, JSON output, the gate and its exit code."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from quantkit.evaluation.options import EvalOptions

NO_EVAL = EvalOptions(enabled=False)  # these tests check other things than quality

REQUIRED = ("perplexity", "reference_perplexity", "kld_mean", "kld_p99", "top1_agreement")


def run_cli(*args: object, env: dict | None = None) -> subprocess.CompletedProcess[str]:
    full_env = {**os.environ, "COLUMNS": "120", "NO_COLOR": "1", **(env or {})}
    full_env.pop("QUANTKIT_DEBUG", None)
    return subprocess.run(
        [sys.executable, "-m", "quantkit", *map(str, args)],
        capture_output=True,
        text=True,
        env=full_env,
        timeout=300,
    )


def _canned(**overrides):
    from quantkit.evaluation.measure import QualityReport, SpanStats

    values = dict(
        artifact="/x/demo-Q4_K_M.gguf",
        source="/x/demo",
        engine="llama.cpp",
        engine_detail="llama.cpp",
        reference_engine="transformers (float32, cpu, layer by layer)",
        corpus="quantkit-eval",
        corpus_sha256="0" * 64,
        n_ctx=512,
        chunks=2,
        tokens=510,
        perplexity=15.0,
        reference_perplexity=14.0,
        ppl_ratio=15.0 / 14.0,
        kld_mean=0.2,
        kld_mean_lower_bound=0.18,
        kld_median=0.1,
        kld_p99=1.0,
        kld_max=3.0,
        top1_agreement=0.8,
        top_k=64,
        rest_mass_mean=0.08,
        spans={"assistant": SpanStats(40, 9.0, 8.5, 0.1, 0.5, 0.9)},
        parameters=135_000_000,
    )
    values.update(overrides)
    return QualityReport(**values)


@pytest.fixture
def fake_eval(monkeypatch):
    """The command with evaluate_artifact replaced by a canned report (no models)."""
    import quantkit.evaluation.measure
    from quantkit.cli import console

    calls = []

    def fake(artifact, source, **kwargs):
        calls.append((artifact, source, kwargs))
        return _canned()

    monkeypatch.setattr(quantkit.evaluation.measure, "evaluate_artifact", fake)
    yield calls
    console.configure()


def _invoke(*args: str):
    from typer.testing import CliRunner

    from quantkit.cli import app

    return CliRunner().invoke(app, ["eval", *args])


def test_eval_help_and_no_heavy_imports() -> None:
    proc = run_cli("eval", "--help")
    assert proc.returncode == 0
    for flag in ("--against", "--corpus", "--json", "--n-ctx", "--no-gate", "--quant", "--profile"):
        assert flag in proc.stdout
    out = subprocess.run(
        [sys.executable, "-X", "importtime", "-c", "import quantkit.cli.eval_cmd"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    imported = {
        line.rsplit("|", 1)[1].strip().split(".")[0]
        for line in out.stderr.splitlines()
        if "|" in line
    }
    assert "quantkit" in imported and not imported & {"torch", "llama_cpp", "transformers", "numpy"}


def test_flags_map_onto_evaluate_artifact(fake_eval, tmp_path: Path) -> None:
    corpus = tmp_path / "c.txt"
    corpus.write_text("x")
    result = _invoke(
        "a.gguf", "--against", "src", "--corpus", str(corpus), "--n-ctx", "256",
        "--max-chunks", "3", "--quant", "Q4_0", "--json",
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    artifact, source, kwargs = fake_eval[0]
    assert artifact == "a.gguf" and source == Path("src")
    assert kwargs["corpus"] == corpus and kwargs["n_ctx"] == 256 and kwargs["max_chunks"] == 3
    assert kwargs["use_cache"] is True and kwargs["dtype"] == "float32"
    payload = json.loads(result.stdout)
    assert all(key in payload for key in (*REQUIRED, "tokens", "engine"))
    assert payload["gate"]["passed"] and payload["gate"]["quant"] == "Q4_0"


def test_failed_gate_exits_17_unless_no_gate(fake_eval) -> None:
    from quantkit.errors import QualityGateError

    result = _invoke("a.gguf", "--against", "src", "--quant", "Q8_0")
    assert isinstance(result.exception, QualityGateError)
    assert QualityGateError.exit_code == 17
    assert "quality gate FAILED" in result.output and "kld_mean 0.2 <= 0.02 FAILED" in str(
        result.exception
    )
    relaxed = _invoke("a.gguf", "--against", "src", "--quant", "Q8_0", "--no-gate")
    assert relaxed.exit_code == 0 and "quality gate FAILED" in relaxed.output


def test_human_output_has_the_span_rows(fake_eval) -> None:
    result = _invoke("a.gguf", "--against", "src", "--quant", "Q4_0")
    assert result.exit_code == 0, result.output
    assert "assistant" in result.output and "15.0000" in result.output
    assert "quality gate passed" in result.output


def test_quant_is_read_from_the_manifest_or_the_gguf(tmp_path: Path) -> None:
    from quantkit.evaluation.evaluate import infer_quant

    folder = tmp_path / "art"
    folder.mkdir()
    (folder / "manifest.json").write_text(json.dumps({"target": {"quant": "Q5_K_M"}}))
    assert infer_quant(folder / "m.gguf") == "Q5_K_M"
    hf = tmp_path / "hf"
    hf.mkdir()
    (hf / "config.json").write_text(json.dumps({"torch_dtype": "bfloat16"}))
    assert infer_quant(hf) == "BF16"
    (hf / "config.json").write_text(json.dumps({"quantization_config": {"quant_method": "x"}}))
    assert infer_quant(hf) is None


@pytest.mark.slow
def test_eval_json_end_to_end(demo_model: Path, tmp_path: Path) -> None:
    import quantkit

    art = quantkit.convert(
        demo_model, out=tmp_path / "q8", format="gguf", quant="Q8_0", verify=False,
        evaluation=NO_EVAL,
    )
    gguf = next(art.out.glob("*.gguf"))
    env = {"QUANTKIT_CACHE": str(tmp_path / "cache")}
    proc = run_cli("eval", gguf, "--against", demo_model, "--max-chunks", "1", "--json", env=env)
    assert proc.returncode == 0, proc.stderr[-2000:]
    payload = json.loads(proc.stdout)
    assert all(isinstance(payload[key], float) for key in REQUIRED)
    assert payload["engine"] == "llama.cpp" and payload["tokens"] == 255
    assert 0 <= payload["top1_agreement"] <= 1 and payload["kld_mean"] < 0.05
    assert payload["gate"]["quant"] == "Q8_0" and payload["gate"]["passed"]  # from manifest.json
    assert set(payload["spans"]) == {"assistant", "reasoning", "tool_call"}
    assert list((tmp_path / "cache" / "reference-logits").glob("*.npz"))
    missing = run_cli("eval", gguf, "--against", tmp_path / "nowhere", env=env)
    assert missing.returncode != 0 and "does not exist" in missing.stderr
