"""NaN and infinity in the source fail a safetensors convert (BF16 and FP16 through the
streaming writer, even with --force, which clamps only finite overflows; FP8 through
llmcompressor) with NonFiniteWeightsError naming the tensor, and leave nothing at --out."""

from __future__ import annotations

from pathlib import Path

import pytest
from support.nonfinite import nonfinite_copy

import quantkit
from quantkit.errors import NonFiniteWeightsError

DAMAGED = "model.layers.5.mlp.down_proj.weight"


@pytest.fixture(scope="module")
def damaged_demo(demo_model: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return nonfinite_copy(demo_model, tmp_path_factory.mktemp("nonfinite") / "demo", DAMAGED)


def _refused(model: Path, tmp_path: Path, fmt: str, quant: str, **kwargs) -> NonFiniteWeightsError:
    with pytest.raises(NonFiniteWeightsError) as info:
        quantkit.convert(
            model,
            out=tmp_path / "out",
            format=fmt,
            quant=quant,
            evaluation=quantkit.EvalOptions(enabled=False),
            **kwargs,
        )
    assert info.value.counts == {DAMAGED: (1, 1)}
    assert f"{DAMAGED} (1 NaN, 1 inf)" in str(info.value)
    assert list(tmp_path.iterdir()) == []  # no out, no out.partial, no .offload
    return info.value


@pytest.mark.parametrize(("quant", "force"), [("BF16", False), ("FP16", True)])
def test_nonfinite_source_fails_safetensors_convert(
    damaged_demo: Path, tmp_path: Path, quant: str, force: bool
) -> None:
    _refused(damaged_demo, tmp_path, "safetensors", quant, force=force)


@pytest.mark.slow  # imports llmcompressor and loads the model: about 4 s
def test_nonfinite_source_fails_fp8_before_oneshot(
    damaged_demo: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from quantkit.backends.safetensors import compressed

    def oneshot_not_reached(*args, **kwargs):
        raise AssertionError("oneshot ran on a damaged model")

    monkeypatch.setattr(compressed, "run_oneshot", oneshot_not_reached)
    _refused(damaged_demo, tmp_path, "fp8", "FP8_DYNAMIC")
