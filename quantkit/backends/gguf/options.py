"""The knobs of the GGUF path: the intermediate file, the token-type policy, the
pre-tokenizer, the importance matrix and `--quant auto`'s budget or recipe."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

# Evaluation chunks (512 tokens) per role probe of --quant auto. On the demo model 1 chunk
# gives mixes within 1-5% of the mean KLD of 4 chunks' at a third of the probes' time, and
# at 8B the probes' evaluations are most of auto's cost (docs/quantization.md).
PROBE_CHUNKS = 1


@dataclass(frozen=True)
class GGUFOptions:
    keep_intermediate: bool = False  # quantize through a BF16 GGUF, and keep it
    token_types: Mapping[str, str] = field(default_factory=dict)  # '<think>': 'control'
    pre_tokenizer: str | None = None  # skip detection (only if you know better)
    imatrix: str | Path | None = None  # "auto", a file, "none"; None: the type/profile default
    # --quant auto: the budget (one of max_size, bpw, else the profile's memory), or a recipe
    max_size: str | None = None  # "20GB": the file's size
    bpw: float | None = None  # bits per weight over the whole file
    recipe: str | Path | None = None  # a .recipe.json to apply instead of choosing
    auto_probe_chunks: int = PROBE_CHUNKS  # per role probe; 0: no probes, every gain is 1
    # llama.cpp's weight repacking while the artifact is checked and evaluated
    # (runtime.llama_cpp); None: on unless its copy would not fit (planning.cost.choose_repack)
    repack: bool | None = None
