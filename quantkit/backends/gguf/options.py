"""The knobs of the GGUF path: the intermediate file, the token-type policy, the
pre-tokenizer and the importance matrix."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path


@dataclass(frozen=True)
class GGUFOptions:
    keep_intermediate: bool = False  # keep the BF16 GGUF the quantizer read
    token_types: Mapping[str, str] = field(default_factory=dict)  # '<think>': 'control'
    pre_tokenizer: str | None = None  # skip detection (only if you know better)
    imatrix: str | Path | None = None  # "auto", a file, "none"; None: the type/profile default
