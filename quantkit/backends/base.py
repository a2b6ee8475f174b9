"""What every backend takes and returns: the option objects it may read, the result it
hands back to the pipeline, and the four steps the registry calls (quantkit.backends)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from .mlx.options import MLXOptions  # a plain dataclass: imports nothing heavy

if TYPE_CHECKING:
    from ..calibration.options import CalibrationOptions
    from ..evaluation.options import EvalOptions
    from ..formats.tokens import TokenTypePolicy
    from ..inspection.check import Check
    from ..source.model import SourceModel
    from .gguf.options import GGUFOptions
    from .safetensors.options import GPTQOptions, SafetensorsOptions

ProgressFn = Callable[[str, int, int], None]  # (stage, done, total)


@dataclass(frozen=True)
class BuildOptions:
    """The option objects a backend may read; each backend reads only its own."""

    calibration: CalibrationOptions
    gguf: GGUFOptions
    gptq: GPTQOptions
    safetensors: SafetensorsOptions
    force: bool = False  # e.g. FP16 with weights outside its range
    verify: bool = True  # whether the backend's own checks (if any) are wanted
    mlx: MLXOptions = field(default_factory=MLXOptions)
    context: int | None = None  # the context the plan sizes for (--quant auto's budget)
    evaluation: EvalOptions | None = None  # the evaluation after the build; None: none


@dataclass(frozen=True)
class BackendResult:
    """What a backend made: the artifact the checks load (a GGUF file or a folder), the
    manifest records of every file it wrote, its own checks (beyond the inspection the
    pipeline runs) and the manifest sections it owns (calibration, imatrix)."""

    artifact: Path
    files: list[dict[str, Any]]
    checks: list[Check] = field(default_factory=list)
    manifest: dict[str, Any] = field(default_factory=dict)
    token_policy: TokenTypePolicy | None = None  # GGUF: the token types it was written with
    gate_quant: str | None = None  # the stock type whose quality gate applies (--quant auto)


class Backend(Protocol):
    def prepare(self, source: SourceModel) -> None: ...

    def estimate_bytes(self, source: SourceModel) -> int: ...

    def build(
        self, source: SourceModel, work: Path, progress: ProgressFn | None
    ) -> BackendResult: ...
