"""The MLX quant table: names, look-up, which layers get which bits (against mlx-lm's own
recipe predicate when it is installed) and the byte count."""

from __future__ import annotations

from math import prod

import pytest

from quantkit.errors import QuantkitError
from quantkit.formats import mlx_quants as mq
from quantkit.formats.safetensors_index import TensorInfo


def _t(name: str, *shape: int) -> TensorInfo:
    return TensorInfo(name, "BF16", shape, "model.safetensors", 2 * prod(shape))


def _layers(n: int, hidden: int = 128, ffn: int = 256) -> list[TensorInfo]:
    out = [_t("model.embed_tokens.weight", 1000, hidden), _t("model.norm.weight", hidden)]
    for i in range(n):
        p = f"model.layers.{i}"
        out += [
            _t(f"{p}.self_attn.q_proj.weight", hidden, hidden),
            _t(f"{p}.self_attn.v_proj.weight", hidden // 2, hidden),
            _t(f"{p}.mlp.down_proj.weight", hidden, ffn),
            _t(f"{p}.input_layernorm.weight", hidden),
        ]
    return [*out, _t("lm_head.weight", 1000, hidden)]


def test_names_default_and_lookup():
    assert mq.MLX_QUANT_NAMES[0] == "4bit"
    assert {"4bit", "6bit", "8bit", "BF16", "mixed_3_6", "mixed_4_6"} <= set(mq.MLX_QUANTS)
    assert mq.mlx_quant("4BIT").name == "4bit"
    assert mq.mlx_quant("bf16").name == "BF16"
    assert mq.mlx_quant("Mixed_4_6").recipe == "mixed_4_6"
    assert mq.mlx_quant("8BIT").bits == 8
    with pytest.raises(QuantkitError, match="Unknown MLX quant 'Q4_K_M'"):
        mq.mlx_quant("Q4_K_M")
    for good in mq.GROUP_SIZES:
        mq.check_group_size(good)
    with pytest.raises(QuantkitError, match="group size must be one of 32, 64, 128"):
        mq.check_group_size(48)


def test_recipes_are_mlx_lms_own():
    """Every recipe in the table is one mlx_lm.convert offers, and no recipe is missing."""
    convert = pytest.importorskip("mlx_lm.convert")
    recipes = {q.recipe for q in mq.MLX_QUANTS.values() if q.recipe}
    assert recipes == set(convert.QUANT_RECIPES)


def test_layer_bits_plain_and_width_rule():
    tensors = [*_layers(2), _t("model.layers.0.mlp.odd_proj.weight", 8, 96)]
    bits = mq.layer_bits(mq.mlx_quant("4bit"), tensors, 64)
    assert bits["model.embed_tokens.weight"] == 4  # mlx-lm quantizes the embeddings too
    assert bits["lm_head.weight"] == 4
    assert "model.norm.weight" not in bits
    assert "model.layers.0.mlp.odd_proj.weight" not in bits  # 96 % 64: stays 16-bit
    assert mq.layer_bits(mq.mlx_quant("BF16"), tensors, 64) == {}


@pytest.mark.parametrize("recipe", ["mixed_2_6", "mixed_3_4", "mixed_3_6", "mixed_4_6"])
def test_mixed_recipe_matches_mlx_lm_predicate(recipe):
    """Our reading of the recipe gives each layer the bits mlx-lm's predicate gives it."""
    convert = pytest.importorskip("mlx_lm.convert")
    n = 16
    tensors = _layers(n)
    ours = mq.layer_bits(mq.mlx_quant(recipe), tensors, 64)

    class Fake:  # what the predicate builder reads: named_modules() and .layers
        layers = list(range(n))

        @staticmethod
        def named_modules():
            return [(t.name.removesuffix(".weight"), None) for t in tensors]

    predicate = convert.mixed_quant_predicate_builder(recipe, Fake(), 64)
    for name, bits in ours.items():
        assert predicate(name.removesuffix(".weight"), None)["bits"] == bits, name
    assert len(set(ours.values())) == 2


def test_bytes_count():
    tensors = _layers(1)
    q = mq.quantized_bytes(128, 256, 4, 64)
    assert q == 128 * 256 // 2 + 2 * 128 * 4 * 2  # packed nibbles + BF16 scale and bias
    tied = mq.mlx_bytes(tensors, "4bit", 64, tied=True)
    untied = mq.mlx_bytes(tensors, "4bit", 64, tied=False)
    assert untied - tied == mq.quantized_bytes(1000, 128, 4, 64) + 3 * mq.HEADER_BYTES_PER_TENSOR
    plain = mq.mlx_bytes(tensors, "BF16", tied=False)
    assert plain == sum(t.nbytes + mq.HEADER_BYTES_PER_TENSOR for t in tensors)
    assert mq.mlx_bytes(tensors, "8bit") > mq.mlx_bytes(tensors, "6bit") > untied
