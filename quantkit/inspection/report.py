"""What `quantkit inspect` returns: the artifact, what it was compared with, the checks."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from .check import Check


@dataclass(frozen=True)
class InspectReport:
    artifact: str
    kind: str  # "gguf", "safetensors" or "mlx"
    files: tuple[str, ...]
    against: str | None
    checks: tuple[Check, ...]

    @property
    def passed(self) -> bool:
        """True when every check passed, fatal or not (`quantkit inspect` exits 0 only
        then). A check's `fatal` flag is convert's business: whether a failure quarantines
        the artifact it just made."""
        return not self.failed

    @property
    def failed(self) -> list[Check]:
        return [c for c in self.checks if not c.passed and not c.skipped]

    @property
    def skipped(self) -> list[Check]:
        return [c for c in self.checks if c.skipped]

    def summary(self) -> str:
        ran = len(self.checks) - len(self.skipped)
        skipped = f", {len(self.skipped)} skipped" if self.skipped else ""
        if self.passed:
            return f"all {ran} checks passed{skipped}"
        names = ", ".join(c.name for c in self.failed)
        return f"{len(self.failed)} of {ran} checks failed: {names}{skipped}"

    def to_dict(self) -> dict[str, Any]:
        return {
            "artifact": self.artifact,
            "kind": self.kind,
            "files": list(self.files),
            "against": self.against,
            "passed": self.passed,
            "summary": self.summary(),
            "checks": [c.to_dict() for c in self.checks],
        }
