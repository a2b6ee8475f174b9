"""Stage 4, the backends: one subpackage per conversion path (`gguf/`, `safetensors/` for
BF16/FP16, FP8 and GPTQ, `mlx/` for Apple's MLX), found through one registry by artifact
format.

A backend takes a `SourceModel`, the `Target` (format, quant, profile) and the option
objects of the stages it uses, and writes the artifact's files into a work folder; it
returns a `BackendResult`. Checking the artifact (inspection), measuring it (evaluation),
the manifest, the card and the atomic rename of the folder are left to the pipeline.

A conversion goes through four steps, so that everything that can fail early does:
`backend_for(...)` (the options alone, no I/O), `prepare(source)` (headers, calibration
data, an importance-matrix file: no weight read), `estimate_bytes(source)` (the disk the
build needs at its peak), `build(source, work, progress)`. Built-in backends are registered
like any other; `register()` refuses a format that is already taken.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from ..errors import QuantkitError
from .base import Backend, BackendResult, BuildOptions, ProgressFn

if TYPE_CHECKING:
    from ..planning.profiles import HardwareProfile
    from ..planning.target import Target

__all__ = ["Backend", "BackendResult", "BuildOptions", "ProgressFn", "backend_for", "register"]

BackendFactory = Callable[["Target", "HardwareProfile | None", BuildOptions], Backend]

_REGISTRY: dict[str, BackendFactory] = {}


def register(fmt: str, factory: BackendFactory) -> None:
    """Make `factory(target, hardware, options)` the backend for artifact format `fmt`."""
    if fmt in _REGISTRY:
        raise ValueError(f"a backend for {fmt!r} is already registered")
    _REGISTRY[fmt] = factory


def registered_formats() -> list[str]:
    _load_builtins()
    return sorted(_REGISTRY)


def backend_for(
    target: Target, hardware: HardwareProfile | None, options: BuildOptions
) -> Backend:
    """The backend for `target.format`, with its options checked (no I/O yet)."""
    _load_builtins()
    try:
        factory = _REGISTRY[target.format]
    except KeyError:
        raise QuantkitError(
            f"No backend makes {target.format!r} artifacts.",
            hint=f"Use one of: {', '.join(sorted(_REGISTRY))}.",
        ) from None
    return factory(target, hardware, options)


_builtins_loaded = False


def _load_builtins() -> None:
    # Imported on first use, not at `import quantkit.backends`, so that `quantkit plan`
    # and `--help` never pay for the backends' imports.
    global _builtins_loaded
    if _builtins_loaded:
        return
    _builtins_loaded = True
    from .gguf.backend import GGUFBackend
    from .mlx.backend import MLXBackend
    from .safetensors.backend import QUANTS, SafetensorsBackend

    register("gguf", GGUFBackend)
    register("mlx", MLXBackend)  # imports mlx only when it builds
    for fmt in QUANTS:
        register(fmt, SafetensorsBackend)
