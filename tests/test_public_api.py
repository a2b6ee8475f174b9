"""The Python API mirrors the CLI: quantkit.plan and quantkit.convert."""

from __future__ import annotations

from pathlib import Path

import quantkit


def test_plan_for_one_profile(demo_model: Path) -> None:
    (plan,) = quantkit.plan(str(demo_model), "rtx4090-4bit")
    assert plan.profile == "rtx4090-4bit"
    assert plan.fit == "full" and plan.format == "gguf" and plan.quant == "Q4_K_M"
    assert "llama-server" in plan.command


def test_plan_for_all_profiles(demo_model: Path) -> None:
    plans = quantkit.plan(str(demo_model))
    assert {p.profile for p in plans} >= {"rtx4090-4bit", "a100-fp8", "a100x2-fp16"}


def test_convert_dry_run_writes_nothing(demo_model: Path, tmp_path: Path) -> None:
    out = tmp_path / "never"
    result = quantkit.convert(demo_model, out=out, profile="rtx4090-4bit", dry_run=True)
    assert result.dry_run and result.out is None and result.estimated_bytes > 0
    assert result.target.quant == "Q4_K_M" and result.plan["fit"] == "full"
    assert not out.exists() and not out.with_name("never.partial").exists()


def test_inspect_is_public_and_lazy(demo_model: Path) -> None:
    """quantkit.inspect is part of the API; bad input is a QuantkitError, not a traceback."""
    import pytest

    assert "inspect" in quantkit.__all__
    with pytest.raises(quantkit.QuantkitError, match="neither a GGUF file nor a safetensors"):
        quantkit.inspect(demo_model / "additional_chat_templates")
