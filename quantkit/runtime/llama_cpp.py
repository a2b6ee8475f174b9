"""llama.cpp's log, routed to Python logging, and Ctrl-C kept alive through its callbacks;
and whether a model is loaded with its weights repacked.

Every caller that loads llama.cpp (quantization, the importance matrix, inspection, evaluation)
calls `silence_llama_cpp()` first, so the CLI's own output is not drowned in load messages.

Repacking: llama.cpp's CPU backend copies the weight matrices of some types
(`repacked_types`: with AVX2 Q4_0, Q4_K, IQ4_NL and MXFP4; Q2_K too with AVX-512) into
interleaved layouts in anonymous memory when it loads a model,
for its faster kernels: as much RAM again as those weights (2.9 GB at 8B Q4_K_M, about 40 GB
at 70B). Without it the weights stay memory-mapped (the RAM they take is the page cache's
to give back), the kernels are the plain ones, which round differently
(docs/quality.md, "Engines"), and the matrix products are slower. It is on, as in
llama.cpp, unless a caller turns it off for a block (`weights_repacked(False)`); every
load of a GGUF for checks or evaluation follows it (`model_params`, `open_llama`,
llama-server's `--no-repack`).
"""

from __future__ import annotations

import contextvars
import logging
from collections.abc import Iterator
from contextlib import contextmanager
from functools import cache
from pathlib import Path
from typing import Any

from ..errors import MissingDependencyError, require
from .interrupts import called_from_c, entering_callback, leaving_callback, note_swallowed

# ggml.h's enum ggml_log_level (the vendored llama.cpp's; llama-cpp-python's _logger.py
# comment lists an older order): NONE 0, DEBUG 1, INFO 2, WARN 3, ERROR 4, CONT 5.
_LEVELS = {1: logging.DEBUG, 2: logging.INFO, 3: logging.WARNING, 4: logging.ERROR}
_llama_log = logging.getLogger("quantkit.llama_cpp")
_callback = None  # kept alive: llama.cpp holds a raw pointer to it
_last_error = [""]  # llama.cpp's last error-level message: failures are told only there
_captures: list[list[str]] = []  # open captured_log() blocks, innermost last
_repack = contextvars.ContextVar("quantkit_llama_cpp_repack", default=True)


def last_error() -> str:
    """llama.cpp's last error-level log line ('' if none), e.g. why a write failed."""
    return _last_error[0]


def library_folder() -> Path:
    """The folder of llama-cpp-python's shared libraries (libllama, libggml, ...)."""
    llama_cpp = require("llama_cpp", "gguf")
    return Path(llama_cpp.__file__).parent / "lib"


def cpu_features() -> str:
    """What llama.cpp's CPU kernels were built to use, as llama.cpp says it ("CPU : SSE3 =
    1 | ... | AVX512 = 1 | ..."): scripts/setup.sh builds them for this machine's CPU."""
    llama_cpp = require("llama_cpp", "gguf")
    return llama_cpp.llama_print_system_info().decode(errors="replace").strip()


def silence_llama_cpp() -> None:
    """Send llama.cpp's log (per-tensor quantize lines, load messages) to Python logging
    instead of stderr, where it would drown the CLI's own output. QUANTKIT_DEBUG=1 or
    `-v` makes the `quantkit.llama_cpp` logger show it. Installed again on every call
    (cheap): other code may have set a callback of its own since, and llama.cpp keeps one."""
    import ctypes

    import llama_cpp

    global _callback
    if _callback is None:
        _callback = llama_cpp.llama_log_callback(_forward_log())
    llama_cpp.llama_log_set(_callback, ctypes.c_void_p(0))


def _forward_log():
    """llama.cpp's log callback: each piece to the open captures and Python logging."""
    import ctypes

    last_level = [logging.DEBUG]

    @called_from_c
    def forward(level: int, text: bytes, _user: ctypes.c_void_p) -> None:
        # Level 5 continues the previous message. Failures reach us as return codes and
        # their reason as an error-level line (kept for the error message); the log itself
        # is detail, shown at INFO at most (-v).
        entering_callback()
        try:
            py_level = last_level[0] if level == 5 else _LEVELS.get(level, logging.DEBUG)
            last_level[0] = py_level
            raw = text.decode(errors="replace")
            for capture in _captures:
                capture.append(raw)
            message = raw.rstrip()
            if py_level >= logging.ERROR and message:
                _last_error[0] = message
            _llama_log.log(min(py_level, logging.INFO), "%s", message)
        except KeyboardInterrupt:
            note_swallowed()  # raised again once llama.cpp returns (runtime/interrupts.py)
        finally:
            leaving_callback()

    return forward


@contextmanager
def captured_log() -> Iterator[list[str]]:
    """Every piece of llama.cpp's log written inside the block, as written (a message may
    come in several pieces: join them). For the few answers llama.cpp gives only in its
    log, such as the per-tensor types of a quantization dry run."""
    silence_llama_cpp()
    pieces: list[str] = []
    _captures.append(pieces)
    try:
        yield pieces
    finally:
        _captures[:] = [c for c in _captures if c is not pieces]  # by identity


@contextmanager
def weights_repacked(enabled: bool | None) -> Iterator[None]:
    """Inside the block, GGUFs are loaded with llama.cpp's weight repacking on or off
    (None: as the enclosing block has it, so that a library call made inside a convert's
    block keeps the convert's choice)."""
    token = _repack.set(repacking() if enabled is None else enabled)
    try:
        yield
    finally:
        _repack.reset(token)


def repacking() -> bool:
    """Whether GGUFs loaded now get llama.cpp's weight repacking (its default: on)."""
    return _repack.get()


# ggml-cpu/repack.cpp's ggml_repack_get_optimal_repack_type, for x86 builds: the types whose
# weight matrices get an interleaved copy (given rows in multiples of 8), by the instruction
# sets the build's kernels use. Arm builds repack more (Q5_K, Q6_K and Q8_0 with dot-product
# or int8 matrix instructions): all of them are counted there, an upper bound.
_REPACKED_X86_AVX2 = frozenset({"Q4_0", "Q4_K", "IQ4_NL", "MXFP4"})
_REPACKED_X86_AVX512 = _REPACKED_X86_AVX2 | {"Q2_K"}
_REPACKED_ARM = _REPACKED_X86_AVX2 | {"Q5_K", "Q6_K", "Q8_0"}


@cache
def repacked_types() -> frozenset[str]:
    """The GGUF types whose weight matrices llama.cpp's CPU backend copies into interleaved
    layouts when it loads a model, with this build's kernels (`cpu_features`). Where
    llama-cpp-python is missing: the AVX2 build's."""
    import platform

    try:
        features = cpu_features()
    except MissingDependencyError:  # planning without the gguf extra
        return _REPACKED_X86_AVX2
    if platform.machine().lower() in ("arm64", "aarch64"):
        return _REPACKED_ARM
    if "AVX512 = 1" in features:
        return _REPACKED_X86_AVX512
    return _REPACKED_X86_AVX2 if "AVX2 = 1" in features else frozenset()


def model_params(repack: bool | None = None) -> Any:
    """llama.cpp's default model parameters, with weight repacking `repack` (None: this
    block's)."""
    import llama_cpp

    params = llama_cpp.llama_model_default_params()
    params.use_extra_bufts = repacking() if repack is None else repack
    return params


def open_llama(path: Path, **kwargs: Any) -> Any:
    """llama-cpp-python's `Llama` on `path`, loaded with the repacking of this block.
    `Llama` takes no such argument and builds its parameters from
    `llama_model_default_params()` inside its constructor: for the constructor's duration
    that function gives this block's (the checks construct one model at a time)."""
    import llama_cpp.llama_cpp as lib
    from llama_cpp import Llama

    if repacking():
        return Llama(model_path=str(path), **kwargs)
    original = lib.llama_model_default_params

    def without_repacking():
        params = original()
        params.use_extra_bufts = False
        return params

    lib.llama_model_default_params = without_repacking
    try:
        return Llama(model_path=str(path), **kwargs)
    finally:
        lib.llama_model_default_params = original
