"""The one output sink: everything user-facing is printed from here.

Library code logs through `logging`; the CLI calls these helpers. In --json mode the
human-facing output goes to stderr (or nowhere with --quiet) so stdout carries exactly
one JSON document.
"""

from __future__ import annotations

import contextlib
import json
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
)


@dataclass
class OutputMode:
    json: bool = False
    quiet: bool = False


_mode = OutputMode()
_out = Console()
_err = Console(stderr=True)


def configure(*, json_mode: bool = False, quiet: bool = False) -> None:
    _mode.json = json_mode
    _mode.quiet = quiet


def human() -> Console | None:
    """The console for human-facing text, or None when it must stay quiet."""
    if _mode.quiet:
        return None
    return _err if _mode.json else _out


def print_text(*objects: Any, style: str | None = None) -> None:
    con = human()
    if con is not None:
        con.print(*objects, style=style)


def print_json(payload: Any) -> None:
    sys.stdout.write(json.dumps(payload, indent=2, sort_keys=True, default=str) + "\n")
    sys.stdout.flush()


def print_error(message: str) -> None:
    from rich.markup import escape

    _err.print(f"[bold red]error:[/] {escape(message)}", highlight=False, soft_wrap=True)


@contextlib.contextmanager
def progress(description: str, total: int | None) -> Iterator[Any]:
    """A progress bar on a terminal; a silent stand-in in json/quiet mode or in a pipe."""
    con = human()
    if con is None or not con.is_terminal:
        yield _SilentTask()
        return
    bar = Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=con,
        transient=True,
    )
    with bar:
        task_id = bar.add_task(description, total=total)
        yield _BarTask(bar, task_id)


class _SilentTask:
    def update(self, stage: str, done: int, total: int) -> None:
        pass


class _BarTask:
    def __init__(self, bar: Progress, task_id: Any) -> None:
        self._bar = bar
        self._task_id = task_id

    def update(self, stage: str, done: int, total: int) -> None:
        self._bar.update(self._task_id, description=stage, completed=done, total=total)
