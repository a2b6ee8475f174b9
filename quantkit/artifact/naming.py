"""The artifact's name: the one function behind the file `convert` writes and the file
`quantkit plan`'s run command names (`llama-server -m ...`, `vllm serve ./...`)."""

from __future__ import annotations

import re

from ..formats.quants import ArtifactFormat


def safe_model_name(model_name: str) -> str:
    """The model name with characters that trouble shells and URLs replaced by `-`."""
    return re.sub(r"[^A-Za-z0-9._-]+", "-", model_name).strip("-") or "model"


def artifact_name(model_name: str, fmt: str, quant: str) -> str:
    """`<ModelName>-<QUANT>.gguf` for a GGUF file, `<ModelName>-<QUANT>` for a safetensors
    folder (FP8, GPTQ, BF16/FP16); an MLX folder keeps mlx-lm's spelling (`-4bit`, as
    mlx-community names them)."""
    suffix = quant if fmt == ArtifactFormat.MLX else quant.upper()
    base = f"{safe_model_name(model_name)}-{suffix}"
    return f"{base}.gguf" if fmt == ArtifactFormat.GGUF else base
