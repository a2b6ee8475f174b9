"""The MLX quant names as one typed table, and the bytes an MLX folder's weights take.

Every other place derives from `MLX_QUANTS`: the backend's bits and recipes, the profile
schema, the default quant, the planner's weight bytes and the disk preflight. Nothing here
imports mlx, so the planner and `--help` stay instant.

What mlx-lm (0.32) does, and this table counts: `mlx_lm.utils.quantize_model` calls
`nn.quantize`, which quantizes every module that has `to_quantized` (Linear and Embedding:
every 2-D `.weight` of the Llama/Qwen3 layouts, the embeddings included) whose input width
is a multiple of the group size; other layers (and every norm) stay in the model dtype.
Affine quantization packs `bits` bits per weight into uint32 words and keeps one scale and
one bias per group of `group_size` input columns, both in the model dtype (2 bytes for the
BF16/FP16 sources quantkit takes). The mixed recipes are mlx-lm's own
(`mlx_lm.convert.mixed_quant_predicate_builder`, modelled on llama.cpp's Q4_K_M): the high
bits for v_proj and down_proj in the first and last eighth of the layers and every third
layer between, and for lm_head; the low bits elsewhere. A head tied to the embeddings is
not written (mlx-lm's sanitize drops it).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from .quants import index_by_name
from .safetensors_index import TensorInfo

GROUP_SIZES = (32, 64, 128)  # what mlx's affine quantization takes
DEFAULT_GROUP_SIZE = 64  # mlx-lm's default (mlx_lm.convert --q-group-size)
DTYPE_BYTES = 2  # scales, biases and unquantized tensors: the BF16/FP16 model dtype
# A safetensors header entry per tensor: name, dtype, shape and offsets as JSON.
HEADER_BYTES_PER_TENSOR = 108


@dataclass(frozen=True)
class MLXQuant:
    """One quant name of the MLX format, as profiles and `convert --quant` spell it."""

    name: str
    bits: int  # bits of the quantized layers (16: nothing quantized); the low bits of a recipe
    recipe: str | None = None  # mlx-lm's quant_predicate recipe (mixed_4_6, ...)
    high_bits: int | None = None  # a recipe's bits for v_proj/down_proj/lm_head
    summary: str = ""

    @property
    def quantized(self) -> bool:
        return self.bits < 16


_QUANTS = (
    # The default first: mlx-community's usual upload, what LM Studio offers first.
    MLXQuant("4bit", 4, summary="4-bit affine weights, scale and bias per group"),
    MLXQuant("6bit", 6, summary="6-bit affine weights, scale and bias per group"),
    MLXQuant("8bit", 8, summary="8-bit affine weights, scale and bias per group"),
    MLXQuant("BF16", 16, summary="plain BF16 weights in MLX's layout"),
    MLXQuant("mixed_2_6", 2, "mixed_2_6", 6, "2-bit, sensitive layers 6-bit (mlx-lm recipe)"),
    MLXQuant("mixed_3_4", 3, "mixed_3_4", 4, "3-bit, sensitive layers 4-bit (mlx-lm recipe)"),
    MLXQuant("mixed_3_6", 3, "mixed_3_6", 6, "3-bit, sensitive layers 6-bit (mlx-lm recipe)"),
    MLXQuant("mixed_4_6", 4, "mixed_4_6", 6, "4-bit, sensitive layers 6-bit (mlx-lm recipe)"),
)
MLX_QUANTS: dict[str, MLXQuant] = index_by_name(_QUANTS, "MLX quant")
MLX_QUANT_NAMES: tuple[str, ...] = tuple(MLX_QUANTS)  # the default first
_BY_KEY = {q.name.lower(): q for q in _QUANTS}  # case-insensitive: 4BIT, bf16 (mlx-community)


def mlx_quant(name: str) -> MLXQuant:
    """Look an MLX quant up by name (case-insensitive); unknown names fail loudly."""
    from ..errors import QuantkitError

    key = name.lower()
    if key not in _BY_KEY:
        raise QuantkitError(
            f"Unknown MLX quant {name!r}.", hint=f"Choose one of: {', '.join(MLX_QUANTS)}."
        )
    return _BY_KEY[key]


def check_group_size(group_size: int) -> None:
    from ..errors import QuantkitError

    if group_size not in GROUP_SIZES:
        raise QuantkitError(
            f"MLX group size must be one of {', '.join(map(str, GROUP_SIZES))}, not "
            f"{group_size}.",
            hint=f"Use {DEFAULT_GROUP_SIZE}, mlx-lm's default.",
        )


# --- which layers, how many bits ------------------------------------------------------------
def written_tensors(tensors: Iterable[TensorInfo], tied: bool) -> list[TensorInfo]:
    """The source tensors mlx-lm writes: its sanitize drops rotary buffers and a tied head."""
    return [
        t
        for t in tensors
        if "rotary_emb.inv_freq" not in t.name and not (tied and t.name == "lm_head.weight")
    ]


def layer_bits(
    quant: MLXQuant, tensors: Iterable[TensorInfo], group_size: int
) -> dict[str, int]:
    """name -> bits of every tensor mlx-lm quantizes (the rest stays in the model dtype)."""
    tensors = list(tensors)
    if not quant.quantized:
        return {}
    candidates = [
        t for t in tensors if len(t.shape) == 2 and t.name.endswith(".weight")
        and t.shape[-1] % group_size == 0
    ]  # fmt: skip
    if quant.recipe is None:
        return {t.name: quant.bits for t in candidates}
    layers = {int(p[2]) for t in tensors if len(p := t.name.split(".")) > 3 and p[1] == "layers"}
    n = len(layers)
    out = {}
    for t in candidates:
        parts = t.name[: -len(".weight")].split(".")
        index = int(parts[2]) if len(parts) > 2 and parts[2].isdigit() else 0
        more = index < n // 8 or index >= 7 * n // 8 or (index - n // 8) % 3 == 2
        high = (more and ("v_proj" in t.name or "down_proj" in t.name)) or "lm_head" in t.name
        out[t.name] = quant.high_bits if high else quant.bits
    return out


def quantized_bytes(out_features: int, in_features: int, bits: int, group_size: int) -> int:
    """uint32-packed weights plus a scale and a bias per group, in the model dtype."""
    weights = out_features * in_features * bits // 8
    return weights + 2 * out_features * (in_features // group_size) * DTYPE_BYTES


def mlx_bytes(
    tensors: Iterable[TensorInfo],
    quant: str,
    group_size: int = DEFAULT_GROUP_SIZE,
    *,
    tied: bool = False,
) -> int:
    """Bytes of an MLX folder's weight files for `quant`: the tensors mlx-lm quantizes as
    it packs them, every other float tensor in the model dtype, plus safetensors headers."""
    spec = mlx_quant(quant)
    kept = written_tensors(tensors, tied)
    bits = layer_bits(spec, kept, group_size)
    total = 0
    for t in kept:
        if t.name in bits:
            total += quantized_bytes(t.shape[0], t.shape[1], bits[t.name], group_size)
            total += 3 * HEADER_BYTES_PER_TENSOR  # weight, scales, biases
        else:
            total += t.numel * DTYPE_BYTES + HEADER_BYTES_PER_TENSOR
    return total
