"""The backend registry: one backend per artifact format, refused twice, and the pipeline
driving any registered backend through prepare -> estimate_bytes -> build, then the checks,
the manifest and the atomic rename."""

from __future__ import annotations

import inspect
import json
from pathlib import Path

import pytest

import quantkit
from quantkit import backends
from quantkit.backends.base import BackendResult
from quantkit.errors import QuantkitError
from quantkit.evaluation.options import EvalOptions
from quantkit.formats.quants import ArtifactFormat


def test_every_artifact_format_has_exactly_one_backend() -> None:
    assert backends.registered_formats() == sorted(f.value for f in ArtifactFormat)


def test_a_format_cannot_be_registered_twice() -> None:
    backends.registered_formats()  # built-ins loaded
    with pytest.raises(ValueError, match="already registered"):
        backends.register("gguf", lambda *args: None)


def test_unknown_format_names_the_known_ones(monkeypatch: pytest.MonkeyPatch) -> None:
    from quantkit.planning.target import Target

    backends.registered_formats()
    monkeypatch.delitem(backends._REGISTRY, "fp8")
    with pytest.raises(QuantkitError, match="No backend makes 'fp8'.*gguf"):
        backends.backend_for(Target("fp8", "FP8"), None, None)


class _RecordingBackend:
    """Writes one small file; records the order in which the pipeline calls it."""

    calls: list[str] = []

    def __init__(self, target, hardware, options) -> None:
        self.quant = target.quant
        self.calls.append(f"init {target.format} {target.quant} verify={options.verify}")

    def prepare(self, source) -> None:
        self.calls.append(f"prepare {source.name}")

    def estimate_bytes(self, source) -> int:
        self.calls.append("estimate_bytes")
        return 1000

    def build(self, source, work: Path, progress) -> BackendResult:
        self.calls.append(f"build in {work.name}")
        artifact = work / "toy.bin"
        artifact.write_bytes(b"toy")
        record = {"name": "toy.bin", "bytes": 3, "sha256": "0" * 64, "role": "artifact"}
        return BackendResult(artifact, [record], manifest={"toy": {"made": True}})


def test_pipeline_drives_a_registered_backend(
    demo_model: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    backends.registered_formats()
    monkeypatch.setitem(backends._REGISTRY, "gguf", _RecordingBackend)
    monkeypatch.setattr(_RecordingBackend, "calls", [])
    monkeypatch.setattr(
        "quantkit.inspection.convert_checks.check_converted",
        lambda artifact, source, policy=None, server=None: [],
    )
    monkeypatch.setattr("quantkit.pipeline._write_card", lambda work: None)
    out = tmp_path / "toy"
    result = quantkit.convert(
        demo_model, out=out, format="gguf", quant="Q8_0", evaluation=EvalOptions(enabled=False)
    )
    assert _RecordingBackend.calls == [
        "init gguf Q8_0 verify=True",
        f"prepare {result.source.name}",
        "estimate_bytes",
        "build in toy.partial",
    ]
    assert result.estimated_bytes == 1050  # the backend's peak plus the disk margin
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["toy"] == {"made": True} and manifest["files"][0]["name"] == "toy.bin"
    assert (out / "toy.bin").read_bytes() == b"toy" and not out.with_name("toy.partial").exists()


def test_public_api_has_real_signatures() -> None:
    """quantkit.convert/evaluate/... are the library's functions, not *args wrappers."""
    for name in ("convert", "plan", "inspect", "evaluate", "upload", "load_source"):
        function = getattr(quantkit, name)
        kinds = {p.kind for p in inspect.signature(function).parameters.values()}
        assert inspect.Parameter.VAR_POSITIONAL not in kinds, name
        assert inspect.Parameter.VAR_KEYWORD not in kinds, name
    params = inspect.signature(quantkit.convert).parameters
    for option in ("calibration", "gguf", "gptq", "safetensors", "evaluation"):
        assert option in params
    assert len(params) <= 20  # option objects, not ~35 keywords
    assert set(quantkit.__all__) >= {"evaluate", "EvalOptions", "CalibrationOptions"}
