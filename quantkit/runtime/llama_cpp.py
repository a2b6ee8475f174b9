"""llama.cpp's log, routed to Python logging, and Ctrl-C kept alive through its callbacks.

Every caller that loads llama.cpp (quantization, the importance matrix, inspection, evaluation)
calls `silence_llama_cpp()` first, so the CLI's own output is not drowned in load messages.
"""

from __future__ import annotations

import logging
import threading

_LEVELS = {1: logging.INFO, 2: logging.WARNING, 3: logging.ERROR, 4: logging.DEBUG}
_llama_log = logging.getLogger("quantkit.llama_cpp")
_callback = None  # kept alive: llama.cpp holds a raw pointer to it
_main = threading.local()  # .depth > 0 while the main thread is in our log callback
_RETRY_S = 0.05


def _redeliver_interrupt() -> None:
    """Ctrl-C that lands while llama.cpp is inside our log callback would be swallowed by
    ctypes (an exception cannot cross the C frames), and the convert would go on as if
    nothing happened. Deliver it again as soon as Python code outside the callback runs."""
    import signal

    def deliver(_signum, _frame) -> None:
        if getattr(_main, "depth", 0):
            signal.setitimer(signal.ITIMER_REAL, _RETRY_S)  # still inside: try again soon
            return
        signal.signal(signal.SIGALRM, signal.SIG_DFL)
        raise KeyboardInterrupt

    signal.signal(signal.SIGALRM, deliver)
    signal.setitimer(signal.ITIMER_REAL, _RETRY_S)


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
        # Level 5 continues the previous message. llama.cpp reports expected events such as
        # K-quant fallbacks at its error level; failures reach us as return codes, so its
        # log is detail, shown at INFO at most (-v).
        # Only the main thread runs Python signal handlers, so only its depth matters.
        _main.depth = getattr(_main, "depth", 0) + 1
        try:
            py_level = last_level[0] if level == 5 else _LEVELS.get(level, logging.DEBUG)
            last_level[0] = py_level
            message = text.decode(errors="replace").rstrip()
            _llama_log.log(min(py_level, logging.INFO), "%s", message)
        except KeyboardInterrupt:
            _redeliver_interrupt()
        finally:
            _main.depth -= 1

    _callback = llama_cpp.llama_log_callback(forward)
    llama_cpp.llama_log_set(_callback, ctypes.c_void_p(0))
