"""Ctrl-C that always stops a convert.

Python turns SIGINT into KeyboardInterrupt at the next bytecode of the main thread. When
that bytecode belongs to a ctypes callback (llama.cpp's log and progress callbacks, ours
or llama-cpp-python's), the exception cannot cross the C frames: ctypes prints it and
swallows it, and the convert would go on as if nothing happened. Two remedies:

- quantkit's own callbacks (`called_from_c`) do not let it be raised inside them: the
  SIGINT handler defers a Ctrl-C that lands anywhere in one of them, their first and last
  bytecodes included, and the callbacks catch one raised in code they call
  (`note_swallowed()`); it is raised again by a short SIGALRM timer as soon as the main
  thread runs Python code outside every callback, or earlier by `raise_if_interrupted()`;
- the CLI `install()`s a SIGINT handler that records every Ctrl-C, so one swallowed by a
  callback that is not ours is raised again by `raise_if_interrupted()` at the next safe
  point (every progress step, after llama.cpp's quantizer returns, between the pipeline's
  stages and last of all before the artifact folder is renamed into place).

A recorded interrupt is raised once: taking it clears it and cancels the timer, so a second
KeyboardInterrupt never lands in the clean-up that the first one started. Without
`install()` (quantkit as a library) Python's own handler stays in place.
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Callable
from types import FrameType
from typing import Any, TypeVar

F = TypeVar("F", bound=Callable[..., Any])

_pending = threading.Event()
_callbacks = threading.local()  # .depth > 0 while this thread runs inside a C callback
_RETRY_S = 0.05  # how soon a swallowed Ctrl-C is tried again


def install() -> None:
    """Record every SIGINT before raising KeyboardInterrupt (main thread only)."""
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGINT, _on_sigint)


_callback_codes: set[object] = set()  # the code of every called_from_c function


def called_from_c(fn: F) -> F:
    """Mark `fn` as a callback C code calls (through ctypes). A Ctrl-C that lands in it,
    even before its `try` (where it would otherwise be raised, printed by ctypes with a
    traceback and swallowed), is deferred until it has returned to C and C to Python."""
    _callback_codes.add(fn.__code__)
    return fn


def _in_callback(frame: FrameType | None) -> bool:
    """Whether the main thread, stopped at `frame` for a signal, is inside a C callback."""
    return bool(getattr(_callbacks, "depth", 0)) or (
        frame is not None and frame.f_code in _callback_codes
    )


def _on_sigint(_signum: int, frame: FrameType | None) -> None:
    if _in_callback(frame):
        note_swallowed()
        return
    _pending.set()
    raise KeyboardInterrupt


def entering_callback() -> None:
    """Called first thing in a C callback; `leaving_callback()` in its `finally`."""
    _callbacks.depth = getattr(_callbacks, "depth", 0) + 1


def leaving_callback() -> None:
    _callbacks.depth -= 1


def note_swallowed() -> None:
    """A KeyboardInterrupt was caught inside a C callback, where it cannot propagate:
    deliver it again as soon as the main thread is out of every callback."""
    _pending.set()
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGALRM, _deliver)
        signal.setitimer(signal.ITIMER_REAL, _RETRY_S)


def _deliver(_signum: int, frame: FrameType | None) -> None:
    if _in_callback(frame):
        signal.setitimer(signal.ITIMER_REAL, _RETRY_S)  # still inside: try again soon
        return
    raise_if_interrupted()


def raise_if_interrupted() -> None:
    """Raise KeyboardInterrupt if a Ctrl-C arrived and has not stopped the work yet."""
    if _take():
        raise KeyboardInterrupt


def _take() -> bool:
    was_pending = _pending.is_set()
    _pending.clear()
    if was_pending and threading.current_thread() is threading.main_thread():
        signal.setitimer(signal.ITIMER_REAL, 0)  # no second delivery
        signal.signal(signal.SIGALRM, signal.SIG_DFL)
    return was_pending


def clear() -> None:
    """Forget a recorded interrupt (tests)."""
    _take()
