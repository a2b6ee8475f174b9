"""`--quant auto`: a llama.cpp type for every tensor, chosen for a byte budget.

    relative_errors  each candidate type on a sample of each tensor's rows (sensitivity.py)
    measure_gains    one KL-divergence gain per tensor role, from probe quantizations
    solve            the multiple-choice knapsack under the budget (planning.mix)
    Recipe           the result, written beside the GGUF and read back by --recipe
                     (formats.gguf_recipe)

choose_recipe runs them in that order on the BF16 model (weights.py: the source shards read
as our BF16 GGUF would hold them, or that file with --keep-intermediate); the quantization
is llama.cpp's type for every tensor the recipe names, through its tensor-type overrides
(quantize.py, or stream_quantize.py straight from the shards: the same bytes).
quantkit.planning.mix holds the parts that read no weights (the knapsack, the file layout,
the plan's preview). docs/quantization.md has the method.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ....formats.gguf_recipe import Recipe
from ....formats.gguf_types import AUTO_TYPES
from ....planning.budget import Budget
from ....planning.mix import FileLayout, mix_items, stock_file_type
from ..options import PROBE_CHUNKS
from .calibrate import measure_gains
from .probes import REFERENCE_TYPE
from .sensitivity import SAMPLE_ELEMENTS, relative_errors

if TYPE_CHECKING:
    from ....evaluation.options import EvalOptions
    from ....planning.model_spec import ModelSpec
    from ....source.model import SourceModel
    from ..imatrix.matrix import Imatrix
    from .weights import BF16Weights

ProgressFn = Callable[[str, int, int], None]


def choose_recipe(
    weights: BF16Weights,
    source: SourceModel,
    budget: Budget,
    *,
    imatrix: Imatrix | None,
    work: Path,
    probe_chunks: int = PROBE_CHUNKS,
    types: tuple[str, ...] = AUTO_TYPES,
    errors: dict[str, dict[str, float]] | None = None,
    evaluation: EvalOptions | None = None,
    progress: ProgressFn | None = None,
) -> Recipe:
    """Measure, calibrate and solve on the BF16 model `weights` of `source` (`errors`: the
    relative errors relative_errors measured, when several budgets share them;
    `evaluation`: the evaluation that follows, whose corpus and reference the probes share).
    The recipe's method records the seconds each stage took."""
    from ....planning.model_spec import spec_from_source

    layout = weights.layout(work)
    started = time.perf_counter()
    measured_errors = errors or relative_errors(weights, imatrix, types=types, progress=progress)
    seconds = {"relative_errors": time.perf_counter() - started}
    errors = {
        name: {t: e for t, e in per_type.items() if t in types}
        for name, per_type in measured_errors.items()
    }
    probe = _probe_types(errors, layout, budget)
    method: dict[str, Any] = {"sample_elements": SAMPLE_ELEMENTS, "types": list(types),
                              "probe_chunks": probe_chunks, "seconds": seconds}  # fmt: skip
    gains: dict[str, float] = {}
    if probe_chunks > 0 and any(t != REFERENCE_TYPE for t in probe.values()):
        started = time.perf_counter()
        measured = measure_gains(weights, source, probe, errors, work, imatrix=imatrix,
                                 chunks=probe_chunks, evaluation=evaluation,
                                 progress=progress, seconds=seconds)  # fmt: skip
        seconds["probes"] = time.perf_counter() - started
        gains = {role: m["gain"] for role, m in measured.items()}
        method["roles"] = measured
    started = time.perf_counter()
    items = mix_items(errors, layout.shapes, gains, budget, layout.tied_head)
    chosen = layout.solve(items, budget)
    seconds["solve"] = time.perf_counter() - started
    expected = layout.file_bytes(chosen)
    return Recipe(
        architecture=layout.architecture,
        file_type=stock_file_type(spec_from_source(source), expected),
        types=chosen, shapes=layout.shapes, budget=budget.to_dict(),
        expected_bytes=expected, method=method, errors=errors,
    )  # fmt: skip


def gguf_architecture(spec: ModelSpec) -> str:
    """general.architecture of the GGUF this model converts to (llama, qwen3)."""
    from ..arch import ARCHITECTURES, arch_name

    known = ARCHITECTURES.get(spec.geometry.architecture)
    return arch_name(known) if known else spec.geometry.model_type


def _probe_types(
    errors: dict[str, dict[str, float]], layout: FileLayout, budget: Budget
) -> dict[str, str]:
    """Per tensor, the type nearest below the budget's mean bits per weight: gains are
    measured where the solver will work (KL divergence is quadratic only near zero). A
    tensor the budget does not count (a GPU profile's input embeddings) gets its best type
    whatever its gain, so it stays at Q8_0 and its role has no probe."""
    from ....formats.gguf_types import bits_per_weight, numel
    from ....planning.mix import tensor_role

    elements = sum(numel(s) for s in layout.shapes.values())
    target = (budget.bytes - layout.overhead(budget)) * 8 / max(elements, 1)
    probe = {}
    for name, per_type in errors.items():
        if not budget.counts(tensor_role(name), layout.tied_head):
            probe[name] = REFERENCE_TYPE
            continue
        below = [t for t in per_type if bits_per_weight(t) <= target]
        pool = below or list(per_type)
        probe[name] = max(pool, key=bits_per_weight) if below else min(pool, key=bits_per_weight)
    return probe
