"""The arithmetic of the quality report: P's compressed form (top-k head, rest mass, tail
samples) and KL(P || Q) from it. docs/quality.md explains the estimator."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import numpy as np

    from .reference_cache import Reference


def _normalizer(rows: np.ndarray):
    """exp(rows - max) in float64 and the log normalizer of each row."""
    import numpy as np

    top = rows.max(axis=1, keepdims=True).astype(np.float64)
    # In place: the same values as np.exp(rows.astype(np.float64) - top), in one row-sized
    # float64 array instead of three (each a fresh mapping the kernel zero-fills: ~40 % of
    # this function's time on a 128k-token vocabulary).
    expd = rows.astype(np.float64)
    expd -= top
    np.exp(expd, out=expd)
    total = expd.sum(axis=1)
    return expd, total, top[:, 0] + np.log(total)


BLOCK = 64  # rows at a time: 64 x 152k vocab x 8 bytes stays under 80 MB per array


def compress_rows(rows, targets, top_k: int, tail_samples: int, rng) -> dict[str, np.ndarray]:
    """P's top-k, rest mass, tail samples and target log-prob for a block of logit rows."""
    import numpy as np

    expd, total, log_z = _normalizer(rows)
    rank = np.arange(len(rows))[:, None]
    order = np.argpartition(-rows, top_k - 1, axis=1)[:, :top_k]
    picked = np.take_along_axis(rows, order, axis=1)
    order = np.take_along_axis(order, np.argsort(-picked, axis=1, kind="stable"), axis=1)
    expd[rank, order] = 0.0  # what is left is the rest, unnormalised
    cumulative = np.cumsum(expd, axis=1)
    rest = cumulative[:, -1]
    draws = rng.random((len(rows), tail_samples)) * rest[:, None]
    tail = np.stack(
        [np.searchsorted(c, d, side="right") for c, d in zip(cumulative, draws, strict=True)]
    )
    tail = np.minimum(tail, rows.shape[1] - 1)
    with np.errstate(divide="ignore"):
        log_rest = np.log(rest / total)
    return {
        "ids": order.astype(np.int32),
        "logp": (rows[rank, order] - log_z[:, None]).astype(np.float32),
        "rest": log_rest,
        "tail_ids": tail.astype(np.int32),
        "tail_logp": (rows[rank, tail] - log_z[:, None]).astype(np.float32),
        "target": rows[np.arange(len(rows)), targets] - log_z,
    }


def kl_divergence(ref: Reference, sl: slice, rows):
    """Per position: the estimate and the lower bound of KL(P || Q), and Q's log
    normalizer, from P's cached head, rest mass and tail samples and Q's full logit rows."""
    import numpy as np

    expd, total, log_z = _normalizer(rows)
    rank = np.arange(len(rows))[:, None]
    log_p = ref.logp[sl].astype(np.float64)
    log_q = rows[rank, ref.ids[sl]] - log_z[:, None]
    head = (np.exp(log_p) * (log_p - log_q)).sum(axis=1)
    p_rest = np.exp(ref.rest[sl])
    # Q(rest): Q's mass outside P's top-k, summed from the unnormalised exps (no 1 - x).
    q_rest = np.maximum(total - expd[rank, ref.ids[sl]].sum(axis=1), 0.0) / total
    with np.errstate(divide="ignore", invalid="ignore"):
        bucket = np.where(p_rest > 0, p_rest * (ref.rest[sl] - np.log(q_rest)), 0.0)
    log_q_tail = rows[rank, ref.tail_ids[sl]] - log_z[:, None]
    tail = p_rest * (ref.tail_logp[sl].astype(np.float64) - log_q_tail).mean(axis=1)
    return head + tail, head + bucket, log_z
