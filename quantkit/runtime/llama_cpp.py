"""llama.cpp's log, routed to Python logging, and Ctrl-C kept alive through its callbacks.

Every caller that loads llama.cpp (quantization, the importance matrix, inspection, evaluation)
calls `silence_llama_cpp()` first, so the CLI's own output is not drowned in load messages.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager

from .interrupts import entering_callback, leaving_callback, note_swallowed

# ggml.h's enum ggml_log_level (the vendored llama.cpp's; llama-cpp-python's _logger.py
# comment lists an older order): NONE 0, DEBUG 1, INFO 2, WARN 3, ERROR 4, CONT 5.
_LEVELS = {1: logging.DEBUG, 2: logging.INFO, 3: logging.WARNING, 4: logging.ERROR}
_llama_log = logging.getLogger("quantkit.llama_cpp")
_callback = None  # kept alive: llama.cpp holds a raw pointer to it
_last_error = [""]  # llama.cpp's last error-level message: failures are told only there
_captures: list[list[str]] = []  # open captured_log() blocks, innermost last


def last_error() -> str:
    """llama.cpp's last error-level log line ('' if none), e.g. why a write failed."""
    return _last_error[0]


def silence_llama_cpp() -> None:
    """Send llama.cpp's log (per-tensor quantize lines, load messages) to Python logging
    instead of stderr, where it would drown the CLI's own output. QUANTKIT_DEBUG=1 or
    `-v` makes the `quantkit.llama_cpp` logger show it."""
    global _callback
    if _callback is not None:
        return
    import ctypes

    import llama_cpp

    last_level = [logging.DEBUG]

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

    _callback = llama_cpp.llama_log_callback(forward)
    llama_cpp.llama_log_set(_callback, ctypes.c_void_p(0))


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
