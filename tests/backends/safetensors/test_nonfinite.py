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
def test_nonfinite_source_fails_fp8_tensor_by_tensor(damaged_demo: Path, tmp_path: Path) -> None:
    """FP8_DYNAMIC is made tensor by tensor: NaN and infinity are counted as each tensor
    is read, nothing after the damaged one is quantized, and the shard is removed."""
    from llmcompressor.entrypoints.model_free.converter import ModelFreePtqConverter

    from quantkit.source.model import load_source

    quantized: list[str] = []
    original = ModelFreePtqConverter.process

    def counting(self, tensors):
        # the layout is planned by the same method on meta tensors: not quantizing
        quantized.extend(n for n, t in tensors.items() if t.device.type != "meta")
        return original(self, tensors)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(ModelFreePtqConverter, "process", counting)
        _refused(damaged_demo, tmp_path, "fp8", "FP8_DYNAMIC")
    order = [t.name for t in load_source(damaged_demo).tensors]
    assert quantized == order[: order.index(DAMAGED)]


@pytest.mark.slow  # imports llmcompressor: about 4 s
def test_nonfinite_source_fails_fp8_oneshot_before_quantizing(
    damaged_demo: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With a quantized lm_head FP8_DYNAMIC goes through oneshot on the loaded model,
    which may not start on a damaged source."""
    from quantkit.backends.safetensors import compressed

    def not_reached(*args, **kwargs):
        raise AssertionError("quantization ran on a damaged model")

    monkeypatch.setattr(compressed, "run_oneshot", not_reached)
    options = quantkit.SafetensorsOptions(quantize_lm_head=True)
    _refused(damaged_demo, tmp_path, "fp8", "FP8_DYNAMIC", safetensors=options)
