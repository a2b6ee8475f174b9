"""Run `python -m quantkit` as a user does, for the CLI and bad-input tests."""

from __future__ import annotations

import os
import subprocess
import sys


def _no_eval(args: tuple[object, ...]) -> tuple[object, ...]:
    """These tests are about the CLI, not quality: skip the perplexity/KLD step (tested in
    tests/evaluation/test_measure.py and tests/pipeline/test_convert_e2e.py), which would add
    minutes."""
    if args and args[0] == "convert" and "--help" not in args:
        return (*args, "--no-eval")
    return args


def run_cli(
    *args: object, timeout: int = 300, columns: int | None = 100
) -> subprocess.CompletedProcess[str]:
    """columns=None: no COLUMNS at all, as in a pipe or a CI log."""
    env = {**os.environ, "COLUMNS": str(columns), "NO_COLOR": "1"}
    if columns is None:
        del env["COLUMNS"]
    env.pop("QUANTKIT_DEBUG", None)
    return subprocess.run(
        [sys.executable, "-m", "quantkit", *map(str, _no_eval(args))],
        capture_output=True,
        text=True,
        env=env,
        timeout=timeout,
    )
