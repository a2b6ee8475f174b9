"""Measure an artifact against its source: perplexity, KL divergence, top-1 agreement.

The method (docs/quality.md has the full account):

- The corpus becomes one token stream (quantkit.evaluation.corpus), cut into non-overlapping
  chunks of `n_ctx` tokens; the first token of each chunk is BOS where the model adds a BOS,
  and only the second half of each chunk is scored. That is llama.cpp's `llama-perplexity`
  convention, so figures are comparable with the ones people quote.
- The source's next-token distribution P is computed once per (source, corpus, n_ctx,
  engine) and cached. Per scored position the cache keeps P's top-k tokens (ids and
  log-probs), the log-mass of all other tokens ("rest"), `TAIL_SAMPLES` tokens drawn from P
  restricted to the rest (ids and log-probs), and the log-prob of the actual next token.
- The artifact's distribution Q is computed in full. KL(P || Q) = sum over the top-k of
  P log(P/Q) (exact) + the rest's share, estimated as P(rest) x the mean of log(P/Q) over
  the tail samples (unbiased). `kld_mean_lower_bound` is the same head with the rest merged
  into one bucket, P(rest) log(P(rest)/Q(rest)): merging outcomes never raises a KL
  divergence, so that figure is a strict lower bound.
- Top-1 agreement: the share of positions where Q's most likely token is P's, over all
  positions and over those where P's top-1 leads its second by a margin
  (quantkit.evaluation.report, which builds the QualityReport).

The same figures are reported for the tokens inside assistant turns, `<think>` blocks and
`<tool_call>` blocks of the corpus's chat samples.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from ..errors import VerificationError
from ..runtime.memory import release_freed_memory, scored_rows
from .corpus import (
    CorpusError,
    TokenStream,
    build_stream,
    first_difference,
    load_corpus,
)
from .engines import Engine, open_engine
from .kl import BLOCK, compress_rows, kl_divergence
from .reference_cache import (
    CACHE_VERSION,
    Reference,
    cache_key,
    load_reference,
    save_reference,
)
from .report import QualityReport, SpanStats, build_report

__all__ = ["QualityReport", "SpanStats", "TokenizationMismatchError", "evaluate_artifact"]

if TYPE_CHECKING:
    import numpy as np

    from ..source.model import SourceModel

log = logging.getLogger(__name__)

TOP_K = 64  # P's head kept exactly; see docs/quality.md for the choice
TAIL_SAMPLES = 64  # tokens drawn from P's rest per position, for the unbiased tail term
ProgressFn = Callable[[str, int, int], None]


class TokenizationMismatchError(VerificationError):
    """Source and artifact tokenize the corpus differently: their figures cannot be compared."""


def evaluate_artifact(
    artifact: str | Path,
    source: SourceModel | str | Path,
    *,
    corpus: str | Path | None = None,
    n_ctx: int = 512,
    max_chunks: int | None = None,
    top_k: int = TOP_K,
    dtype: str = "float32",
    use_cache: bool = True,
    whole_reference: bool = False,
    progress: ProgressFn | None = None,
) -> QualityReport:
    """Evaluate `artifact` (GGUF file, folder with one GGUF, or transformers folder) against
    `source` (an HF folder / SourceModel, or a GGUF); `corpus` defaults to the shipped one.

    The source's reference comes from the cache when one was made for these chunks or for
    the whole corpus (its first chunks are these); `whole_reference`: when it has to be
    computed, compute it for the whole corpus, so that a later evaluation of every chunk
    (the convert's own, after --quant auto's short probes) finds it cached."""

    started = time.perf_counter()
    if n_ctx < 8 or n_ctx % 2:
        raise CorpusError(f"n_ctx must be an even number of at least 8, got {n_ctx}.")
    source_path = Path(getattr(source, "path", source))
    text = load_corpus(corpus)
    art = open_engine(artifact, n_ctx=n_ctx, dtype=dtype)
    src = open_engine(source_path, n_ctx=n_ctx, dtype=dtype)
    stream = build_stream(text, src)
    _check_same_tokens(stream, build_stream(text, art), src, art)
    n_chunks = _chunk_count(len(stream.ids), n_ctx, max_chunks)
    every_chunk = _chunk_count(len(stream.ids), n_ctx, None)
    sizes = [n_chunks] if n_chunks == every_chunk else [n_chunks, every_chunk]
    ref = _cached_reference(src, stream, text.sha256, n_ctx, sizes, top_k) if use_cache else None
    cached = ref is not None
    if ref is None:
        computed = every_chunk if whole_reference and use_cache else n_chunks
        key = cache_key(src, text.sha256, n_ctx, computed, top_k)
        ref = compute_reference(src, stream, n_ctx, computed, top_k, progress=progress)
        ref.meta.update(key=key, source=str(src.path), corpus=text.name)
        if use_cache:
            save_reference(key, ref)
    ref = ref.head(n_chunks)
    del src
    release_freed_memory()  # the reference model's layers, before the artifact's load
    scores, forward_s = _score_artifact(art, stream, ref, n_ctx, n_chunks, progress)
    parameters = ref.meta.get("parameters")
    report = build_report(
        scores,
        ref,
        artifact=str(art.path),
        source=str(source_path),
        engine=art,
        corpus_name=text.name,
        corpus_sha=text.sha256,
        n_ctx=n_ctx,
        n_chunks=n_chunks,
        top_k=top_k,
        parameters=getattr(source, "parameter_count", None) or parameters,
        cached=cached,
        seconds=time.perf_counter() - started,
        tokens_per_second=n_chunks * n_ctx / forward_s if forward_s > 0 else 0.0,
    )
    return report


def _cached_reference(
    src: Engine, stream: TokenStream, corpus_sha: str, n_ctx: int, sizes: list[int], top_k: int
) -> Reference | None:
    """The first cached reference made for one of `sizes` chunks on these very tokens."""
    import numpy as np

    for chunks in sizes:
        key = cache_key(src, corpus_sha, n_ctx, chunks, top_k)
        ref = load_reference(key)
        if ref is None:
            continue
        if np.array_equal(ref.stream, np.asarray(stream.ids, np.int32)):
            return ref
        log.warning("cached reference %s was made on other tokens; recomputing", key)
    return None


# --- chunks ---------------------------------------------------------------------------------


def _chunk_count(n_tokens: int, n_ctx: int, max_chunks: int | None) -> int:
    chunks = n_tokens // n_ctx
    if max_chunks is not None:
        chunks = min(chunks, max_chunks)
    if chunks < 1:
        raise CorpusError(
            f"The corpus has {n_tokens} tokens, fewer than one chunk of n_ctx={n_ctx}.",
            hint="Use a longer corpus or a smaller --n-ctx.",
        )
    return chunks


def chunk_input(stream: TokenStream, chunk: int, n_ctx: int, bos_id: int | None) -> list[int]:
    """The ids fed for one chunk: BOS replaces the first token where the model adds BOS."""
    ids = list(stream.ids[chunk * n_ctx : (chunk + 1) * n_ctx])
    if bos_id is not None:
        ids[0] = bos_id
    return ids


def _targets(stream: TokenStream, chunk: int, n_ctx: int):
    """The tokens the chunk's scored rows predict, and their span labels."""
    import numpy as np

    rows = scored_rows(n_ctx)
    start = chunk * n_ctx
    targets = np.asarray(stream.ids[start + rows.start + 1 : start + n_ctx], dtype=np.int64)
    labels = np.asarray(stream.labels[start + rows.start + 1 : start + n_ctx], dtype=np.uint8)
    return targets, labels


@dataclass
class _Stopwatch:
    """Seconds spent inside the engine's forward passes."""

    seconds: float = 0.0


def _scored_logits(
    engine: Engine,
    stream: TokenStream,
    n_ctx: int,
    n_chunks: int,
    stopwatch: _Stopwatch,
    progress: ProgressFn | None,
    label: str,
):
    """(chunk, logits of its scored rows) for every chunk, computed `engine.batch_chunks`
    chunks per call: llama.cpp decodes several at once (llama_batch.py)."""
    rows = scored_rows(n_ctx)
    step = engine.batch_chunks(rows.stop - rows.start)
    for first in range(0, n_chunks, step):
        if progress is not None:
            progress(label, first, n_chunks)
        group = range(first, min(first + step, n_chunks))
        ids = [chunk_input(stream, chunk, n_ctx, _bos(engine)) for chunk in group]
        tick = time.perf_counter()
        logits = engine.logits_batch(ids, rows)  # a list, or a generator that computes
        for chunk_and_rows in zip(group, logits, strict=True):  # each chunk's on demand
            stopwatch.seconds += time.perf_counter() - tick
            yield chunk_and_rows
            tick = time.perf_counter()
    if progress is not None:
        progress(label, n_chunks, n_chunks)


def _bos(engine: Engine) -> int | None:
    return engine.bos_id if engine.add_bos else None


# --- the reference --------------------------------------------------------------------------


def compute_reference(
    engine: Engine,
    stream: TokenStream,
    n_ctx: int,
    n_chunks: int,
    top_k: int,
    *,
    tail_samples: int = TAIL_SAMPLES,
    progress: ProgressFn | None = None,
) -> Reference:
    import numpy as np

    engine.load()
    names = ("ids", "logp", "rest", "tail_ids", "tail_logp", "target", "labels")
    parts: dict[str, list[np.ndarray]] = {name: [] for name in names}
    label = "reference logits (source)"
    try:
        for chunk, rows in _scored_logits(
            engine, stream, n_ctx, n_chunks, _Stopwatch(), progress, label
        ):
            targets, labels = _targets(stream, chunk, n_ctx)
            rng = np.random.default_rng([CACHE_VERSION, chunk])
            for lo in range(0, len(targets), BLOCK):
                block = compress_rows(
                    rows[lo : lo + BLOCK], targets[lo : lo + BLOCK], top_k, tail_samples, rng
                )
                for name, value in block.items():
                    parts[name].append(value)
            parts["labels"].append(labels)
    finally:
        engine.close()
    arrays = {name: np.concatenate(values) for name, values in parts.items()}
    return Reference(
        **arrays,
        stream=np.asarray(stream.ids, dtype=np.int32),
        meta={
            "version": CACHE_VERSION,
            "engine": engine.describe(),
            "n_ctx": n_ctx,
            "chunks": n_chunks,
            "top_k": top_k,
            "tail_samples": tail_samples,
            "parameters": engine.parameters,
        },
    )


# --- the artifact ---------------------------------------------------------------------------


def _score_artifact(
    engine: Engine,
    stream: TokenStream,
    ref: Reference,
    n_ctx: int,
    n_chunks: int,
    progress: ProgressFn | None,
):
    import numpy as np

    engine.load()
    nll, kld, kld_lb, top1 = [], [], [], []
    stopwatch = _Stopwatch()
    per_chunk = n_ctx - 1 - n_ctx // 2
    label = f"evaluating artifact ({engine.name})"
    try:
        for chunk, rows in _scored_logits(
            engine, stream, n_ctx, n_chunks, stopwatch, progress, label
        ):
            targets, _ = _targets(stream, chunk, n_ctx)
            sl = slice(chunk * per_chunk, (chunk + 1) * per_chunk)
            if ref.ids[sl].max() >= rows.shape[1] or ref.tail_ids[sl].max() >= rows.shape[1]:
                raise VerificationError(
                    f"The source predicts token ids beyond the artifact's vocabulary of "
                    f"{rows.shape[1]} entries.",
                    hint="Evaluate an artifact against the model it was made from.",
                )
            estimate, bound, log_z = kl_divergence(ref, sl, rows)
            kld.append(estimate)
            kld_lb.append(bound)
            nll.append(log_z - rows[np.arange(len(rows)), targets])
            top1.append(rows.argmax(axis=1) == ref.ids[sl, 0])
    finally:
        engine.close()
    scores = (nll, kld, kld_lb, top1)
    return tuple(np.concatenate(x) for x in scores), stopwatch.seconds


def _check_same_tokens(src_stream: TokenStream, art_stream: TokenStream, src, art) -> None:
    at = first_difference(src_stream.ids, art_stream.ids)
    if at is None:
        return
    window = slice(max(0, at - 3), at + 4)
    raise TokenizationMismatchError(
        f"The artifact ({art.path.name}, {art.name}) tokenizes the eval corpus differently "
        f"from the source ({src.path.name}, {src.name}): first difference at token {at} "
        f"(source {list(src_stream.ids[window])}, artifact {list(art_stream.ids[window])}; "
        f"{len(src_stream.ids)} vs {len(art_stream.ids)} tokens). Perplexity and KL "
        "divergence compare the same token positions, so they cannot be measured.",
        hint="Check the artifact's tokenizer, BOS setting and chat template (quantkit "
        "convert's survival checks), or evaluate against the source it was made from.",
    )
