"""NaN and infinity in the source fail a GGUF convert (written directly: Q8_0, BF16;
quantized from the shards: Q4_K_M) with NonFiniteWeightsError naming the tensor and its
counts, and leave nothing at --out."""

from __future__ import annotations

from pathlib import Path

import pytest
from support.nonfinite import nonfinite_copy

import quantkit
from quantkit.errors import ConversionError, NonFiniteWeightsError

DAMAGED = "model.layers.0.self_attn.q_proj.weight"  # Q rows are regrouped per head


@pytest.fixture(scope="module")
def damaged_demo(demo_model: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return nonfinite_copy(demo_model, tmp_path_factory.mktemp("nonfinite") / "demo", DAMAGED)


@pytest.mark.parametrize("quant", ["Q8_0", "BF16", "Q4_K_M"])  # Q4_K_M: from the shards
def test_nonfinite_source_fails_gguf_convert(damaged_demo: Path, tmp_path: Path, quant: str):
    out = tmp_path / "out"
    with pytest.raises(NonFiniteWeightsError) as info:
        quantkit.convert(
            damaged_demo,
            out=out,
            format="gguf",
            quant=quant,
            evaluation=quantkit.EvalOptions(enabled=False),
        )
    assert info.value.counts == {DAMAGED: (1, 1)}
    message = str(info.value)
    assert "\n" not in message
    assert f"{DAMAGED} (1 NaN, 1 inf)" in message
    assert "damaged" in message and "download it again" in message
    assert isinstance(info.value, ConversionError) and info.value.exit_code == 10
    assert list(tmp_path.iterdir()) == []  # no out, no out.partial, no quarantine
