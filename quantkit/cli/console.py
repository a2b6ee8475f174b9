"""The one output sink: everything user-facing is printed from here.

Library code logs through `logging`; the CLI calls these helpers. In --json mode the
human-facing output goes to stderr (or nowhere with --quiet) so stdout carries exactly
one JSON document.

Identifiers and numbers (profile names, quant types, file names, sizes, hashes) are never
cut: rich would end them in "…" to fit 80 columns, so tables are laid out here (print_table)
and, when output is not a terminal, the width is a generous PIPE_WIDTH unless COLUMNS says
otherwise.
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)


@dataclass
class OutputMode:
    json: bool = False
    quiet: bool = False


# A pipe, a CI log or `| less` has no width of its own; rich would assume 80 and squeeze.
# Wide enough for every table quantkit prints at its natural width.
PIPE_WIDTH = 200

_mode = OutputMode()


def _console(*, stderr: bool) -> Console:
    # Made per call, not at import: whether stdout is a terminal (and COLUMNS) can differ
    # between import and use, e.g. under typer's CliRunner.
    con = Console(stderr=stderr)
    if not con.is_terminal and "COLUMNS" not in os.environ:
        con = Console(stderr=stderr, width=PIPE_WIDTH)
    return con


def configure(*, json_mode: bool = False, quiet: bool = False) -> None:
    _mode.json = json_mode
    _mode.quiet = quiet


def human() -> Console | None:
    """The console for human-facing text, or None when it must stay quiet."""
    if _mode.quiet:
        return None
    return _console(stderr=_mode.json)


def print_text(*objects: Any, style: str | None = None, soft_wrap: bool = False) -> None:
    """soft_wrap=True for lines meant to be copied (commands, paths): never broken by a
    newline; the terminal folds them visually."""
    con = human()
    if con is not None:
        con.print(*objects, style=style, soft_wrap=soft_wrap)


@dataclass(frozen=True)
class Col:
    """A table column. keep=True (identifiers: names, quant types, hashes) is kept on one
    line while the console allows; the others wrap at spaces, so their words (numbers too)
    stay whole. Nothing is ever cut: a word that cannot fit folds onto the next line."""

    header: str
    keep: bool = False
    justify: Literal["left", "right", "center"] = "left"


def print_table(
    columns: Sequence[Col], rows: Iterable[Sequence[str]], *, title: str | None = None
) -> None:
    """A rich table (cells may hold markup), laid out here because rich, short of room,
    ends words in "…" or squeezes a column to nothing."""
    con = human()
    if con is None:
        return
    from rich.table import Column, Table

    rows = [list(row) for row in rows]
    cells = [[c.header, *(row[i] for row in rows)] for i, c in enumerate(columns)]
    lines = [[line for cell in col for line in _plain(cell).split("\n")] for col in cells]
    natural = [max(map(cell_len, col)) for col in lines]
    words = [max(cell_len(w) for line in col for w in [*line.split(), ""]) for col in lines]
    overhead = 3 * len(columns) + 1  # the default box: a rule and a space each side
    widths = _layout([c.keep for c in columns], natural, words, con.width - overhead)
    table = Table(
        *(
            Column(c.header, justify=c.justify, width=w, overflow="fold")
            for c, w in zip(columns, widths, strict=True)
        ),
        title=title,
    )
    for row in rows:
        table.add_row(*row)
    if widths[0] is not None:
        # Fresh console per call (human()): widening it changes nothing else.
        con.width = max(con.width, sum(w or 0 for w in widths) + overhead)
    con.print(table)


_FOLD_MIN = 4  # narrowest a column gets when everything must fold


def _layout(
    keep: list[bool], natural: list[int], words: list[int], available: int
) -> list[int | None]:
    """Content widths for `available` columns of content (None: natural widths fit).

    Kept columns get their natural width; the other columns get their longest word,
    shortest words first (so numbers and short names stay whole and only long words
    fold), then share what is left by what they would still use. When not even the kept
    columns fit, every column folds, in proportion to its natural width."""
    if sum(natural) <= available:
        return [None] * len(natural)
    prose = [i for i, k in enumerate(keep) if not k]
    widths = [n if k else 0 for k, n in zip(keep, natural, strict=True)]
    room = available - sum(widths)
    if room < _FOLD_MIN * len(prose):
        total = sum(natural)
        return [min(n, max(_FOLD_MIN, available * n // total)) for n in natural]
    waiting = sorted(prose, key=lambda i: words[i])
    for pos, i in enumerate(waiting):
        reserve = _FOLD_MIN * (len(waiting) - pos - 1)  # the narrowest the rest can get
        widths[i] = min(natural[i], max(_FOLD_MIN, min(words[i], room - reserve)))
        room -= widths[i]
    grow = {i: natural[i] - widths[i] for i in prose}
    total_grow = sum(grow.values())
    for i, g in grow.items():
        widths[i] += room * g // total_grow if total_grow else 0
    return widths


def cell_len(text: str) -> int:
    from rich.cells import cell_len as _cell_len

    return _cell_len(text)


def _plain(cell: str) -> str:
    from rich.text import Text

    return Text.from_markup(cell).plain


def print_json(payload: Any) -> None:
    sys.stdout.write(json.dumps(payload, indent=2, sort_keys=True, default=str) + "\n")
    sys.stdout.flush()


def print_error(message: str) -> None:
    from rich.markup import escape

    _console(stderr=True).print(
        f"[bold red]error:[/] {escape(message)}", highlight=False, soft_wrap=True
    )


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
        TextColumn("left"),
        TimeRemainingColumn(),
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
    """One bar for the whole convert, restarted at each stage: its elapsed time and the
    estimate of what remains (from the stage's own rate) are the stage's."""

    def __init__(self, bar: Progress, task_id: Any) -> None:
        self._bar = bar
        self._task_id = task_id
        self._stage: str | None = None

    def update(self, stage: str, done: int, total: int) -> None:
        if stage != self._stage:
            self._stage = stage
            self._bar.reset(self._task_id, total=total, completed=done, description=stage)
            return
        self._bar.update(self._task_id, description=stage, completed=done, total=total)


def print_cost(cost: dict) -> None:
    """The estimate of memory, time and disk on this machine, stage by stage."""
    from rich.markup import escape

    print_text(
        f"cost here: peak memory about {cost['peak_ram_bytes'] / 1e9:.1f} GB "
        f"({cost['peak_ram_stage']}), about {_minutes(cost['seconds'])}, disk "
        f"{cost['disk_peak_bytes'] / 1e9:.2f} GB at the peak and "
        f"{cost['disk_final_bytes'] / 1e9:.2f} GB kept"
        + (f", GPU {cost['gpu_bytes'] / 1e9:.1f} GB" if cost.get("gpu_bytes") else "")
    )
    for stage in cost["stages"]:
        print_text(
            f"  {escape(stage['stage'])}: {_minutes(stage['seconds'])}, "
            f"{stage['peak_ram_bytes'] / 1e9:.1f} GB"
        )
    print_text(f"  times from {cost['rates_from']}", soft_wrap=True)
    for note in cost.get("notes", []):
        print_text(f"  {escape(note)}", soft_wrap=True)


def _minutes(seconds: float) -> str:
    return f"{seconds:.0f} s" if seconds < 90 else f"{seconds / 60:.0f} min"
