"""NaN and infinity counted from the bits of float weights, in the pass that reads them.

A float is NaN or infinite when its exponent bits are all ones: infinite when the mantissa
is zero, NaN otherwise. With the sign bit masked off, that is `bits >= EXP` (`== EXP` for
infinity). Healthy data costs one mask and one max reduction over its integer view, 1M
elements at a time into a reused scratch buffer that stays in cache (about 10 GB/s on one
core, a few percent of a GGUF export); only a damaged chunk is counted in detail. Used by
the GGUF writer on its row blocks, by the BF16/FP16 safetensors writer and on the
parameters llmcompressor loads.
"""

from __future__ import annotations

import numpy as np

from ..errors import NonFiniteWeightsError

# safetensors dtype -> (unsigned view, mask without the sign bit, exponent all ones)
_LAYOUT: dict[str, tuple[type[np.unsignedinteger], int, int]] = {
    "BF16": (np.uint16, 0x7FFF, 0x7F80),
    "F16": (np.uint16, 0x7FFF, 0x7C00),
    "F32": (np.uint32, 0x7FFF_FFFF, 0x7F80_0000),
    "F64": (np.uint64, 0x7FFF_FFFF_FFFF_FFFF, 0x7FF0_0000_0000_0000),
}
FLOAT_DTYPES = frozenset(_LAYOUT)
CHUNK = 1 << 20  # elements per pass; a tensor-sized temporary would be 3x slower


def count_nonfinite(data: np.ndarray, dtype: str) -> tuple[int, int]:
    """(NaN count, infinity count) of `data`, the elements of a tensor of safetensors dtype
    `dtype` as stored (BF16 as 16-bit integers; any array of the dtype's item size)."""
    uint, mask, exp = _LAYOUT[dtype]
    flat = data.reshape(-1).view(uint)
    scratch = np.empty(min(CHUNK, flat.size), uint)
    nan = inf = 0
    for start in range(0, flat.size, CHUNK):
        part = flat[start : start + CHUNK]
        magnitude = np.bitwise_and(part, uint(mask), out=scratch[: part.size])
        if magnitude.max() >= exp:
            inf += int(np.count_nonzero(magnitude == exp))
            nan += int(np.count_nonzero(magnitude > exp))
    return nan, inf


class NonFiniteTally:
    """NaN/infinity counts per tensor, added block by block, in the order met."""

    def __init__(self) -> None:
        self.counts: dict[str, tuple[int, int]] = {}

    def add(self, name: str, data: np.ndarray, dtype: str) -> None:
        """Count a block of `name` (as `count_nonfinite` takes it)."""
        self.record(name, *count_nonfinite(data, dtype))

    def record(self, name: str, nan: int, inf: int) -> None:
        """Add counts made elsewhere (torch, on an accelerator)."""
        if nan or inf:
            old_nan, old_inf = self.counts.get(name, (0, 0))
            self.counts[name] = (old_nan + nan, old_inf + inf)

    def __bool__(self) -> bool:
        return bool(self.counts)

    def raise_if_any(self) -> None:
        if self.counts:
            raise NonFiniteWeightsError(self.counts)
