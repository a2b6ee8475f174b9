"""llama.cpp's per-tensor type choice and the byte size of every ggml type.

`llama-quantize Q4_K_M` does not store every tensor as Q4_K: llama.cpp's
`llama_tensor_get_type` (src/llama-quant.cpp) gives the output head Q6_K, half of the
attn_v and ffn_down tensors Q6_K (`use_more_bits`), bumps attn_v of 70B Llamas to Q5_K, and
falls back to other types when a row length is not a multiple of the 256-wide K-quant
super-block (SmolLM2's hidden size 576: Q4_K -> Q5_0, Q6_K -> Q8_0). This module mirrors
those rules so the planner predicts file and buffer sizes to the byte per tensor. The rules
for the low-bit IQ types are mirrored only in their main lines (see docs/profiles.md).

Pure Python, no ggml import: `quantkit plan` stays instant. A test checks GGML_TYPES
against gguf-py's GGML_QUANT_SIZES.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

# ggml type -> (elements per block, bytes per block); ggml.c's type_traits.
GGML_TYPES: dict[str, tuple[int, int]] = {
    "F32": (1, 4),
    "F16": (1, 2),
    "BF16": (1, 2),
    "Q4_0": (32, 18),
    "Q4_1": (32, 20),
    "Q5_0": (32, 22),
    "Q5_1": (32, 24),
    "Q8_0": (32, 34),
    "Q2_K": (256, 84),
    "Q3_K": (256, 110),
    "Q4_K": (256, 144),
    "Q5_K": (256, 176),
    "Q6_K": (256, 210),
    "IQ2_XXS": (256, 66),
    "IQ2_XS": (256, 74),
    "IQ2_S": (256, 82),
    "IQ3_XXS": (256, 98),
    "IQ3_S": (256, 110),
    "IQ1_S": (256, 50),
    "IQ1_M": (256, 56),
    "IQ4_NL": (32, 18),
    "IQ4_XS": (256, 136),
}

# llama file type -> default ggml type (llama_model_quantize_impl's switch).
FTYPE_DEFAULT: dict[str, str] = {
    "F32": "F32", "F16": "F16", "BF16": "BF16", "Q8_0": "Q8_0",
    "Q4_0": "Q4_0", "Q4_1": "Q4_1", "Q5_0": "Q5_0", "Q5_1": "Q5_1",
    "Q2_K": "Q2_K", "Q2_K_S": "Q2_K", "Q3_K_S": "Q3_K", "Q3_K_M": "Q3_K", "Q3_K_L": "Q3_K",
    "Q4_K_S": "Q4_K", "Q4_K_M": "Q4_K", "Q5_K_S": "Q5_K", "Q5_K_M": "Q5_K", "Q6_K": "Q6_K",
    "IQ2_XXS": "IQ2_XXS", "IQ2_XS": "IQ2_XS", "IQ2_S": "IQ2_XS", "IQ2_M": "IQ2_S",
    "IQ3_XXS": "IQ3_XXS", "IQ3_M": "IQ3_S", "IQ1_S": "IQ1_S", "IQ1_M": "IQ1_M",
    "IQ4_NL": "IQ4_NL", "IQ4_XS": "IQ4_XS",
}  # fmt: skip

_LOW_IQ = {"IQ2_XXS", "IQ2_XS", "IQ2_S", "IQ2_M", "IQ1_S", "IQ1_M"}
# When a row does not split into whole blocks, llama.cpp swaps the type for one with
# 32-wide blocks (llama_tensor_get_type's convert_incompatible_tensor switch).
_FALLBACK = {
    "Q2_K": "IQ4_NL", "Q3_K": "IQ4_NL", "IQ4_XS": "IQ4_NL", "IQ2_XXS": "IQ4_NL",
    "IQ2_XS": "IQ4_NL", "IQ2_S": "IQ4_NL", "IQ3_XXS": "IQ4_NL", "IQ3_S": "IQ4_NL",
    "IQ1_S": "IQ4_NL", "IQ1_M": "IQ4_NL", "Q4_K": "Q5_0", "Q5_K": "Q5_1", "Q6_K": "Q8_0",
}  # fmt: skip

# Hugging Face tensor name -> GGUF tensor role (gguf-py's tensor_mapping for llama/qwen3).
_HF_ROLES = (
    (re.compile(r"model\.embed_tokens\.weight$"), "token_embd"),
    (re.compile(r"lm_head\.weight$"), "output"),
    (re.compile(r"model\.norm\.weight$"), "output_norm"),
    (re.compile(r"\.self_attn\.q_proj\.weight$"), "attn_q"),
    (re.compile(r"\.self_attn\.k_proj\.weight$"), "attn_k"),
    (re.compile(r"\.self_attn\.v_proj\.weight$"), "attn_v"),
    (re.compile(r"\.self_attn\.o_proj\.weight$"), "attn_output"),
    (re.compile(r"\.self_attn\.q_norm\.weight$"), "attn_q_norm"),
    (re.compile(r"\.self_attn\.k_norm\.weight$"), "attn_k_norm"),
    (re.compile(r"\.mlp\.gate_proj\.weight$"), "ffn_gate"),
    (re.compile(r"\.mlp\.up_proj\.weight$"), "ffn_up"),
    (re.compile(r"\.mlp\.down_proj\.weight$"), "ffn_down"),
    (re.compile(r"\.input_layernorm\.weight$"), "attn_norm"),
    (re.compile(r"\.post_attention_layernorm\.weight$"), "ffn_norm"),
)
_LAYER = re.compile(r"\.layers\.(\d+)\.")


@dataclass(frozen=True)
class GGUFTensor:
    """One tensor as it will sit in the GGUF file."""

    name: str  # GGUF name, e.g. "blk.3.attn_v.weight"
    role: str  # "attn_v", "token_embd", ...
    layer: int | None  # repeating-layer index, None for embeddings/head/norm
    shape: tuple[int, ...]  # torch order; ne[0] (row length) is shape[-1]
    ggml_type: str

    @property
    def nbytes(self) -> int:
        return ggml_nbytes(self.ggml_type, self.shape)


@dataclass(frozen=True)
class QuantContext:
    """What llama_tensor_get_type looks at besides the tensor itself."""

    ftype: str  # "Q4_K_M", ...
    n_layer: int
    n_gqa: int  # n_head / n_head_kv
    is_llama_70b: bool  # llama.cpp's LLM_TYPE_70B: llama arch with 80 layers and GQA
    has_output: bool  # False when lm_head is tied to the embeddings


def hf_role(name: str) -> tuple[str, int | None] | None:
    """(GGUF role, layer index) of a Hugging Face tensor name, or None if unknown."""
    for pattern, role in _HF_ROLES:
        if pattern.search(name):
            match = _LAYER.search(name)
            return role, int(match.group(1)) if match else None
    return None


def gguf_name(role: str, layer: int | None) -> str:
    return f"{role}.weight" if layer is None else f"blk.{layer}.{role}.weight"


def numel(shape: tuple[int, ...]) -> int:
    count = 1
    for dim in shape:
        count *= dim
    return count


def ggml_nbytes(ggml_type: str, shape: tuple[int, ...]) -> int:
    block, size = GGML_TYPES[ggml_type]
    return numel(shape) // block * size


def bits_per_weight(ggml_type: str) -> float:
    block, size = GGML_TYPES[ggml_type]
    return size * 8 / block


def use_more_bits(i_layer: int, n_layer: int) -> bool:
    """llama.cpp's choice of which layers get the bigger type in the *_M mixes: the first
    and last eighth, and every third layer in between."""
    return (
        i_layer < n_layer // 8 or i_layer >= 7 * n_layer // 8 or (i_layer - n_layer // 8) % 3 == 2
    )


def tensor_type(role: str, layer: int | None, shape: tuple[int, ...], ctx: QuantContext) -> str:
    """The ggml type llama-quantize gives one tensor for file type `ctx.ftype`."""
    default = FTYPE_DEFAULT[ctx.ftype]
    if len(shape) < 2 or role.endswith("norm"):
        return "F32"  # 1-D tensors (norms, rope factors) are never quantized
    block = GGML_TYPES[default][0]
    if block == 1:
        return default  # F16/BF16/F32: no per-tensor mix
    new = _mixed_type(role, layer, shape, ctx, default)
    return _fallback(new, shape[-1])


def _mixed_type(
    role: str, layer: int | None, shape: tuple[int, ...], ctx: QuantContext, new: str
) -> str:
    ftype, n = ctx.ftype, ctx.n_layer
    i = layer or 0
    if role == "output" or (role == "token_embd" and not ctx.has_output):
        if shape[-1] % GGML_TYPES[new][0] != 0:
            return "Q8_0"
        if ftype in _LOW_IQ or ftype == "IQ3_XXS":
            return "Q5_K"
        return new if new == "Q8_0" else "Q6_K"
    if role == "token_embd":
        if ftype in ("IQ2_XXS", "IQ2_XS", "IQ1_S", "IQ1_M"):
            return "Q2_K"
        if ftype in ("IQ2_S", "IQ2_M", "IQ3_M"):
            return "IQ3_S"
        return new
    if ftype in _LOW_IQ:
        if role == "attn_v":
            if ctx.n_gqa >= 4:
                return "Q4_K"
            return "IQ3_S" if ftype in ("IQ2_S", "IQ2_M") else "Q2_K"
        if role == "ffn_down" and i < n // 8:
            return "IQ3_S" if ftype in ("IQ2_S", "IQ2_M") else "Q2_K"
        return new
    if role == "attn_v":
        return _attn_v_type(ftype, i, ctx, new)
    if role == "ffn_down":
        return _ffn_down_type(ftype, i, n, new)
    if role == "attn_output":
        return {"Q2_K": "Q3_K", "IQ3_XXS": "IQ3_S", "Q3_K_M": "Q4_K", "Q3_K_L": "Q5_K",
                "IQ3_M": "Q4_K"}.get(ftype, new)  # fmt: skip
    return new


def _attn_v_type(ftype: str, i: int, ctx: QuantContext, new: str) -> str:
    n, gqa4 = ctx.n_layer, ctx.n_gqa >= 4
    if ftype == "Q2_K":
        new = "Q4_K" if gqa4 else "Q3_K"
    elif ftype == "Q2_K_S" and gqa4 or ftype == "IQ3_M":
        new = "Q4_K"
    elif ftype == "IQ3_XXS":
        new = "Q4_K" if gqa4 else "IQ3_S"
    elif ftype == "Q3_K_M":
        new = "Q5_K" if i < 2 else "Q4_K"
    elif ftype == "Q3_K_L" or ftype in ("IQ4_NL", "IQ4_XS") and gqa4:
        new = "Q5_K"
    elif ftype in ("Q4_K_M", "Q5_K_M") and use_more_bits(i, n):
        new = "Q6_K"
    elif ftype == "Q4_K_S" and i < 4:
        new = "Q5_K"
    # "In the 70B model we have 8 heads sharing the same attn_v weights": cheap to upgrade.
    if ctx.is_llama_70b and new in ("Q3_K", "Q4_K"):
        new = "Q5_K"
    return new


def _ffn_down_type(ftype: str, i: int, n: int, new: str) -> str:
    if ftype == "Q2_K":
        return "Q3_K"
    if ftype == "Q2_K_S":
        return "Q4_K" if i < n // 8 else new
    if ftype == "IQ3_XXS":  # without an imatrix; with one llama.cpp keeps IQ3_XXS
        return "Q4_K" if i < n // 8 else "Q3_K"
    if ftype == "Q3_K_M":
        return "Q5_K" if i < n // 16 else "Q4_K"  # non-Falcon: use_more_bits or not, Q4_K
    if ftype == "IQ3_M" and i < n // 8:
        return "Q4_K"
    if ftype == "Q3_K_L":
        return "Q5_K"
    if ftype in ("Q4_K_M", "Q5_K_M"):
        return "Q6_K" if use_more_bits(i, n) else new
    if ftype in ("IQ4_NL", "IQ4_XS") and i < n // 8:
        return "Q5_K"
    if ftype == "Q4_K_S" and i < n // 8:
        return "Q5_K"
    return new


def _fallback(ggml_type: str, row: int) -> str:
    if row % GGML_TYPES[ggml_type][0] == 0:
        return ggml_type
    fallback = _FALLBACK.get(ggml_type, "F16")
    return fallback if row % GGML_TYPES[fallback][0] == 0 else "F16"


# --- the types `--quant auto` chooses among (quantkit.backends.gguf.auto) -------------------
# The types llama-quantize makes between ~2.3 and 8.5 bits per weight, less three groups:
# IQ1_* and IQ2_XXS/IQ2_S (below IQ2_XS a chat model no longer holds a conversation), and
# the legacy Q4_1 and Q5_1, which on real weights cost more bytes than Q4_K and Q5_K for no
# less error (GAUSSIAN_RELATIVE_ERROR below) and on the demo model, whose weights come from a
# Q4_1 file, reproduce them exactly: a choice made there would say nothing about real models.
AUTO_TYPES: tuple[str, ...] = (
    "IQ2_XS", "Q2_K", "IQ3_XXS", "IQ3_S", "Q3_K", "IQ4_XS", "IQ4_NL", "Q4_0", "Q4_K",
    "Q5_0", "Q5_K", "Q6_K", "Q8_0",
)  # fmt: skip

# Relative squared error (sum (w - w')^2 / sum w^2) of each type on standard-normal rows of
# 4096 with a flat importance matrix, measured with ggml's own kernels (a test re-measures it).
# `quantkit plan --quant auto` reads no weights: this is its prior for every tensor.
GAUSSIAN_RELATIVE_ERROR: dict[str, float] = {
    "IQ2_XS": 0.0898, "Q2_K": 0.0718, "IQ3_XXS": 0.033, "IQ3_S": 0.0188, "Q3_K": 0.0209,
    "IQ4_XS": 0.00571, "IQ4_NL": 0.00561, "Q4_0": 0.00666, "Q4_1": 0.00488, "Q4_K": 0.005,
    "Q5_0": 0.00164, "Q5_1": 0.00114, "Q5_K": 0.00125, "Q6_K": 0.000299, "Q8_0": 2.87e-05,
}  # fmt: skip


# Types llama.cpp's quantizer refuses for a tensor the importance matrix has no data for
# (llama-quant.cpp: "Missing importance matrix for tensor ... in a very low-bit
# quantization"; ggml_quantize_chunk aborts the process for the first three). quantkit's
# matrix, like llama-imatrix's by default, covers the blk.* weights only: never token_embd
# (a row lookup, not a product) nor output.
IMATRIX_REQUIRED = frozenset({"IQ1_S", "IQ1_M", "IQ2_XXS", "IQ2_XS", "IQ2_S"})


def covered_by_imatrix(name: str) -> bool:
    """Whether quantkit's importance matrix has data for the tensor `name` (blk.* only)."""
    return name.startswith("blk.")


def fits_rows(ggml_type: str, row: int) -> bool:
    """A row of `row` elements splits into whole blocks of `ggml_type`: llama.cpp then keeps
    the type as asked instead of falling back to another one."""
    return row % GGML_TYPES[ggml_type][0] == 0


def auto_candidates(
    shape: tuple[int, ...], types: tuple[str, ...] = AUTO_TYPES, *, imatrix: bool = True
) -> tuple[str, ...]:
    """The `types` (default: those `--quant auto` chooses among) that can take a tensor of
    `shape` as they are, smallest first; without importance-matrix data for the tensor
    (`imatrix` False), none of IMATRIX_REQUIRED."""
    fitting = [t for t in types if fits_rows(t, shape[-1])]
    if not imatrix:
        fitting = [t for t in fitting if t not in IMATRIX_REQUIRED]
    return tuple(sorted(fitting, key=lambda t: (bits_per_weight(t), t)))
