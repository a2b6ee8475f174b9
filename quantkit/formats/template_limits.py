"""Limits on every chat-template render: time, size, and the size of numbers.

A chat template is code written by whoever published the model. quantkit renders it during
`convert` (calibration, the checks, the model card) and `inspect`, and hands it to
transformers and llama-cpp-python to compare their renderings; a template that loops for
ever, recurses without end or multiplies a string by 10**9 must fail that one render within
seconds, as a failed check, not hang or exhaust the machine. Two guards, both here:

- `bounded(template, call)`: the render runs on the calling thread; a watchdog thread raises
  `_Timeout` in it (PyThreadState_SetAsyncExc) once RENDER_SECONDS have passed, again every
  second until the render gives up. It works for any renderer, quantkit's own or another
  library's, takes no signal (SIGALRM belongs to quantkit.runtime.interrupts) and costs
  nothing while the render runs. A template that overran once is refused at once after
  that (`_overran`), so a battery of renders costs one timeout per template, not one each.
- `LimitedSandbox`: the environment quantkit renders with. Output over RENDER_MAX_CHARS,
  a string or list that would exceed it (`'x' * 10**9`, `+`, `~`, str.ljust(10**9),
  |center(10**9), |join, |replace), and integers over MAX_INT_BITS (`10**10**10`) are
  refused before they are built, so one operation cannot outlast the deadline in C code.

Another library's renderer has no size limits of its own; quantkit.formats.chat_template
renders the same input in LimitedSandbox first (its `foreign_render`), and hands the
template over only if that stayed within the limits.
"""

from __future__ import annotations

import ctypes
import functools
import os
import re
import threading
import time
from collections.abc import Callable
from typing import Any, TypeVar

T = TypeVar("T")

RENDER_SECONDS = 3.0  # per render; real chat templates take milliseconds
RENDER_MAX_CHARS = 4 * 2**20  # per render's output and per string or list built on the way
MAX_INT_BITS = 2**16  # a number a template computes; chat templates count turns
_REFIRE_S = 1.0  # a timeout swallowed on the way (inside a __del__, say) is raised again
_MB = RENDER_MAX_CHARS // 2**20


class Overrun(BaseException):  # noqa: N818 - not an error of the code, a limit reached
    """A render went past a limit; `reason` completes "The chat template ...".

    A BaseException, so that no `except Exception` inside jinja or another library's
    renderer swallows it on its way out."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class _Timeout(BaseException):
    """Raised asynchronously in the rendering thread by the watchdog."""


def timeout_reason() -> str:
    return f"did not finish rendering within {RENDER_SECONDS:g} s"


def _size_reason(detail: str) -> str:
    return f"rendered more than {_MB} MB ({detail})"


# --- time ------------------------------------------------------------------------------


def _set_async_exc(thread_id: int, exc: type[BaseException] | None) -> None:
    ctypes.pythonapi.PyThreadState_SetAsyncExc(
        ctypes.c_ulong(thread_id), ctypes.py_object(exc) if exc else None
    )


class _Arm:
    __slots__ = ("due", "fired", "thread_id")

    def __init__(self, thread_id: int, due: float) -> None:
        self.thread_id, self.due, self.fired = thread_id, due, False


class _Watchdog:
    """One daemon thread for the process, asleep until the earliest deadline. Arming and
    disarming take a lock and append to or remove from a list; the thread is woken only
    when it sleeps without a deadline (at most once per RENDER_SECONDS of rendering)."""

    def __init__(self) -> None:
        self._reset()
        os.register_at_fork(after_in_child=self._reset)  # a child has no watchdog thread

    def _reset(self) -> None:
        self._cond = threading.Condition(threading.Lock())
        self._arms: list[_Arm] = []
        self._until: float | None = None  # when the thread wakes; None: only when notified
        self._thread: threading.Thread | None = None

    def arm(self, seconds: float) -> _Arm:
        arm = _Arm(threading.get_ident(), time.monotonic() + seconds)
        with self._cond:
            self._arms.append(arm)
            if self._thread is None:
                self._thread = threading.Thread(
                    target=self._run, name="quantkit-template-deadline", daemon=True
                )
                self._thread.start()
            elif self._until is None or arm.due < self._until:
                self._cond.notify()
        return arm

    def disarm(self, arm: _Arm) -> bool:
        """Whether it fired. Once this returns, `arm` raises nothing more anywhere."""
        with self._cond:
            if arm in self._arms:
                self._arms.remove(arm)
            if arm.fired:
                _set_async_exc(arm.thread_id, None)  # one set but not raised yet
            return arm.fired

    def _run(self) -> None:
        with self._cond:
            while True:
                now = time.monotonic()
                for arm in self._arms:
                    if arm.due <= now:
                        arm.fired = True
                        arm.due = now + _REFIRE_S
                        _set_async_exc(arm.thread_id, _Timeout)
                self._until = min((a.due for a in self._arms), default=None)
                self._cond.wait(None if self._until is None else max(self._until - now, 0))


_WATCHDOG = _Watchdog()
_overran: dict[str, str] = {}  # template text -> reason, for the life of the process
_OVERRAN_KEPT = 64


def bounded(template: str, call: Callable[[], T]) -> T:
    """`call()` (one render of `template`, by any renderer) for RENDER_SECONDS at most:
    Overrun when it takes longer, or at once for a template that overran before.

    A function, not a context manager: a timeout that lands as the render ends must still
    find the handler below in this frame, which a context manager's __exit__ would not."""
    reason = _overran.get(template)
    if reason is not None:
        raise Overrun(reason)
    arm = _WATCHDOG.arm(RENDER_SECONDS)
    try:
        try:
            result = call()
        finally:
            fired = _WATCHDOG.disarm(arm)
    except _Timeout:
        _WATCHDOG.disarm(arm)  # again: the timeout may have landed before the first ran
        fired = True
    if fired:
        if len(_overran) >= _OVERRAN_KEPT:
            _overran.clear()
        _overran[template] = timeout_reason()
        raise Overrun(timeout_reason())
    return result


# --- size ------------------------------------------------------------------------------


def _check_len(value: Any) -> Any:
    if isinstance(value, (str, list, tuple)) and len(value) > RENDER_MAX_CHARS:
        raise Overrun(_size_reason(f"a value of {len(value):,} characters or items"))
    return value


def _check_int(value: int, what: str) -> None:
    if value > RENDER_MAX_CHARS:
        raise Overrun(_size_reason(f"{what} {value:,}"))


def _bits_reason(what: str) -> str:
    return f"computed a number of more than {MAX_INT_BITS} bits ({what})"


def _limited_binop(operator: str, left: Any, right: Any) -> None:
    """Refuse, before it runs, an operation whose result would pass a limit."""
    sized = (str, list, tuple)
    if operator == "*":
        if isinstance(left, int) and isinstance(right, int):
            if left.bit_length() + right.bit_length() > MAX_INT_BITS:
                raise Overrun(_bits_reason("a product"))
        elif isinstance(left, sized) and isinstance(right, int):
            _check_int(len(left) * right, "a repetition of length")
        elif isinstance(right, sized) and isinstance(left, int):
            _check_int(len(right) * left, "a repetition of length")
    elif operator == "+" and isinstance(left, sized) and isinstance(right, sized):
        _check_int(len(left) + len(right), "a concatenation of length")
    elif operator == "**" and isinstance(left, int) and isinstance(right, int):
        if abs(left) > 1 and right > 0 and right * left.bit_length() > MAX_INT_BITS:
            raise Overrun(_bits_reason(f"a power with exponent {right:,}"))
    elif operator == "%" and isinstance(left, str):
        _check_format(left)


_WIDTHS = re.compile(r"\d{7,}")


def _check_format(fmt: str) -> None:
    """'%999999999d' % 1, '{:>999999999}'.format(1): a field width past the limit."""
    for digits in _WIDTHS.findall(fmt):
        _check_int(int(digits), "a field width of")


# Calls whose int arguments are sizes of what they build (str methods and filters).
_WIDTH_CALLS = frozenset({"ljust", "rjust", "center", "zfill", "expandtabs", "indent",
                          "batch", "slice", "tojson", "generate_lorem_ipsum"})  # fmt: skip


def _precheck_call(name: str, args: tuple, kwargs: dict[str, Any]) -> None:
    if name in _WIDTH_CALLS:
        for value in (*args, *kwargs.values()):
            if isinstance(value, int) and not isinstance(value, bool):
                _check_int(value, f"{name}() with a size of")
    elif name in ("format", "format_map") and args and isinstance(args[0], str):
        _check_format(args[0])
    elif name == "replace" and len(args) >= 3 and all(isinstance(a, str) for a in args[:3]):
        text, old, new = args[:3]
        copies = text.count(old) if old else len(text) + 1
        _check_int(len(text) + copies * len(new), "a replace() result of")
    elif name == "join" and len(args) >= 2 and isinstance(args[0], str):
        items = args[1]
        if hasattr(items, "__len__"):
            _check_int(len(args[0]) * max(len(items) - 1, 0), "a join() separator total of")


def _limited_filter(name: str, func: Any) -> Any:
    skip = 1 if hasattr(func, "jinja_pass_arg") else 0  # a context or environment first

    @functools.wraps(func)  # keeps jinja's pass_context / pass_environment mark
    def limited(*args: Any, **kwargs: Any) -> Any:
        values = args[skip:]  # the filter's value, then its arguments
        if name == "format" and values and isinstance(values[0], str):
            _check_format(values[0])
        elif name == "join" and values:
            _precheck_call("join", (values[1] if len(values) > 1 else kwargs.get("d", ""),
                                    values[0]), {})  # fmt: skip
        elif name == "replace" and len(values) >= 3:
            _precheck_call("replace", tuple(str(v) for v in values[:3]), {})
        else:
            _precheck_call(name, values[1:], kwargs)
        return _check_len(func(*args, **kwargs))

    return limited


class _LimitedFilters(dict):
    """Filters, each wrapped in the size checks, those added later (tojson) too."""

    def __init__(self, filters: dict[str, Any]) -> None:
        super().__init__()
        for name, func in filters.items():
            self[name] = func

    def __setitem__(self, name: str, func: Any) -> None:
        super().__setitem__(name, _limited_filter(name, func))


def _limited_join(join: Any) -> Any:
    def limited(seq: Any) -> Any:
        seq = list(seq)
        size = sum(len(x) if isinstance(x, str) else len(str(x)) for x in seq)
        _check_int(size, "a ~ concatenation of length")
        return join(seq)

    return limited


def limited_sandbox_class() -> type:
    """ImmutableSandboxedEnvironment with the size limits (jinja2 imported on first use)."""
    return _sandbox_class()


@functools.lru_cache(maxsize=1)
def _sandbox_class() -> type:
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    class LimitedSandbox(ImmutableSandboxedEnvironment):
        # Intercepted operators are also never folded into constants when the template
        # compiles, so `{{ 'x' * 10**9 }}` is refused at render time, not built at compile.
        intercepted_binops = frozenset({"*", "**", "+", "%"})

        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            self.filters = _LimitedFilters(self.filters)

        def call_binop(self, context: Any, operator: str, left: Any, right: Any) -> Any:
            _limited_binop(operator, left, right)
            return _check_len(super().call_binop(context, operator, left, right))

        def call(__self, __context: Any, __obj: Any, *args: Any, **kwargs: Any) -> Any:  # noqa: N805
            target = getattr(__obj, "__wrapped__", __obj)  # str.format, as the sandbox wraps it
            name, owner = getattr(target, "__name__", ""), getattr(target, "__self__", None)
            if isinstance(owner, str) and name in ("format", "format_map"):
                _check_format(owner)
            elif isinstance(owner, str):
                _precheck_call(name, (owner, *args), kwargs)
            else:
                _precheck_call(name, args, kwargs)
            return _check_len(super().call(__context, __obj, *args, **kwargs))

        @staticmethod
        def concat(pieces: Any) -> str:  # the output of the template, a macro or a block
            out, total = [], 0
            for piece in pieces:
                total += len(piece)
                if total > RENDER_MAX_CHARS:
                    raise Overrun(_size_reason("its output"))
                out.append(piece)
            return "".join(out)

        def from_string(self, source: Any, *args: Any, **kwargs: Any) -> Any:
            template = super().from_string(source, *args, **kwargs)
            # `a ~ b` compiles to a call of the module-level str_join / markup_join.
            namespace = template.root_render_func.__globals__
            for join in ("str_join", "markup_join"):
                if join in namespace:
                    namespace[join] = _limited_join(namespace[join])
            return template

    return LimitedSandbox
