"""quantkit: quantize Hermes-family chat models for the hardware you have.

Public API: the library's own functions, imported on first use (PEP 562) so that
`import quantkit` and `quantkit --help` load no heavy library:
    convert(model, *, out, profile=..., ...)      -> ConvertResult  (quantkit.pipeline)
    plan(model, profile=None, ...)                -> list[Plan]     (quantkit.planning.planner)
    inspect(artifact, against=None, ...)          -> InspectReport  (quantkit.inspection)
    evaluate(artifact, against, ...)              -> Evaluation     (quantkit.evaluation)
    upload(artifact_dir, repo_id, ...)            -> PublishResult  (quantkit.hub.publish)
    load_source(model)                            -> SourceModel    (quantkit.source.model)
and the option objects `convert` takes: CalibrationOptions, GGUFOptions, GPTQOptions,
SafetensorsOptions, MLXOptions, EvalOptions, VerifyOptions (with ServerOptions, which
`inspect` takes too).
"""

from __future__ import annotations

from importlib import import_module
from typing import Any

from .errors import QuantkitError
from .version import __version__

# public name -> (module, attribute): one place that says where each lives
_PUBLIC = {
    "convert": ("quantkit.pipeline", "convert"),
    "ConvertResult": ("quantkit.pipeline", "ConvertResult"),
    "plan": ("quantkit.planning.planner", "plan_model"),
    "inspect": ("quantkit.inspection", "inspect"),
    "evaluate": ("quantkit.evaluation.evaluate", "evaluate"),
    "upload": ("quantkit.hub.publish", "publish"),
    "load_source": ("quantkit.source.model", "load_source"),
    "SourceModel": ("quantkit.source.model", "SourceModel"),
    "CalibrationOptions": ("quantkit.calibration.options", "CalibrationOptions"),
    "GGUFOptions": ("quantkit.backends.gguf.options", "GGUFOptions"),
    "GPTQOptions": ("quantkit.backends.safetensors.options", "GPTQOptions"),
    "SafetensorsOptions": ("quantkit.backends.safetensors.options", "SafetensorsOptions"),
    "MLXOptions": ("quantkit.backends.mlx.options", "MLXOptions"),
    "EvalOptions": ("quantkit.evaluation.options", "EvalOptions"),
    "ServerOptions": ("quantkit.inspection.options", "ServerOptions"),
    "VerifyOptions": ("quantkit.inspection.options", "VerifyOptions"),
}

__all__ = ["QuantkitError", "__version__", *_PUBLIC]


def __getattr__(name: str) -> Any:
    try:
        module, attribute = _PUBLIC[name]
    except KeyError:
        raise AttributeError(f"module 'quantkit' has no attribute {name!r}") from None
    value = getattr(import_module(module), attribute)
    globals()[name] = value  # later look-ups skip this function
    return value


def __dir__() -> list[str]:
    return sorted(__all__)
