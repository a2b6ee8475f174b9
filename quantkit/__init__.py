"""quantkit: quantize Hermes-family chat models for the hardware you have.

Public API (heavy libraries are imported only inside the functions that need them):
    convert(model, ...)       -> ConvertResult   (quantkit.pipeline.convert)
    plan(model, profile, ...) -> list[Plan]      (quantkit.planner.plan_model)
    upload(artifact_dir, repo) -> PublishResult  (quantkit.publish.publish)
    inspect(artifact, against=None) -> InspectReport (quantkit.inspection.inspect)
    load_source(model)        -> SourceModel
"""

from __future__ import annotations

__version__ = "0.1.0"

from .errors import QuantkitError
from .source import SourceModel, load_source

__all__ = [
    "QuantkitError",
    "SourceModel",
    "__version__",
    "convert",
    "inspect",
    "load_source",
    "plan",
    "upload",
]


def convert(*args, **kwargs):
    """See quantkit.pipeline.convert."""
    from .pipeline import convert as _convert

    return _convert(*args, **kwargs)


def plan(*args, **kwargs):
    """See quantkit.planner.plan_model: one plan per profile (all profiles by default)."""
    from .planner import plan_model

    return plan_model(*args, **kwargs)


def upload(*args, **kwargs):
    """See quantkit.publish.publish: the artifact folder to a Hub repo, with its card."""
    from .publish import publish

    return publish(*args, **kwargs)


def inspect(*args, **kwargs):
    """See quantkit.inspection.inspect: the token, turn-end and chat-template survival checks
    on a GGUF or safetensors artifact, optionally against its source."""
    from .inspection import inspect as _inspect

    return _inspect(*args, **kwargs)
