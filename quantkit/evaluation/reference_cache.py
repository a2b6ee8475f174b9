"""The source's reference distributions, computed once per (source, corpus, context, chunks,
top-k, engine) and kept in QUANTKIT_CACHE/reference-logits: converting one source to several
types evaluates the source once."""

from __future__ import annotations

import hashlib
import io
import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..disk.atomic import building_file
from ..disk.cache import cache_dir

if TYPE_CHECKING:
    import numpy as np

    from .engines import Engine

log = logging.getLogger(__name__)

CACHE_VERSION = 2


@dataclass
class Reference:
    """The source's distribution at every scored position, top-k compressed."""

    ids: np.ndarray  # (P, k) int32, most likely first
    logp: np.ndarray  # (P, k) float32
    rest: np.ndarray  # (P,) float64: log P(tokens outside the top-k)
    tail_ids: np.ndarray  # (P, m) int32: tokens drawn from P restricted to the rest
    tail_logp: np.ndarray  # (P, m) float32: their log-probs under P
    target: np.ndarray  # (P,) float64: log P(actual next token)
    stream: np.ndarray  # (N,) int32: the token stream it was computed on
    labels: np.ndarray  # (P,) uint8: span bits of each scored position's target
    meta: dict[str, Any]

    def head(self, chunks: int) -> Reference:
        """The reference of the first `chunks` chunks: each chunk is scored on its own and
        its tail samples are seeded by its index, so this equals a reference computed
        for `chunks` chunks alone."""
        total = int(self.meta["chunks"])
        if chunks >= total:
            return self
        rows = len(self.target) // total * chunks
        per_row = ("ids", "logp", "rest", "tail_ids", "tail_logp", "target", "labels")
        sliced = {name: getattr(self, name)[:rows] for name in per_row}
        return Reference(**sliced, stream=self.stream, meta={**self.meta, "chunks": chunks})


def cache_key(engine: Engine, corpus_sha: str, n_ctx: int, n_chunks: int, top_k: int) -> str:
    payload = {
        "version": CACHE_VERSION,
        "source": engine.fingerprint(),
        "corpus": corpus_sha,
        "n_ctx": n_ctx,
        "chunks": n_chunks,
        "engine": engine.describe(),
        "top_k": top_k,
    }
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()


def reference_path(key: str) -> Path:
    return cache_dir() / "reference-logits" / f"{key}.npz"


def load_reference(key: str) -> Reference | None:
    import numpy as np

    path = reference_path(key)
    if not path.is_file():
        return None
    try:
        with np.load(path, allow_pickle=False) as data:
            meta = json.loads(str(data["meta"]))
            return Reference(
                ids=data["ids"],
                logp=data["logp"],
                rest=data["rest"],
                tail_ids=data["tail_ids"],
                tail_logp=data["tail_logp"],
                target=data["target"],
                stream=data["stream"],
                labels=data["labels"],
                meta=meta,
            )
    except (OSError, ValueError, KeyError) as exc:
        log.warning("ignoring unreadable reference cache %s (%s)", path, exc)
        return None


def save_reference(key: str, ref: Reference) -> Path:
    """Write atomically: a temporary file in the same folder, then rename."""
    import numpy as np

    path = reference_path(key)
    buffer = io.BytesIO()
    np.savez_compressed(
        buffer,
        ids=ref.ids,
        logp=ref.logp,
        rest=ref.rest,
        tail_ids=ref.tail_ids,
        tail_logp=ref.tail_logp,
        target=ref.target,
        stream=ref.stream,
        labels=ref.labels,
        meta=np.array(json.dumps(ref.meta, sort_keys=True)),
    )
    with building_file(path, per_process=True) as tmp:
        tmp.write_bytes(buffer.getvalue())
    return path
