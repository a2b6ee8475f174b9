"""How much each llama.cpp type would hurt each tensor, measured on a sample of its rows.

For a weight W that multiplies activations x, quantization adds (W - W')x to the output.
With the importance matrix's mean squared activation per input column, E[x_j^2], and
columns taken as uncorrelated, the expected squared output error of a row is
sum_j E[x_j^2] (w_j - w'_j)^2: the same weighting llama.cpp's quantizers minimise. Divided
by sum_j E[x_j^2] w_j^2, the output's own energy, it becomes a relative error that compares
across tensors of different scales. Its mean over the rows (output channels) is the figure
kept per (tensor, type): a ratio of sums would be ruled by the few rows with outlier weights
and swing by orders of magnitude between two samples of the same tensor.

Rows are sampled (about SAMPLE_ELEMENTS weights per tensor, at least MIN_ROWS rows, a fixed
seed): the figure is a mean over rows, and a few hundred thousand weights pin it to within a
few per cent at a small share of a full quantization's cost (docs/quantization.md). The
types are quantized and read back by ggml itself (quantkit.runtime.ggml_quant), one type
per thread.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from ....formats.gguf_types import AUTO_TYPES, auto_candidates
from ....planning.mix import quantizable
from ....runtime import cpu
from ....runtime.ggml_quant import round_trip
from ....runtime.interrupts import raise_if_interrupted

if TYPE_CHECKING:
    import numpy as np

    from ..imatrix.matrix import Imatrix
    from .weights import BF16Weights

SAMPLE_ELEMENTS = 1 << 18
MIN_ROWS = 16
ProgressFn = Callable[[str, int, int], None]


def relative_errors(
    weights: BF16Weights,
    imatrix: Imatrix | None,
    *,
    sample_elements: int = SAMPLE_ELEMENTS,
    seed: int = 0,
    threads: int | None = None,
    types: tuple[str, ...] = AUTO_TYPES,
    progress: ProgressFn | None = None,
) -> dict[str, dict[str, float]]:
    """tensor name -> {ggml type -> relative output error} for every quantizable tensor of
    the BF16 model `weights` (weights.py), for each of `types` that fits its rows."""
    from concurrent.futures import ThreadPoolExecutor

    import numpy as np

    tensors = [t for t in weights.tensors if quantizable(t.name, t.shape)]
    rng = np.random.default_rng(seed)
    errors: dict[str, dict[str, float]] = {}
    with ThreadPoolExecutor(max_workers=threads or cpu.threads()) as pool:
        for done, tensor in enumerate(tensors):
            if progress is not None:
                progress("measuring each type on each tensor", done, len(tensors))
            count = min(max(MIN_ROWS, sample_elements // tensor.row), tensor.n_rows)
            picked = np.sort(rng.choice(tensor.n_rows, size=count, replace=False))
            rows = weights.sample(tensor, picked)
            importance = _importance(imatrix, tensor.name, tensor.row)
            fitting = auto_candidates(tensor.shape, types, imatrix=importance is not None)
            measured = pool.map(lambda t, r=rows, i=importance: tensor_error(t, r, i), fitting)
            errors[tensor.name] = dict(zip(fitting, measured, strict=True))
            raise_if_interrupted()
    if progress is not None:
        progress("measuring each type on each tensor", len(tensors), len(tensors))
    return errors


def tensor_error(ggml_type: str, rows: np.ndarray, importance: np.ndarray | None) -> float:
    """The mean over `rows` of sum E[x^2] (w - w')^2 / sum E[x^2] w^2, for `ggml_type`."""
    import numpy as np

    weights = np.ones(rows.shape[1], np.float32) if importance is None else importance
    restored = round_trip(ggml_type, rows, importance)
    signal = (rows.astype(np.float64) ** 2) @ weights
    noise = ((rows - restored).astype(np.float64) ** 2) @ weights
    live = signal > 0
    return float(np.mean(noise[live] / signal[live])) if live.any() else 0.0


def _importance(imatrix: Imatrix | None, name: str, columns: int) -> np.ndarray | None:
    if imatrix is None or name not in imatrix.entries:
        return None
    values = imatrix.entries[name].mean()
    if values.size != columns:  # a 3-D experts tensor: one row of values per matrix
        return None
    return values.astype("float32")
