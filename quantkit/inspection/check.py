"""`Check`: the record every check returns (inspection, convert, the quality gate, a backend's
own checks), as stored in manifest.json."""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass


@dataclass(frozen=True)
class Check:
    name: str
    passed: bool
    evidence: str
    fatal: bool = True  # a failed non-fatal check is reported but does not fail the convert
    # A check that could not run (its runtime is missing): never passed, never failed; the
    # evidence says why and what would let it run.
    skipped: bool = False

    def to_dict(self) -> dict:
        return asdict(self)


def skipped_check(name: str, reason: str) -> Check:
    return Check(name, False, f"skipped: {reason}", fatal=False, skipped=True)


LOADS = "artifact loads and can be checked"
GENERATION = "greedy generation stops"


def crashed_check(exc: BaseException) -> Check:
    """The failed fatal check that stands for a check that crashed."""
    logging.getLogger(__name__).debug("a check crashed", exc_info=exc)
    return Check(LOADS, False, f"the checks crashed: {type(exc).__name__}: {exc}")
