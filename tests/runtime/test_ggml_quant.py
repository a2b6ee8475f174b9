"""ggml's quantizers called on rows, against gguf-py's reference implementations."""

from __future__ import annotations

import numpy as np
import pytest

from quantkit.formats.gguf_types import GAUSSIAN_RELATIVE_ERROR, GGML_TYPES
from quantkit.runtime.ggml_quant import quantize_rows, round_trip, row_bytes


@pytest.mark.parametrize("ggml_type", ["Q8_0", "Q4_0", "Q5_0", "Q6_K", "Q4_K"])
def test_round_trip_matches_gguf_py(ggml_type: str) -> None:
    from gguf import GGMLQuantizationType
    from gguf.quants import dequantize, quantize

    rows = np.random.default_rng(1).standard_normal((8, 512)).astype(np.float32)
    kind = GGMLQuantizationType[ggml_type]
    try:
        reference = dequantize(quantize(rows, kind), kind)
    except NotImplementedError:  # gguf-py has no numpy quantizer for this type
        reference = None
    ours = round_trip(ggml_type, rows, None)
    if reference is not None:
        np.testing.assert_allclose(ours, reference, rtol=0, atol=1e-6)
    assert row_bytes(ggml_type, 512) == 512 // GGML_TYPES[ggml_type][0] * GGML_TYPES[ggml_type][1]


def test_the_importance_matrix_changes_the_rounding() -> None:
    rows = np.random.default_rng(2).standard_normal((16, 256)).astype(np.float32)
    weights = np.ones(256, np.float32)
    weights[:32] = 1000.0  # the first columns matter most
    plain = round_trip("Q4_K", rows, None)
    weighted = round_trip("Q4_K", rows, weights)
    first = np.abs(rows[:, :32] - weighted[:, :32]).mean()
    assert first < np.abs(rows[:, :32] - plain[:, :32]).mean()


@pytest.mark.parametrize("ggml_type", sorted(GAUSSIAN_RELATIVE_ERROR))
def test_the_gaussian_error_table_is_what_ggml_measures(ggml_type: str) -> None:
    rows = np.random.default_rng(0).standard_normal((64, 4096)).astype(np.float32)
    restored = round_trip(ggml_type, rows, np.ones(4096, np.float32))
    measured = float(((rows - restored) ** 2).sum() / (rows**2).sum())
    assert measured == pytest.approx(GAUSSIAN_RELATIVE_ERROR[ggml_type], rel=0.1)


@pytest.mark.parametrize(("n_rows", "threads"), [(7, 3), (64, 2), (1, 4), (3, 2)])
def test_rows_split_between_threads_are_the_same_bytes(n_rows: int, threads: int) -> None:
    rows = np.random.default_rng(3).standard_normal((n_rows, 256)).astype(np.float32)
    weights = np.random.default_rng(4).uniform(0.5, 2.0, 256).astype(np.float32)
    for ggml_type, importance in (("Q4_K", weights), ("Q8_0", None), ("IQ2_XS", weights)):
        alone = quantize_rows(ggml_type, rows, importance)
        split = quantize_rows(ggml_type, rows, importance, threads=threads)
        assert split.tobytes() == alone.tobytes(), ggml_type
