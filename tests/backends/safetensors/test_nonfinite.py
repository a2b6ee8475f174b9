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


@pytest.mark.slow  # imports llmcompressor: about 4 s
@pytest.mark.parametrize("quantize_lm_head", [False, True], ids=["shard-by-shard", "oneshot"])
def test_nonfinite_source_fails_fp8_before_quantizing(
    damaged_demo: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, quantize_lm_head: bool
) -> None:
    """FP8_DYNAMIC is made shard by shard (model_free_ptq); with a quantized lm_head by
    oneshot on the loaded model. Neither may start on a damaged source."""
    import llmcompressor

    from quantkit.backends.safetensors import compressed

    def not_reached(*args, **kwargs):
        raise AssertionError("quantization ran on a damaged model")

    monkeypatch.setattr(compressed, "run_oneshot", not_reached)
    monkeypatch.setattr(llmcompressor, "model_free_ptq", not_reached)
    options = quantkit.SafetensorsOptions(quantize_lm_head=quantize_lm_head)
    _refused(damaged_demo, tmp_path, "fp8", "FP8_DYNAMIC", safetensors=options)
