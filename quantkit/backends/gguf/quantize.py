"""K-quants and the other llama.cpp types, made by llama.cpp itself.

We call `llama_model_quantize` through llama-cpp-python rather than reimplementing the
quantizers: the per-tensor type choices of Q4_K_M and friends (Q6_K for some tensors,
fallbacks when a row length is not a multiple of 256) are llama.cpp's, and only llama.cpp
keeps them right as it evolves.
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ...errors import ConversionError, DiskSpaceError, ImatrixError, require

# The keys llama-quantize writes when it is given an imatrix (tools/quantize/quantize.cpp).
from ...formats.gguf_keys import (
    QUANTIZE_IMATRIX_CHUNKS,
    QUANTIZE_IMATRIX_DATASET,
    QUANTIZE_IMATRIX_ENTRIES,
    QUANTIZE_IMATRIX_FILE,
)
from ...formats.quants import gguf_quant
from ...runtime import cpu
from ...runtime.interrupts import raise_if_interrupted
from ...runtime.llama_cpp import captured_log, last_error, silence_llama_cpp

if TYPE_CHECKING:
    from .imatrix.matrix import Imatrix

log = logging.getLogger(__name__)


def quantize_gguf(
    src: Path,
    dst: Path,
    quant: str,
    *,
    threads: int | None = None,
    imatrix: Imatrix | None = None,
    imatrix_file: str = "",
    tensor_types: Mapping[str, str] | None = None,
) -> None:
    """Quantize the (BF16/F16/F32) GGUF `src` into `dst` with llama.cpp's quantizer, with
    the importance matrix `imatrix` if given (`imatrix_file` names it in the metadata).
    `tensor_types` (GGUF name -> ggml type) overrides llama.cpp's choice per tensor, as
    llama-quantize's --tensor-type-file does; `quant` is then the recorded file type."""
    spec = gguf_quant(quant)
    require_imatrix_if_needed(spec, imatrix)
    llama_cpp = require("llama_cpp", "gguf")
    silence_llama_cpp()
    keep: list[Any] = []  # ctypes buffers that must outlive the call
    params = _quantize_params(llama_cpp, spec, threads, imatrix, imatrix_file, tensor_types, keep)
    log.info("llama.cpp: quantizing %s -> %s (%s%s)", src.name, dst.name, spec.name,
             ", with an importance matrix" if imatrix is not None else "")  # fmt: skip
    status = llama_cpp.llama_model_quantize(str(src).encode(), str(dst).encode(), params)
    failed_errno = _c_errno() if status != 0 else 0  # read first: later calls may reset it
    raise_if_interrupted()  # a Ctrl-C during quantization lands in llama.cpp's log callback
    if status != 0 or not dst.is_file():
        _raise_quantize_failure(src, dst, spec.name, status, failed_errno)


def require_imatrix_if_needed(spec: Any, imatrix: Imatrix | None) -> None:
    """The types llama.cpp refuses to make without an importance matrix, refused first."""
    if spec.needs_imatrix and imatrix is None:
        raise ImatrixError(
            f"{spec.name} needs an importance matrix (llama.cpp refuses to make it without).",
            hint="Pass --imatrix auto (computed from the calibration set) or --imatrix FILE.",
        )


def _quantize_params(
    llama_cpp: Any,
    spec: Any,
    threads: int | None,
    imatrix: Imatrix | None,
    imatrix_file: str,
    tensor_types: Mapping[str, str] | None,
    keep: list[Any],
):
    """llama_model_quantize's parameters, as llama-quantize sets them from its flags."""
    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = spec.ftype
    params.nthread = threads or cpu.threads()
    if imatrix is not None:
        matrix, overrides = _imatrix_params(llama_cpp, imatrix, imatrix_file, keep)
        params.imatrix, params.kv_overrides = matrix, overrides
    if tensor_types:
        params.tt_overrides = _tensor_overrides(llama_cpp, tensor_types, keep)
    return params


# One line per tensor of llama_model_quantize's log (llama-quant.cpp's main loop), e.g.
# "[  12/ 201] blk.1.attn_v.weight - [ 4096,  1024,     1,     1], type =   bf16, size =
# 8.000 MiB -> 2.25 MiB (q4_K)"; a tensor kept as it is has no "-> ... (type)".
_TENSOR_LINE = re.compile(
    r"\[\s*\d+/\s*\d+\]\s+(?P<name>\S+)\s+- \[[^\]]*\], type =\s*(?P<old>\w+), "
    r"size =\s*[\d.]+ MiB(?: ->\s*[\d.]+ MiB \((?P<new>\w+)\))?"
)


def llama_tensor_types(
    header: Path,
    quant: str,
    *,
    imatrix: Imatrix | None = None,
    tensor_types: Mapping[str, str] | None = None,
) -> dict[str, str]:
    """The ggml type llama.cpp's quantizer gives each tensor of the GGUF `header` for
    `quant` (GGUF name -> type name, e.g. "Q6_K"), from a dry run: llama.cpp decides and
    logs every tensor's type from the tensor table alone, reading no weight, so `header`
    may be a sparse file holding only the metadata. The importance matrix matters, as it
    changes some choices."""
    spec = gguf_quant(quant)
    llama_cpp = require("llama_cpp", "gguf")
    keep: list[Any] = []
    params = _quantize_params(llama_cpp, spec, 1, imatrix, "", tensor_types, keep)
    params.dry_run = True
    with captured_log() as pieces:
        status = llama_cpp.llama_model_quantize(str(header).encode(), b"", params)
    raise_if_interrupted()
    types = {m["name"]: (m["new"] or m["old"]).upper()
             for m in _TENSOR_LINE.finditer("".join(pieces))}  # fmt: skip
    if status != 0 or not types:
        detail = last_error()
        raise ConversionError(
            f"llama.cpp's dry run for {spec.name} failed (status {status}"
            + (f": {detail})." if detail else ")."),
            hint="Run with QUANTKIT_DEBUG=1 to see llama.cpp's log.",
        )
    return types


def _raise_quantize_failure(
    src: Path, dst: Path, quant: str, status: int, failed_errno: int
) -> None:
    """llama.cpp reports a failed write (disk full, file size limit) only in its log:
    say so in the error, as a disk error when the disk is the reason."""
    import errno
    import shutil

    detail = last_error()
    free = shutil.disk_usage(dst.parent).free
    full = (errno.ENOSPC, errno.EFBIG, errno.EDQUOT)
    # llama.cpp's C++ streams say only "iostream error"; the C library's errno, read as the
    # call returned, still holds why the last write failed.
    if failed_errno in full or free < src.stat().st_size // 4:
        detail = os.strerror(failed_errno) if failed_errno in full else detail
        raise DiskSpaceError(
            f"llama.cpp could not write {dst.name} ({detail or 'write failed'}; "
            f"{free / 1e9:.2f} GB free in {dst.parent}).",
            hint="Free some space or choose an --out folder on a larger disk.",
        )
    raise ConversionError(
        f"llama.cpp could not quantize {src.name} to {quant} (status {status}"
        + (f": {detail})." if detail else ")."),
        hint="Run with QUANTKIT_DEBUG=1 to see llama.cpp's log.",
    )


def _c_errno() -> int:
    import ctypes

    try:
        location = ctypes.CDLL(None).__errno_location
    except (AttributeError, OSError):  # not glibc: no errno to read
        return 0
    location.restype = ctypes.POINTER(ctypes.c_int)  # a pointer, not ctypes' default int
    return location().contents.value


def _tensor_overrides(llama_cpp: Any, tensor_types: Mapping[str, str], keep: list[Any]):
    """The NULL-terminated `llama_model_tensor_override` array: one pattern anchored on each
    tensor's name (recipe.tensor_type_patterns, the lines of the tensor-types file)."""
    import ctypes

    from gguf import GGMLQuantizationType

    from ...formats.gguf_recipe import tensor_type_patterns

    pairs = tensor_type_patterns(dict(tensor_types))
    array = (llama_cpp.llama_model_tensor_override * (len(pairs) + 1))()
    for i, (pattern, ggml_type) in enumerate(pairs):
        array[i].pattern = pattern.encode()
        array[i].type = int(GGMLQuantizationType[ggml_type])
    array[len(pairs)].pattern = None  # terminator
    keep.append(array)
    return ctypes.cast(array, ctypes.POINTER(llama_cpp.llama_model_tensor_override))


def _imatrix_params(llama_cpp: Any, imatrix: Imatrix, file: str, keep: list[Any]):
    """The `llama_model_imatrix_data` array (name, mean squared activation per column, size;
    ended by a NULL name) and the `quantize.imatrix.*` overrides, as llama-quantize builds
    them: sums divided by counts, the file, the first dataset, the entry and chunk counts."""
    import ctypes

    import numpy as np

    str_tag, int_tag = llama_cpp.LLAMA_KV_OVERRIDE_TYPE_STR, llama_cpp.LLAMA_KV_OVERRIDE_TYPE_INT
    entries = (llama_cpp.llama_model_imatrix_data * (len(imatrix.entries) + 1))()
    for i, (name, entry) in enumerate(sorted(imatrix.entries.items())):
        values = entry.mean()
        if not np.isfinite(values).all():  # llama.cpp would throw mid-quantization
            raise ImatrixError(f"The importance matrix has non-finite values for {name}.")
        buffer = (ctypes.c_float * values.size).from_buffer_copy(values.tobytes())
        keep.append(buffer)
        entries[i].name = name.encode()
        entries[i].data = ctypes.cast(buffer, ctypes.POINTER(ctypes.c_float))
        entries[i].size = values.size
    entries[len(imatrix.entries)].name = None  # terminator
    keep.append(entries)

    overrides = imatrix_metadata(imatrix, file)
    kv = (llama_cpp.llama_model_kv_override * (len(overrides) + 1))()
    for i, (key, value) in enumerate(overrides):
        kv[i].key = key.encode()
        if isinstance(value, bytes):
            kv[i].tag, kv[i].value.val_str = str_tag, value
        else:
            kv[i].tag, kv[i].value.val_i64 = int_tag, value
    kv[len(overrides)].key = b""  # terminator: key[0] == 0
    keep.append(kv)
    return (
        ctypes.cast(entries, ctypes.POINTER(llama_cpp.llama_model_imatrix_data)),
        ctypes.cast(kv, ctypes.POINTER(llama_cpp.llama_model_kv_override)),
    )


def imatrix_metadata(imatrix: Imatrix, file: str) -> list[tuple[str, bytes | int]]:
    """The `quantize.imatrix.*` keys llama-quantize records, in its order: the file, the
    first dataset, the entry and chunk counts (strings as the bytes llama.cpp keeps;
    llama.cpp stores the integers as UINT32)."""
    pairs: list[tuple[str, bytes | int]] = [(QUANTIZE_IMATRIX_FILE, kv_string(file))]
    if imatrix.datasets:
        pairs.append((QUANTIZE_IMATRIX_DATASET, kv_string(imatrix.datasets[0])))
    pairs.append((QUANTIZE_IMATRIX_ENTRIES, len(imatrix.entries)))
    if imatrix.chunk_count > 0:
        pairs.append((QUANTIZE_IMATRIX_CHUNKS, imatrix.chunk_count))
    return pairs


KV_STRING_BYTES = 127  # llama_model_kv_override.val_str is char[128], NUL-terminated


def kv_string(text: str) -> bytes:
    """`text` as UTF-8 in at most 127 bytes, cut on a character boundary (llama-quantize
    copies 127 bytes with strncpy, which can split a character; a GGUF string must be
    valid UTF-8)."""
    data = text.encode()
    if len(data) <= KV_STRING_BYTES:
        return data
    return data[:KV_STRING_BYTES].decode("utf-8", errors="ignore").encode()
