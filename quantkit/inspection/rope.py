"""Check 6: a Llama-3.1-style model's rope scaling survives as llama.cpp's `rope_freqs`.

llama.cpp does not read `rope_scaling` from metadata for `rope_type: llama3`; the scaling
exists in a GGUF only as the `rope_freqs` tensor (one divisor per rotary frequency). A GGUF
without it runs, but with plain rope: answers degrade past the original 8k context.

The expected values are computed here independently of quantkit's writer, in float64, from
Meta's formula (transformers' `_compute_llama3_parameters`), and compared with a float32
tolerance.
"""

from __future__ import annotations

import math
from typing import Any

from ..source.model import rope_settings
from .check import Check
from .gguf_meta import GGUFMeta

ROPE = "rope_freqs"
TENSOR = "rope_freqs.weight"


def llama3_factors(config: dict[str, Any]) -> list[float] | None:
    """rope_freqs as the source config defines them, or None without llama3 scaling."""
    cfg = config.get("text_config", config)
    rope = rope_settings(cfg)
    if rope.rope_type != "llama3":
        return None
    heads = int(cfg["num_attention_heads"])
    head_dim = int(cfg.get("head_dim") or int(cfg["hidden_size"]) // heads)
    factor = rope.factor or 8.0
    low = rope.low_freq_factor or 1.0
    high = rope.high_freq_factor or 4.0
    old_ctx = rope.original_max_position_embeddings or 8192
    out = []
    for i in range(0, head_dim, 2):
        freq = 1.0 / rope.theta ** (i / head_dim)
        wavelen = 2 * math.pi / freq
        if wavelen < old_ctx / high:
            out.append(1.0)
        elif wavelen > old_ctx / low:
            out.append(factor)
        else:
            smooth = (old_ctx / wavelen - low) / (high - low)
            out.append(1.0 / ((1 - smooth) / factor + smooth))
    return out


def llama3_hint(meta: GGUFMeta) -> str | None:
    """Why a llama GGUF without a source must carry rope_freqs, or None: llama3 rope
    metadata, or Llama 3.1's long context (> 8192) with its rope base 500000 (Llama 3.0 has
    the same base but an 8192 context and no scaling)."""
    for key, value in meta.values.items():
        if ".rope." in key and isinstance(value, str) and value.lower() == "llama3":
            return f"{key} = {value}"
    ctx = meta.arch_value("context_length")
    base = meta.arch_value("rope.freq_base")
    if isinstance(ctx, int) and ctx > 8192 and isinstance(base, int | float) and base == 500000:
        return f"context_length {ctx}, rope.freq_base {base:g}"
    return None


def _expected_count(meta: GGUFMeta) -> str:
    dims = meta.arch_value("rope.dimension_count") or meta.arch_value("attention.key_length")
    return f"{int(dims) // 2}" if dims else "rope.dimension_count / 2"


def rope_check(meta: GGUFMeta, values, config: dict[str, Any] | None) -> Check | None:
    """None where rope_freqs does not apply (architectures other than llama, no source
    saying so and no tensor present)."""
    import numpy as np

    expected = llama3_factors(config) if config is not None else None
    if values is None:
        if expected is not None:
            return Check(
                ROPE,
                False,
                f"the source uses llama3 rope scaling (factor {max(expected):g}) but the GGUF "
                "has no rope_freqs tensor: llama.cpp would run it with plain rope and "
                "long prompts (past the original context) would degrade",
            )
        if config is not None:
            return Check(ROPE, True, "no rope_freqs tensor, and the source expects none", False)
        if meta.arch != "llama":
            return None
        why = llama3_hint(meta)
        if why is not None:
            return Check(
                ROPE, False, f"the GGUF looks like a Llama 3.1-style model ({why}) but has no "
                f"rope_freqs tensor: expected {_expected_count(meta)} llama3 scaling divisors "
                "(1 for high frequencies rising to the scaling factor); without it llama.cpp "
                "runs plain rope and long prompts (past the original context) degrade. "
                "Pass --against SOURCE to compare with the source config",
            )  # fmt: skip
        return Check(
            ROPE, True, "no rope_freqs tensor; without --against only consistency can be "
            "checked, and nothing in the GGUF's rope metadata calls for one",
            fatal=False,
        )  # fmt: skip
    values = np.asarray(values, dtype=np.float64)
    dims = meta.arch_value("rope.dimension_count") or meta.arch_value("attention.key_length")
    if expected is None:
        if config is not None:
            return Check(
                ROPE, False, f"the GGUF has a rope_freqs tensor ({values.size} values) but the "
                "source config has no llama3 rope scaling",
            )  # fmt: skip
        # No source: the tensor must fit the GGUF's own rope metadata and look like
        # llama3 divisors (1 for high frequencies, rising to the factor).
        problems = []
        if dims and values.size != int(dims) // 2:
            problems.append(f"{values.size} values for rope.dimension_count {dims}")
        if not np.isfinite(values).all() or values.min() < 1.0 - 1e-6:
            problems.append("values are not finite divisors >= 1")
        if (np.diff(values) < -1e-6).any():
            problems.append("values are not non-decreasing")
        if problems:
            return Check(ROPE, False, "rope_freqs is inconsistent: " + "; ".join(problems))
        return Check(
            ROPE, True, f"{values.size} divisors from {values.min():g} to {values.max():g}, "
            f"consistent with rope.dimension_count {dims} (no source to recompute them from)",
        )  # fmt: skip
    want = np.asarray(expected, dtype=np.float64)
    if values.shape != want.shape:
        return Check(
            ROPE, False, f"rope_freqs has {values.size} values, the source's head dimension "
            f"needs {want.size}",
        )  # fmt: skip
    err = np.abs(values - want) / want
    if err.max() > 1e-5:
        i = int(err.argmax())
        return Check(
            ROPE, False, f"rope_freqs[{i}] is {values[i]:.6g}, the source config gives "
            f"{want[i]:.6g} (max relative error {err.max():.2g})",
        )  # fmt: skip
    return Check(
        ROPE, True, f"{values.size} values equal the source's llama3 scaling (factor "
        f"{want.max():g}), max relative error {err.max():.1e}",
    )  # fmt: skip
