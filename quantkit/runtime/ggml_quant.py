"""ggml's own quantizers and dequantizers, called on rows of floats.

`--quant auto` estimates what each llama.cpp type would cost a tensor by quantizing a sample
of its rows with the very kernels llama-quantize uses (`ggml_quantize_chunk`, with the
importance matrix) and reading them back with the type's `to_float`. Both live in the
libggml-base that llama-cpp-python ships; gguf-py's numpy quantizers cover only some types
and ignore the importance matrix, so they would measure a different quantizer.
"""

from __future__ import annotations

import ctypes
from concurrent.futures import ThreadPoolExecutor
from functools import cache
from typing import TYPE_CHECKING

from .llama_cpp import library_folder

if TYPE_CHECKING:
    import numpy as np


class _TypeTraits(ctypes.Structure):
    # ggml.h's struct ggml_type_traits, up to the fields read here
    _fields_ = [
        ("type_name", ctypes.c_char_p),
        ("blck_size", ctypes.c_int64),
        ("blck_size_interleave", ctypes.c_int64),
        ("type_size", ctypes.c_size_t),
        ("is_quantized", ctypes.c_bool),
        ("to_float", ctypes.c_void_p),
        ("from_float_ref", ctypes.c_void_p),
    ]


_TO_FLOAT = ctypes.CFUNCTYPE(None, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int64)


@cache
def _libggml() -> ctypes.CDLL:
    lib = ctypes.CDLL(str(library_folder() / "libggml-base.so"))
    lib.ggml_quantize_chunk.restype = ctypes.c_size_t
    lib.ggml_quantize_chunk.argtypes = [
        ctypes.c_int, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int64, ctypes.c_int64,
        ctypes.c_int64, ctypes.c_void_p,
    ]  # fmt: skip
    lib.ggml_get_type_traits.restype = ctypes.POINTER(_TypeTraits)
    lib.ggml_get_type_traits.argtypes = [ctypes.c_int]
    lib.ggml_quantize_requires_imatrix.restype = ctypes.c_bool
    lib.ggml_quantize_requires_imatrix.argtypes = [ctypes.c_int]
    lib.ggml_row_size.restype = ctypes.c_size_t
    lib.ggml_validate_row_data.restype = ctypes.c_bool
    lib.ggml_validate_row_data.argtypes = [ctypes.c_int, ctypes.c_void_p, ctypes.c_size_t]
    lib.ggml_row_size.argtypes = [ctypes.c_int, ctypes.c_int64]
    return lib


def type_id(ggml_type: str) -> int:
    from gguf import GGMLQuantizationType

    return int(GGMLQuantizationType[ggml_type])


def row_bytes(ggml_type: str, row: int) -> int:
    """Bytes of one row of `row` elements in `ggml_type`, as ggml counts them."""
    return int(_libggml().ggml_row_size(type_id(ggml_type), row))


# Spans handed out per thread: more spans than threads, taken as each thread comes free, so
# a thread slowed by other work on its core (a read-ahead thread) does not hold up the rest.
SPANS_PER_THREAD = 4


def quantize_rows(
    ggml_type: str, rows: np.ndarray, importance: np.ndarray | None, *, threads: int = 1
) -> np.ndarray:
    """`rows` (float32 [n, row]) quantized to `ggml_type` by ggml_quantize_chunk with the
    per-column `importance` (llama.cpp's imatrix values) where given: the bytes llama.cpp's
    quantizer writes for them. `threads` split the rows, as llama.cpp's quantizer does:
    rows are quantized independently, so the split changes no byte."""
    import numpy as np

    lib = _libggml()
    tid = type_id(ggml_type)
    src = np.ascontiguousarray(rows, dtype=np.float32)
    n_rows, n_per_row = src.shape
    if importance is None and lib.ggml_quantize_requires_imatrix(tid):
        # ggml would abort the whole process (GGML_ASSERT) rather than fail
        raise ValueError(f"{ggml_type} cannot be quantized without importance weights.")
    packed = np.empty(n_rows * row_bytes(ggml_type, n_per_row), dtype=np.uint8)
    weights = None
    if importance is not None:
        weights = np.ascontiguousarray(importance, dtype=np.float32)
        if weights.shape != (n_per_row,):
            raise ValueError(f"importance has shape {weights.shape}, rows have {n_per_row}")

    def quantize(first: int, count: int) -> None:
        # ggml_quantize_chunk writes rows first.. at their own offset in `packed`.
        lib.ggml_quantize_chunk(
            tid, src.ctypes.data, packed.ctypes.data, first * n_per_row, count, n_per_row,
            None if weights is None else weights.ctypes.data,
        )  # fmt: skip

    spans = _row_spans(n_rows, SPANS_PER_THREAD * threads if threads > 1 else 1)
    if len(spans) == 1:
        quantize(*spans[0])
        return packed
    # ggml_quantize_init (called inside) guards its shared grids with ggml's critical
    # section, and ctypes releases the GIL: threads quantize side by side.
    with ThreadPoolExecutor(threads) as pool:
        list(pool.map(lambda span: quantize(*span), spans))
    return packed


def _row_spans(n_rows: int, parts: int) -> list[tuple[int, int]]:
    """(first row, count) of `parts` near-equal spans of at least two rows each."""
    parts = max(1, min(parts, n_rows // 2))
    bounds = [n_rows * k // parts for k in range(parts + 1)]
    return [(a, b - a) for a, b in zip(bounds, bounds[1:], strict=False)]


def valid_rows(ggml_type: str, packed: np.ndarray) -> bool:
    """ggml's own check of quantized rows (finite scales, in-range values), which
    llama.cpp's quantizer runs on every chunk it writes."""
    return bool(_libggml().ggml_validate_row_data(type_id(ggml_type), packed.ctypes.data,
                                                  packed.nbytes))  # fmt: skip


def round_trip(ggml_type: str, rows: np.ndarray, importance: np.ndarray | None) -> np.ndarray:
    """`rows` quantized by `quantize_rows` and dequantized again."""
    import numpy as np

    packed = quantize_rows(ggml_type, rows, importance)
    out = np.empty(np.shape(rows), dtype=np.float32)
    tid = type_id(ggml_type)
    to_float = _TO_FLOAT(_libggml().ggml_get_type_traits(tid).contents.to_float)
    to_float(packed.ctypes.data, out.ctypes.data, out.size)
    return out
