"""The knobs of the MLX path. The bits and the mixed recipe are the quant name itself
(`--quant 4bit`, `--quant mixed_4_6`: formats.mlx_quants' table), so a folder's name, its
quality gate and its size estimate always agree with what was made."""

from __future__ import annotations

from dataclasses import dataclass

from ...formats.mlx_quants import DEFAULT_GROUP_SIZE


@dataclass(frozen=True)
class MLXOptions:
    group_size: int = DEFAULT_GROUP_SIZE  # input columns per scale/bias pair: 32, 64 or 128
