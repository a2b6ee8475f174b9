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

    def to_dict(self) -> dict:
        return asdict(self)


LOADS = "artifact loads and can be checked"
GENERATION = "greedy generation stops"


def crashed_check(exc: BaseException) -> Check:
    """The failed fatal check that stands for a check that crashed."""
    logging.getLogger(__name__).debug("a check crashed", exc_info=exc)
    return Check(LOADS, False, f"the checks crashed: {type(exc).__name__}: {exc}")
