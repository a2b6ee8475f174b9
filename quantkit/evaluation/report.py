"""The QualityReport and the figures in it, from the per-position scores of an evaluation.

Top-1 agreement is reported twice (docs/quality.md, "Top-1 agreement"):
- `top1_agreement`: over every scored position, as llama-perplexity's "Same top p";
- `top1_agreement_confident`: over the positions where the source's most likely token leads
  the runner-up by at least `CONFIDENCE_MARGIN` of probability, the only positions where a
  different argmax says the artifact changed the distribution by a fair amount (flipping
  the argmax there takes KL >= margin^2 / 2 at that position, by Pinsker's inequality). On a
  near-flat source (a random-weight model) no position qualifies and the figure is None.
The margin comes from P's cached top-k (its first two log-probs): no new cached data.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

from .corpus import SPAN_NAMES

if TYPE_CHECKING:
    import numpy as np

    from .engines import Engine
    from .reference_cache import Reference

CONFIDENCE_MARGIN = 0.1  # P(top-1) - P(top-2) at which a position's top-1 counts


@dataclass(frozen=True)
class SpanStats:
    tokens: int
    perplexity: float | None
    reference_perplexity: float | None
    kld_mean: float | None
    kld_p99: float | None
    top1_agreement: float | None
    top1_agreement_confident: float | None = None
    confident_positions: int | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class QualityReport:
    artifact: str
    source: str
    engine: str  # the artifact's engine: "llama.cpp" or "transformers"
    engine_detail: str
    reference_engine: str
    corpus: str
    corpus_sha256: str
    n_ctx: int
    chunks: int
    tokens: int  # scored positions (second halves of the chunks)
    perplexity: float
    reference_perplexity: float
    ppl_ratio: float
    kld_mean: float
    kld_mean_lower_bound: float  # head + merged rest bucket: never above the exact KLD
    kld_median: float
    kld_p99: float
    kld_max: float
    top1_agreement: float  # every scored position (llama-perplexity's "Same top p")
    top_k: int
    rest_mass_mean: float  # mean P(rest): how much of P the top-k cache leaves out
    spans: dict[str, SpanStats] = field(default_factory=dict)
    parameters: int | None = None  # of the source, for the tiny-model gate floor
    reference_cached: bool = False
    seconds: float = 0.0
    tokens_per_second: float = 0.0  # artifact forward pass, all n_ctx tokens of each chunk
    # positions where P(top-1) - P(top-2) >= confidence_margin; None: not measured (older
    # reports); top1_agreement_confident is None when no position is confident
    top1_agreement_confident: float | None = None
    confident_positions: int | None = None
    confidence_margin: float = CONFIDENCE_MARGIN
    # per chunk, in corpus order: mean KLD and mean negative log-likelihood of its scored
    # positions, for paired comparisons of two artifacts on the same chunks
    chunk_kld: tuple[float, ...] = ()
    chunk_nll: tuple[float, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["spans"] = {name: stats.to_dict() for name, stats in self.spans.items()}
        data["chunk_kld"], data["chunk_nll"] = list(self.chunk_kld), list(self.chunk_nll)
        return data


def confident_positions(ref: Reference, margin: float = CONFIDENCE_MARGIN):
    """Mask of the positions where P's top-1 probability leads its second by >= margin."""
    import numpy as np

    p = np.exp(ref.logp[:, :2].astype(np.float64))
    return (p[:, 0] - p[:, 1]) >= margin


def build_report(scores, ref: Reference, *, engine: Engine, **info: Any) -> QualityReport:
    import numpy as np

    nll, kld, kld_lb, top1 = scores
    ref_nll = -ref.target
    confident = confident_positions(ref)
    spans = {}
    for name, bit in SPAN_NAMES.items():
        mask = (ref.labels & bit) != 0
        spans[name] = _span_stats(nll[mask], ref_nll[mask], kld[mask], top1[mask], confident[mask])
    ppl = float(np.exp(nll.mean()))
    ref_ppl = float(np.exp(ref_nll.mean()))
    return QualityReport(
        artifact=info["artifact"],
        source=info["source"],
        engine=engine.name,
        engine_detail=engine.describe(),
        reference_engine=str(ref.meta.get("engine")),
        corpus=info["corpus_name"],
        corpus_sha256=info["corpus_sha"],
        n_ctx=info["n_ctx"],
        chunks=info["n_chunks"],
        tokens=int(len(nll)),
        perplexity=ppl,
        reference_perplexity=ref_ppl,
        ppl_ratio=ppl / ref_ppl,
        kld_mean=float(kld.mean()),
        kld_mean_lower_bound=float(kld_lb.mean()),
        kld_median=float(np.median(kld)),
        kld_p99=float(np.percentile(kld, 99)),
        kld_max=float(kld.max()),
        top1_agreement=float(top1.mean()),
        top_k=info["top_k"],
        rest_mass_mean=float(np.exp(ref.rest).mean()),
        spans=spans,
        parameters=info["parameters"],
        reference_cached=info["cached"],
        seconds=info["seconds"],
        tokens_per_second=info["tokens_per_second"],
        top1_agreement_confident=_share(top1[confident]),
        confident_positions=int(confident.sum()),
        chunk_kld=_per_chunk(kld, info["n_chunks"]),
        chunk_nll=_per_chunk(nll, info["n_chunks"]),
    )


def _per_chunk(values, n_chunks: int) -> tuple[float, ...]:
    """Every chunk scores the same number of positions (the second half of n_ctx)."""
    return tuple(float(v) for v in values.reshape(n_chunks, -1).mean(axis=1))


def _share(agree) -> float | None:
    return float(agree.mean()) if len(agree) else None


def _span_stats(nll, ref_nll, kld, top1, confident: np.ndarray) -> SpanStats:
    import numpy as np

    if len(nll) == 0:
        return SpanStats(0, None, None, None, None, None, None, 0)
    return SpanStats(
        tokens=int(len(nll)),
        perplexity=float(np.exp(nll.mean())),
        reference_perplexity=float(np.exp(ref_nll.mean())),
        kld_mean=float(kld.mean()),
        kld_p99=float(np.percentile(kld, 99)),
        top1_agreement=float(top1.mean()),
        top1_agreement_confident=_share(top1[confident]),
        confident_positions=int(confident.sum()),
    )
