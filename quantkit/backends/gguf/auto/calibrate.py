"""From relative errors to expected KL divergence: one gain per tensor role, measured.

The relative output error of a tensor says how much noise a type adds where the tensor
writes, not how much of it reaches the logits: an attn_v and an ffn_up with the same
relative error do not cost the same. To first order KL divergence is quadratic in small
perturbations, and perturbations of different tensors add, so the expected KL divergence of
a mix is modelled as sum over tensors of gain[role] x relative error[tensor, type].

Each gain is measured: the model is quantized with one role's tensors at the probe type
(the auto type nearest the budget's bits per weight) and every other tensor at Q8_0, and its
mean KL divergence against the source, less that of the all-Q8_0 file, divided by the
role's summed relative errors at the probe type. One quantization and one short evaluation
per role (docs/quantization.md gives the costs and where the model fails).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from ....planning.mix import tensor_role
from ..quantize import quantize_gguf

if TYPE_CHECKING:
    from ....source.model import SourceModel
    from ..imatrix.matrix import Imatrix

log = logging.getLogger(__name__)

REFERENCE_TYPE = "Q8_0"  # every tensor not being probed; its own error is the baseline
MIN_GAIN_SHARE = 0.01  # a role whose probe moved KLD by less than noise keeps 1% of the mean
ProgressFn = Callable[[str, int, int], None]


def measure_gains(
    bf16: Path,
    source: SourceModel,
    probe: dict[str, str],
    errors: dict[str, dict[str, float]],
    work: Path,
    *,
    imatrix: Imatrix | None,
    chunks: int,
    progress: ProgressFn | None = None,
) -> dict[str, dict[str, float]]:
    """role -> {gain, kld (the probe file's mean KLD), baseline}: see the module doc."""
    roles = sorted({tensor_role(n) for n in probe if probe[n] != REFERENCE_TYPE})
    steps = len(roles) + 1
    baseline = _probe_kld(bf16, source, {}, probe, work, imatrix, chunks)
    if progress is not None:
        progress("measuring KL divergence per tensor role", 1, steps)
    measured: dict[str, dict[str, float]] = {}
    for done, role in enumerate(roles, start=2):
        kld = _probe_kld(bf16, source, {role}, probe, work, imatrix, chunks)
        error = sum(errors[n][probe[n]] for n in probe if tensor_role(n) == role)
        measured[role] = {"kld": kld, "baseline": baseline, "relative_error": error}
        if progress is not None:
            progress("measuring KL divergence per tensor role", done, steps)
    return _gains(measured)


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
    bf16: Path,
    source: SourceModel,
    roles: set[str],
    probe: dict[str, str],
    work: Path,
    imatrix: Imatrix | None,
    chunks: int,
) -> float:
    from ....evaluation.measure import evaluate_artifact

    types = {n: probe[n] if tensor_role(n) in roles else REFERENCE_TYPE for n in probe}
    path = work / "auto-probe.gguf"
    try:
        quantize_gguf(bf16, path, "Q8_0", imatrix=imatrix, tensor_types=types)
        # as the convert's own evaluation: bfloat16 reference logits past ~2B parameters
        dtype = "float32" if source.parameter_count < 2e9 else "bfloat16"
        report = evaluate_artifact(path, source, max_chunks=chunks, dtype=dtype)
    finally:
        path.unlink(missing_ok=True)
    log.info("auto probe %s: mean KLD %.5f", ",".join(sorted(roles)) or "all Q8_0",
             report.kld_mean)  # fmt: skip
    return float(report.kld_mean)
