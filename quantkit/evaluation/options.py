"""Whether and how `quantkit convert` measures its artifact against the source."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class EvalOptions:
    enabled: bool = True  # perplexity / KL divergence / top-1 against the source
    gate: bool = True  # a failed quality gate quarantines the artifact and fails the convert
    corpus: str | Path | None = None  # None: the shipped corpus
    n_ctx: int = 512  # tokens per chunk
