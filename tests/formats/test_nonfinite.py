"""NaN and infinity counted from the bits of BF16/F16/F32/F64 data."""

from __future__ import annotations

import numpy as np
import pytest

from quantkit.errors import NonFiniteWeightsError
from quantkit.formats.nonfinite import NonFiniteTally, count_nonfinite

SPECIALS = [np.nan, -np.nan, np.inf, -np.inf, np.inf]  # 2 NaN, 3 inf


def _bf16(values: np.ndarray) -> np.ndarray:
    return (values.astype(np.float32).view(np.uint32) >> 16).astype(np.uint16)


@pytest.mark.parametrize("dtype", ["BF16", "F16", "F32", "F64"])
def test_counts_nan_and_inf_not_large_finite(dtype: str) -> None:
    largest = {"BF16": 3.3e38, "F16": 65504.0, "F32": 3.4e38, "F64": 1.7e308}[dtype]
    finite = np.array([0.0, -0.0, 1.5, -2.0, largest, -largest, 1e-40])
    as_dtype = {"BF16": _bf16, "F16": lambda v: v.astype(np.float16)}
    convert = as_dtype.get(dtype, lambda v: v.astype({"F32": np.float32}.get(dtype, np.float64)))
    with np.errstate(over="ignore"):
        assert count_nonfinite(convert(finite), dtype) == (0, 0)
        assert count_nonfinite(convert(np.array([*finite, *SPECIALS])), dtype) == (2, 3)
    assert count_nonfinite(convert(np.array([])), dtype) == (0, 0)


def test_tally_adds_blocks_and_names_the_first_tensors() -> None:
    tally = NonFiniteTally()
    tally.add("a", np.array([np.nan, 1.0], np.float32), "F32")
    tally.add("b", np.ones(4, np.float32), "F32")
    tally.add("a", np.array([np.inf], np.float32), "F32")
    for i in range(6):
        tally.record(f"t{i}", 0, i + 1)
    assert list(tally.counts)[:2] == ["a", "t0"] and tally.counts["a"] == (1, 1)
    with pytest.raises(NonFiniteWeightsError) as info:
        tally.raise_if_any()
    message = str(info.value)
    assert "in 7 tensor(s) (1 NaN, 22 inf in all): a (1 NaN, 1 inf), t0 (1 inf)" in message
    assert "t3 (4 inf) and 2 more tensor(s);" in message and "t4" not in message
    NonFiniteTally().raise_if_any()  # nothing counted: nothing raised
