"""Whether and how `quantkit convert` measures its artifact against the source."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


def reference_dtype(parameters: int) -> str:
    """The dtype of the convert's reference logits (and of --quant auto's probes, which share
    them): runtime.cpu.eval_dtype (docs/quality.md)."""
    from ..runtime.cpu import eval_dtype

    return eval_dtype(parameters)


@dataclass(frozen=True)
class EvalOptions:
    enabled: bool = True  # perplexity / KL divergence / top-1 against the source
    gate: bool = True  # a failed quality gate quarantines the artifact and fails the convert
    corpus: str | Path | None = None  # None: the shipped corpus
    n_ctx: int = 512  # tokens per chunk
