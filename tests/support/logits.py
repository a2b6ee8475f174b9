"""Logits of a fixed pair of token sequences from a folder, computed two ways: by the model
transformers loads whole, and by quantkit's layer-streamed model."""

from __future__ import annotations

from pathlib import Path

import torch

from quantkit.source.streamed_model import open_streamed

# Ids every fixture model has (the demo's vocabulary is 49152 tokens)
IDS = torch.tensor([[1, *range(1000, 1047)], [1, *range(5000, 5047)]])


def whole_model_logits(folder: Path, dtype: str) -> torch.Tensor:
    """The logits of IDS from the model transformers loads whole."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(str(folder), dtype=getattr(torch, dtype))
    with torch.inference_mode():
        return model(input_ids=IDS, use_cache=False).logits


def streamed_logits(folder: Path, dtype: str) -> torch.Tensor:
    """The logits of IDS from the layer-streamed model."""
    streamed = open_streamed(folder, dtype)
    try:
        with torch.inference_mode():
            return streamed.model(input_ids=IDS, use_cache=False).logits
    finally:
        streamed.close()
