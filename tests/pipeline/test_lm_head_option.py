"""FP8/GPTQ keep lm_head (and the embeddings) unquantized unless asked."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

import quantkit
from quantkit.backends.safetensors.options import SafetensorsOptions
from quantkit.evaluation.options import EvalOptions

NO_EVAL = EvalOptions(enabled=False)  # these tests check other things than quality


def _dtypes(folder: Path) -> dict[str, str]:
    from safetensors import safe_open

    out = {}
    for shard in folder.glob("*.safetensors"):
        with safe_open(str(shard), framework="pt") as fh:
            for name in fh.keys():  # noqa: SIM118 - safe_open is not iterable
                out[name] = str(fh.get_slice(name).get_dtype())
    return out


@pytest.mark.slow
@pytest.mark.parametrize("quantize_lm_head", [False, True])
def test_lm_head_quantized_only_when_asked(
    quantize_lm_head: bool, llama31_model: Path, tmp_path: Path
) -> None:
    out = tmp_path / "fp8"
    quantkit.convert(
        llama31_model, out=out, format="fp8", quant="FP8_DYNAMIC", evaluation=NO_EVAL,
        verify=False, safetensors=SafetensorsOptions(quantize_lm_head=quantize_lm_head),
    )  # fmt: skip
    dtypes = _dtypes(out)
    assert dtypes["model.layers.0.self_attn.q_proj.weight"] == "F8_E4M3"
    assert dtypes["model.embed_tokens.weight"] == "BF16"  # never quantized
    assert dtypes["lm_head.weight"] == ("F8_E4M3" if quantize_lm_head else "BF16")
    ignore = json.loads((out / "config.json").read_text())["quantization_config"]["ignore"]
    assert ("lm_head" in ignore) is not quantize_lm_head
