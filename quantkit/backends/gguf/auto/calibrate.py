"""From relative errors to expected KL divergence: one gain per tensor role, measured.

The relative output error of a tensor says how much noise a type adds where the tensor
writes, not how much of it reaches the logits: an attn_v and an ffn_up with the same
relative error do not cost the same. To first order KL divergence is quadratic in small
perturbations, and perturbations of different tensors add, so the expected KL divergence of
a mix is modelled as sum over tensors of gain[role] x relative error[tensor, type].

Each gain is measured: the model is quantized with one role's tensors in every other layer
at the probe type (the auto type nearest the budget's bits per weight) and every other
tensor at Q8_0, and its mean KL divergence against the source, less that of the all-Q8_0
file, divided by the summed relative errors of exactly the tensors the probe changed. One
pass over the BF16 model (the source shards, or the BF16 file) writes every probe's shards
(probes.py), then one short evaluation per role, on the first chunks of the convert's own
evaluation corpus (docs/quantization.md gives the costs and where the model fails).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from ....evaluation.options import EvalOptions, reference_dtype
from .probes import ProbeSet, build_probe_set

if TYPE_CHECKING:
    from ....source.model import SourceModel
    from ..imatrix.matrix import Imatrix
    from .weights import BF16Weights

log = logging.getLogger(__name__)

MIN_GAIN_SHARE = 0.01  # a role whose probe moved KLD by less than noise keeps 1% of the mean
ProgressFn = Callable[[str, int, int], None]


def measure_gains(
    weights: BF16Weights,
    source: SourceModel,
    probe: dict[str, str],
    errors: dict[str, dict[str, float]],
    work: Path,
    *,
    imatrix: Imatrix | None,
    chunks: int,
    evaluation: EvalOptions | None = None,
    progress: ProgressFn | None = None,
    seconds: dict[str, float] | None = None,
) -> dict[str, dict[str, float]]:
    """role -> {gain, kld (the probe file's mean KLD), baseline, relative_error and tensors
    (of the tensors the probe changed)}: see the module doc. `evaluation`: the convert's own
    evaluation to come (its corpus and context; the first probe computes its whole
    reference, which it then reuses), None when there is none. `seconds` gets the time of
    the probe files, of the baseline probe (with the reference) and of the role probes."""
    seconds = {} if seconds is None else seconds
    stage = "quantizing the probe files"
    if progress is not None:
        progress(stage, 0, 1)
    started = time.perf_counter()
    probes = build_probe_set(weights, probe, work, imatrix)
    seconds["probe_files"] = time.perf_counter() - started
    if progress is not None:
        progress(stage, 1, 1)
    shared = evaluation or EvalOptions(enabled=False)
    try:
        measured = _measure_roles(probes, source, probe, errors, chunks, shared, progress,
                                  seconds)  # fmt: skip
    finally:
        probes.remove()
    return _gains(measured)


def _measure_roles(
    probes: ProbeSet,
    source: SourceModel,
    probe: dict[str, str],
    errors: dict[str, dict[str, float]],
    chunks: int,
    evaluation: EvalOptions,
    progress: ProgressFn | None,
    seconds: dict[str, float],
) -> dict[str, dict[str, float]]:
    """The all-Q8_0 baseline first, then one probe per role: its KLD and the summed errors
    of the tensors it changed."""
    stage = "measuring KL divergence per tensor role"

    def probe_kld(roles: set[str]) -> float:
        path = probes.probe(roles, "-".join(sorted(roles)) or "baseline")
        return _probe_kld(path, source, roles, chunks, evaluation)

    started = time.perf_counter()
    baseline = probe_kld(set())
    seconds["probe_baseline"] = time.perf_counter() - started
    started = time.perf_counter()
    if progress is not None:
        progress(stage, 1, probes.count)
    measured: dict[str, dict[str, float]] = {}
    for done, role in enumerate(probes.roles, start=2):
        kld = probe_kld({role})
        changed = probes.changed[role]  # every other layer's: probes.py
        error = sum(errors[n][probe[n]] for n in changed)
        measured[role] = {"kld": kld, "baseline": baseline, "relative_error": error,
                          "tensors": len(changed)}  # fmt: skip
        if progress is not None:
            progress(stage, done, probes.count)
    seconds["probe_roles"] = time.perf_counter() - started
    return measured


def _gains(measured: dict[str, dict[str, float]]) -> dict[str, dict[str, float]]:
    raw = {
        role: max(m["kld"] - m["baseline"], 0.0) / m["relative_error"]
        for role, m in measured.items()
        if m["relative_error"] > 0
    }
    floor = MIN_GAIN_SHARE * (sum(raw.values()) / len(raw)) if raw else 1.0
    out = {}
    for role, m in measured.items():
        out[role] = {**m, "gain": max(raw.get(role, floor), floor)}
    return out


def _probe_kld(
    path: Path, source: SourceModel, roles: set[str], chunks: int, evaluation: EvalOptions
) -> float:
    from ....evaluation.measure import evaluate_artifact

    dtype = reference_dtype(source.parameter_count)  # the convert's own, so it is shared
    report = evaluate_artifact(path, source, corpus=evaluation.corpus, n_ctx=evaluation.n_ctx,
                               max_chunks=chunks, dtype=dtype,
                               whole_reference=evaluation.enabled)  # fmt: skip
    log.info("auto probe %s: mean KLD %.5f", ",".join(sorted(roles)) or "all Q8_0",
             report.kld_mean)  # fmt: skip
    return float(report.kld_mean)
