"""Errors that reach the user.

Every error quantkit raises on purpose is a QuantkitError: its message says what went
wrong *and* what to do about it. The CLI maps each class to an exit code and prints the
message on one line (QUANTKIT_DEBUG=1 shows the traceback).
"""

from __future__ import annotations


class QuantkitError(Exception):
    """Base class; `exit_code` is what the CLI exits with."""

    exit_code = 1

    def __init__(self, message: str, *, hint: str | None = None) -> None:
        self.hint = hint
        super().__init__(message if hint is None else f"{message} {hint}")


class SourceModelError(QuantkitError):
    """The source model cannot be read (missing files, truncated shards, bad config)."""

    exit_code = 3


class UnsafeSourceError(SourceModelError):
    """The source needs pickled weights or remote code and the user did not opt in."""


class UnsupportedArchitectureError(QuantkitError):
    exit_code = 4


class UnknownPreTokenizerError(QuantkitError):
    exit_code = 4


class ArtifactError(QuantkitError):
    """The path given to `quantkit inspect` is not a readable GGUF or safetensors artifact."""

    exit_code = 3  # the same code as an unreadable source model


class OutputPathError(QuantkitError):
    """The output path exists, is not writable, or is the source itself."""

    exit_code = 5


class DiskSpaceError(QuantkitError):
    exit_code = 6


class ProfileError(QuantkitError):
    """Unknown profile, unknown keys in a profile, or invalid values."""

    exit_code = 7


class PlanError(QuantkitError):
    """The plan cannot be made or does not fit the hardware."""

    exit_code = 8


class MissingDependencyError(QuantkitError):
    """An optional dependency (llama-cpp-python, torch ...) is not installed."""

    exit_code = 9


class ConversionError(QuantkitError):
    """A backend failed while writing the artifact."""

    exit_code = 10


class NonFiniteWeightsError(ConversionError):
    """The source weights hold NaN or infinity: the checkpoint is damaged. Counted while
    the weights are read for the conversion and raised before the artifact is finished;
    exit code 10, like every conversion failure. `counts` maps each damaged tensor, in the
    order read, to its (NaN, infinity) counts."""

    LISTED = 5  # tensors named in the message; the rest are counted

    def __init__(self, counts: dict[str, tuple[int, int]]) -> None:
        self.counts = dict(counts)
        first = list(counts.items())[: self.LISTED]
        listed = ", ".join(f"{name} ({_nan_inf(nan, inf)})" for name, (nan, inf) in first)
        more = len(counts) - self.LISTED
        listed += f" and {more} more tensor(s)" if more > 0 else ""
        nan = sum(n for n, _ in counts.values())
        inf = sum(i for _, i in counts.values())
        super().__init__(
            f"The source weights hold NaN or infinity in {len(counts)} tensor(s) "
            f"({_nan_inf(nan, inf)} in all): {listed}; no artifact was written.",
            hint="The source checkpoint is damaged: download it again (a shard whose sha256 "
            "differs from the Hub's is corrupt), or, for your own checkpoint, check the "
            "training run that saved it (a diverged run writes NaN).",
        )


def _nan_inf(nan: int, inf: int) -> str:
    return ", ".join(
        part for part in (f"{nan} NaN" if nan else "", f"{inf} inf" if inf else "") if part
    )


class VerificationError(QuantkitError):
    """The artifact failed a survival or quality check."""

    exit_code = 11


class CalibrationError(QuantkitError):
    """The calibration data cannot be read or does not fit the request."""

    exit_code = 12


class PublishError(QuantkitError):
    """The upload cannot start or did not complete."""

    exit_code = 13


class HubAuthError(PublishError):
    """No token, an invalid one, or one that may not write to the repo."""

    exit_code = 14


class UploadVerificationError(PublishError):
    """The files on the Hub differ from the manifest."""

    exit_code = 15


class SplitError(QuantkitError):
    """A GGUF cannot be split as asked (too small a shard size, already split...)."""

    exit_code = 16


class QualityGateError(VerificationError):
    """The artifact's measured quality is worse than the gate allows."""

    exit_code = 17


class ImatrixError(QuantkitError):
    """An importance matrix cannot be read, does not fit the model, or is needed and off."""

    exit_code = 18


def require(module: str, extra: str):
    """Import an optional dependency or say which extra installs it."""
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise MissingDependencyError(
            f"{module} is not installed.",
            hint=f"Install it with: pip install 'quantkit[{extra}]'",
        ) from exc


class RecipeError(QuantkitError):
    """A `--quant auto` recipe cannot be read, or does not fit the model it is applied to."""

    exit_code = 19


class MemoryShortError(QuantkitError):
    """The conversion's estimated peak memory is more than the machine has available."""

    exit_code = 20
