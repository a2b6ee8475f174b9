"""The knobs of the safetensors paths: shard size and lm_head for every folder, the GPTQ
algorithm and layout for W4A16."""

from __future__ import annotations

from dataclasses import dataclass

from .export import DEFAULT_MAX_SHARD_SIZE


@dataclass(frozen=True)
class SafetensorsOptions:
    max_shard_size: int = DEFAULT_MAX_SHARD_SIZE
    quantize_lm_head: bool = False  # FP8/GPTQ: quantize lm_head too


@dataclass(frozen=True)
class GPTQOptions:
    group_size: int = 128
    actorder: bool = False
    dampening: float = 0.01
    layout: str = "compressed-tensors"  # or "gptq": the classic layout beside it
