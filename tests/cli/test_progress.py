"""The convert's progress bar: each stage restarts the bar, so the elapsed time and the
estimate of what remains are the stage's own (a rate carried over from a fast stage would
promise a slow one too soon); json and quiet modes print nothing."""

from __future__ import annotations

import io

import pytest
from rich.console import Console
from rich.progress import Progress, TimeRemainingColumn

from quantkit.cli import console
from quantkit.cli.console import _BarTask


def test_each_stage_gets_its_own_elapsed_time_and_estimate() -> None:
    clock = [0.0]
    bar = Progress(TimeRemainingColumn(), console=Console(file=io.StringIO()),
                   get_time=lambda: clock[0], auto_refresh=False)  # fmt: skip
    task = _BarTask(bar, bar.add_task("converting", total=None))
    for second, done in ((0, 0), (1, 5), (9, 45)):  # 5 tensors a second
        clock[0] = float(second)
        task.update("writing BF16", done, 100)
    state = bar.tasks[0]
    assert state.description == "writing BF16" and state.time_remaining == pytest.approx(11.0)
    clock[0] = 20.0
    task.update("evaluating", 0, 10)
    assert (state.completed, state.total, state.elapsed) == (0, 10, 0.0)
    assert state.time_remaining is None  # no rate yet for this stage
    for second, done in ((25, 1), (30, 2)):  # a chunk in 5 s: 40 s left, not BF16's pace
        clock[0] = float(second)
        task.update("evaluating", done, 10)
    assert state.time_remaining == pytest.approx(40.0)
    assert state.elapsed == pytest.approx(10.0)


def test_json_mode_prints_no_progress(capsys: pytest.CaptureFixture[str]) -> None:
    console.configure(json_mode=True)
    try:
        with console.progress("converting", None) as task:
            task.update("writing", 1, 2)
    finally:
        console.configure()
    captured = capsys.readouterr()
    assert captured.out == "" and captured.err == ""
