"""Ctrl-C always stops a convert, even when the KeyboardInterrupt lands inside a C
callback (where ctypes swallows it): quantkit.runtime.interrupts."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from quantkit.runtime import interrupts

# A convert in a child process whose GGUF writer is preceded by a Ctrl-C that arrives while
# C code (libc's qsort) is calling back into Python: the KeyboardInterrupt is raised inside
# the ctypes callback, which prints and swallows it. Without the recorded interrupt the
# convert would finish as if nothing happened.
_SWALLOWED_CTRL_C = """
import ctypes, os, signal, sys
import quantkit.backends.gguf.export as export

real_export = export.export_gguf

def export_after_a_swallowed_ctrl_c(*args, **kwargs):
    compare_type = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.c_void_p, ctypes.c_void_p)

    def compare(a, b):
        os.kill(os.getpid(), signal.SIGINT)  # delivered at the next bytecode: in here
        return 0

    values = (ctypes.c_int * 2)(2, 1)
    ctypes.CDLL(None).qsort(values, 2, ctypes.sizeof(ctypes.c_int), compare_type(compare))
    print("qsort returned: the KeyboardInterrupt was swallowed", file=sys.stderr)
    return real_export(*args, **kwargs)

export.export_gguf = export_after_a_swallowed_ctrl_c
from quantkit.cli import main
sys.argv = ["quantkit", "convert", *sys.argv[1:]]
main()
"""


def test_a_ctrl_c_swallowed_by_a_c_callback_still_stops_the_convert(
    demo_model: Path, tmp_path: Path
) -> None:
    out = tmp_path / "out"
    env = {**os.environ, "NO_COLOR": "1"}
    env.pop("QUANTKIT_DEBUG", None)
    proc = subprocess.run(
        [sys.executable, "-c", _SWALLOWED_CTRL_C, str(demo_model), "--format", "gguf",
         "--quant", "Q8_0", "--out", str(out), "--no-eval", "--no-verify"],
        capture_output=True, text=True, env=env, timeout=300,
    )  # fmt: skip
    assert "the KeyboardInterrupt was swallowed" in proc.stderr  # the scenario happened
    assert proc.returncode == 130, proc.stderr[-2000:]
    assert proc.stderr.strip().splitlines()[-1].startswith("error: interrupted")
    assert not out.exists() and not out.with_name("out.partial").exists()
    assert list(tmp_path.iterdir()) == []


def test_recorded_interrupt_is_raised_at_the_next_safe_point() -> None:
    interrupts.clear()
    interrupts.raise_if_interrupted()  # nothing recorded: no-op
    interrupts.note_swallowed()
    try:
        with pytest.raises(KeyboardInterrupt):
            interrupts.raise_if_interrupted()
    finally:
        interrupts.clear()


def test_a_recorded_interrupt_is_raised_once() -> None:
    """Taking it cancels the redelivery timer: no second KeyboardInterrupt lands in the
    clean-up that the first one started, and later work is not interrupted."""
    import time

    interrupts.clear()
    interrupts.note_swallowed()
    with pytest.raises(KeyboardInterrupt):
        interrupts.raise_if_interrupted()
    time.sleep(0.3)  # past the redelivery delay: nothing more arrives
    interrupts.raise_if_interrupted()


def test_installed_handler_records_and_raises() -> None:
    previous = signal.getsignal(signal.SIGINT)
    interrupts.clear()
    try:
        interrupts.install()
        with pytest.raises(KeyboardInterrupt):
            os.kill(os.getpid(), signal.SIGINT)
            signal.sigtimedwait([], 0)  # a bytecode boundary for the handler to run at
        with pytest.raises(KeyboardInterrupt):
            interrupts.raise_if_interrupted()
    finally:
        signal.signal(signal.SIGINT, previous)
        interrupts.clear()


def test_a_ctrl_c_in_a_marked_callback_is_deferred_even_before_its_try() -> None:
    """The SIGINT handler, stopped in a `called_from_c` function (at its first bytecode, say,
    before the function's own `try`), records the Ctrl-C instead of raising it there, where
    ctypes would print a traceback and swallow it; anywhere else it raises."""
    frames = []

    @interrupts.called_from_c
    def callback() -> None:
        frames.append(sys._getframe())

    callback()
    interrupts.clear()
    try:
        interrupts._on_sigint(signal.SIGINT, frames[0])  # no KeyboardInterrupt here ...
        with pytest.raises(KeyboardInterrupt):  # ... it is delivered at the next safe point
            interrupts.raise_if_interrupted()
        with pytest.raises(KeyboardInterrupt):
            interrupts._on_sigint(signal.SIGINT, sys._getframe())
    finally:
        interrupts.clear()


def test_a_ctrl_c_inside_a_marked_callback_prints_nothing_and_stops_the_convert(
    demo_model: Path, tmp_path: Path
) -> None:
    """As the swallowed Ctrl-C above, but in a callback marked `called_from_c` (as
    llama.cpp's log callback is): no traceback from ctypes, and the convert still stops."""
    marked = _SWALLOWED_CTRL_C.replace(
        "    def compare(a, b):",
        "    from quantkit.runtime.interrupts import called_from_c\n\n"
        "    @called_from_c\n    def compare(a, b):",
    ).replace("the KeyboardInterrupt was swallowed", "qsort returned")
    out = tmp_path / "out"
    env = {**os.environ, "NO_COLOR": "1"}
    env.pop("QUANTKIT_DEBUG", None)
    proc = subprocess.run(
        [sys.executable, "-c", marked, str(demo_model), "--format", "gguf", "--quant", "Q8_0",
         "--out", str(out), "--no-eval", "--no-verify"],
        capture_output=True, text=True, env=env, timeout=300,
    )  # fmt: skip
    assert "qsort returned" in proc.stderr  # the Ctrl-C arrived inside the callback
    assert "Traceback" not in proc.stderr and "Exception ignored" not in proc.stderr
    assert proc.returncode == 130, proc.stderr[-2000:]
    assert proc.stderr.strip().splitlines()[-1].startswith("error: interrupted")
    assert not out.exists() and not out.with_name("out.partial").exists()


# Ctrl-C at each stage of a convert, delivered by the stage itself as it starts (a real
# SIGINT to the process): exit 130, one line, no OUT, no OUT.partial, no partial files.
_CTRL_C_AT = """
import importlib, os, signal, sys
module_name, attribute = sys.argv[1], sys.argv[2]
module = importlib.import_module(module_name)
real = getattr(module, attribute)

def interrupted(*args, **kwargs):
    os.kill(os.getpid(), signal.SIGINT)
    return real(*args, **kwargs)

setattr(module, attribute, interrupted)
from quantkit.cli import main
sys.argv = ["quantkit", "convert", *sys.argv[3:]]
main()
"""

STAGES = {  # stage -> (module, function it starts with, whether the convert evaluates)
    "source": ("quantkit.pipeline", "load_source", False),
    "writer": ("quantkit.backends.gguf.export", "export_gguf", False),  # Q8_0, below
    "imatrix": ("quantkit.backends.gguf.imatrix.source_pass", "compute_imatrix_from_source",
                False),
    "quantize": ("quantkit.backends.gguf.backend", "quantize_from_shards", False),
    "checks": ("quantkit.inspection.convert_checks", "check_converted", False),
    "evaluation": ("quantkit.evaluation.measure", "evaluate_artifact", True),
    "card": ("quantkit.pipeline", "_write_card", False),
}


@pytest.mark.slow
@pytest.mark.parametrize("stage", sorted(STAGES))
def test_ctrl_c_at_any_stage_leaves_nothing(stage: str, demo_model: Path, tmp_path: Path) -> None:
    module, attribute, evaluates = STAGES[stage]
    # Q4_K_M is quantized from the shards; quantkit's own writer makes Q8_0 (no imatrix)
    quant = ["--quant", "Q8_0"] if stage == "writer" else ["--quant", "Q4_K_M", "--imatrix", "auto"]
    out = tmp_path / "work" / "out"
    cache = tmp_path / "cache"  # its own: another test worker's may hold live .partials
    env = {**os.environ, "NO_COLOR": "1", "QUANTKIT_CACHE": str(cache)}
    env.pop("QUANTKIT_DEBUG", None)
    proc = subprocess.run(
        [sys.executable, "-c", _CTRL_C_AT, module, attribute, str(demo_model),
         "--format", "gguf", *quant, "--out", str(out), *([] if evaluates else ["--no-eval"])],
        capture_output=True, text=True, env=env, timeout=600,
    )  # fmt: skip
    assert proc.returncode == 130, proc.stderr[-2000:]
    assert proc.stderr.strip().splitlines()[-1].startswith("error: interrupted")
    assert "Traceback" not in proc.stderr
    assert not (tmp_path / "work").exists() or list((tmp_path / "work").iterdir()) == []
    assert [p for p in cache.rglob("*") if ".partial" in p.name] == []
