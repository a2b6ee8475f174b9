"""Per-architecture facts for the GGUF writer: names, hyperparameters, tensor transforms.

Only architectures listed in ARCHITECTURES convert; the rest are refused before any work
(quantkit.source.model checks the same list).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import gguf
import numpy as np

from ...source.model import ModelGeometry, RopeSettings


@dataclass(frozen=True)
class ArchSpec:
    hf_architecture: str
    gguf_arch: gguf.MODEL_ARCH
    # llama.cpp's Llama graph expects Q/K rows grouped as (half, 2) per head instead of
    # HF's (2, half): the rotary pairs are interleaved differently. Qwen uses NeoX rope and
    # keeps HF's order.
    permute_qk: bool
    writes_vocab_size: bool  # the Llama converter writes llama.vocab_size, Qwen's does not


ARCHITECTURES: dict[str, ArchSpec] = {
    "LlamaForCausalLM": ArchSpec("LlamaForCausalLM", gguf.MODEL_ARCH.LLAMA, True, True),
    "Qwen3ForCausalLM": ArchSpec("Qwen3ForCausalLM", gguf.MODEL_ARCH.QWEN3, False, False),
}


def arch_name(spec: ArchSpec) -> str:
    return gguf.MODEL_ARCH_NAMES[spec.gguf_arch]


def write_hparams(
    writer: gguf.GGUFWriter, spec: ArchSpec, geo: ModelGeometry, config: dict, ftype: int
) -> None:
    writer.add_block_count(geo.num_layers)
    writer.add_context_length(geo.max_position_embeddings)
    writer.add_embedding_length(geo.hidden_size)
    writer.add_feed_forward_length(geo.intermediate_size)
    writer.add_head_count(geo.num_heads)
    writer.add_head_count_kv(geo.num_kv_heads)
    _write_rope_scaling(writer, geo.rope)
    writer.add_rope_freq_base(geo.rope.theta)
    writer.add_layer_norm_rms_eps(geo.rms_norm_eps)
    if config.get("head_dim") is not None:
        writer.add_key_length(geo.head_dim)
        writer.add_value_length(geo.head_dim)
    writer.add_file_type(ftype)
    if spec.writes_vocab_size:
        writer.add_vocab_size(geo.vocab_size)
        writer.add_rope_dimension_count(geo.head_dim)


def _write_rope_scaling(writer: gguf.GGUFWriter, rope: RopeSettings) -> None:
    if rope.rope_type == "linear" and rope.factor is not None:
        writer.add_rope_scaling_type(gguf.RopeScalingType.LINEAR)
        writer.add_rope_scaling_factor(rope.factor)
    elif rope.rope_type == "yarn" and rope.factor is not None:
        writer.add_rope_scaling_type(gguf.RopeScalingType.YARN)
        writer.add_rope_scaling_factor(rope.factor)
        if rope.original_max_position_embeddings is not None:
            writer.add_rope_scaling_orig_ctx_len(rope.original_max_position_embeddings)
    # llama3 scaling travels as the rope_freqs tensor (see llama3_rope_factors).


def llama3_rope_factors(rope: RopeSettings, head_dim: int) -> np.ndarray | None:
    """Per-frequency divisors of Llama 3.1's rope scaling, as llama.cpp's `rope_freqs`.

    High frequencies (short wavelengths) are kept, low ones divided by `factor`, and the
    band between is interpolated smoothly (Meta's apply_scaling). Computed in float32,
    as the reference converter does, so the tensor is bit-identical.
    """
    if rope.rope_type.lower() != "llama3":
        return None
    factor = np.float32(rope.factor if rope.factor is not None else 8.0)
    low = np.float32(rope.low_freq_factor if rope.low_freq_factor is not None else 1.0)
    high = np.float32(rope.high_freq_factor if rope.high_freq_factor is not None else 4.0)
    old_ctx = np.float32(rope.original_max_position_embeddings or 8192)
    exponents = np.arange(0, head_dim, 2, dtype=np.float32) / np.float32(head_dim)
    freqs = np.float32(1.0) / (np.float32(rope.theta) ** exponents)
    wavelen = np.float32(2 * math.pi) / freqs
    low_freq_wavelen = old_ctx / low
    high_freq_wavelen = old_ctx / high
    smooth = (old_ctx / wavelen - low) / (high - low)
    interpolated = np.float32(1.0) / ((np.float32(1.0) - smooth) / factor + smooth)
    out = np.where(
        wavelen < high_freq_wavelen,
        np.float32(1.0),
        np.where(wavelen > low_freq_wavelen, factor, interpolated),
    )
    return out.astype(np.float32)


def qk_heads(spec: ArchSpec, hf_name: str, geo: ModelGeometry) -> int | None:
    """How many heads to regroup for this tensor, or None when it is written as is."""
    if not spec.permute_qk:
        return None
    if hf_name.endswith(("q_proj.weight", "q_proj.bias")):
        return geo.num_heads
    if hf_name.endswith(("k_proj.weight", "k_proj.bias")):
        return geo.num_kv_heads
    return None


def permute_rows(block: np.ndarray, heads: int) -> np.ndarray:
    """Regroup the rows of `heads` whole heads from HF order to llama.cpp order."""
    rows = block.shape[0]
    return (
        block.reshape(heads, 2, rows // heads // 2, *block.shape[1:])
        .swapaxes(1, 2)
        .reshape(block.shape)
    )
