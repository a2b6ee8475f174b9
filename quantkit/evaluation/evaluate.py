"""`quantkit.evaluate`: an artifact measured against its source, and judged by the quality
gate of its quant type (or of a hardware profile).

The measurement itself is quantkit.evaluation.measure; this module adds what a user of the
library needs around it: which quant the artifact is (manifest.json, the GGUF's file type,
a plain folder's dtype) and the gate's verdict.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..errors import QualityGateError
from ..formats.quants import AUTO_QUANT
from . import measure
from .gates import GateResult, check_gate
from .measure import ProgressFn, QualityReport

if TYPE_CHECKING:
    from ..planning.profiles import HardwareProfile
    from ..source.model import SourceModel


@dataclass(frozen=True)
class Evaluation:
    report: QualityReport
    quant: str | None  # None: unknown, so no gate
    gate: GateResult | None

    def to_dict(self) -> dict[str, Any]:
        payload = self.report.to_dict()
        payload["gate"] = self.gate.to_dict() if self.gate is not None else None
        return payload

    def raise_for_gate(self) -> None:
        """QualityGateError when the gate was checked and failed."""
        if self.gate is not None and not self.gate.passed:
            raise QualityGateError(
                self.gate.message, hint="Pass --no-gate to report without failing."
            )


def evaluate(
    artifact: str | Path,
    against: str | Path | SourceModel,
    *,
    corpus: str | Path | None = None,
    n_ctx: int = 512,
    max_chunks: int | None = None,
    dtype: str = "float32",
    use_cache: bool = True,
    quant: str | None = None,
    profile: HardwareProfile | str | None = None,
    progress: ProgressFn | None = None,
    repack: bool | None = None,
) -> Evaluation:
    """Perplexity, KL divergence and top-1 agreement of `artifact` (a GGUF file, an artifact
    folder, a transformers folder) against `against` (the source folder, or a GGUF), and the
    quality gate for `quant` (default: read from the artifact) or `profile`. `repack`:
    llama.cpp's weight repacking for a GGUF (runtime.llama_cpp; off: less memory, slower,
    figures from its plain kernels; None: the enclosing `weights_repacked` block's, on
    outside one, as in llama.cpp)."""
    from ..runtime.llama_cpp import weights_repacked

    with weights_repacked(repack):
        report = measure.evaluate_artifact(
            artifact, against if not isinstance(against, str) else Path(against), corpus=corpus,
            n_ctx=n_ctx, max_chunks=max_chunks, dtype=dtype, use_cache=use_cache,
            progress=progress,
        )  # fmt: skip
    quant = quant or infer_quant(Path(report.artifact))
    gate = check_gate(report, quant, profile) if quant is not None else None
    return Evaluation(report, quant, gate)


def infer_quant(artifact: Path) -> str | None:
    """The quant type: manifest.json's target, a GGUF's general.file_type, an MLX folder's
    bits ("4bit", affine mode only), a transformers folder's dtype (unquantized only)."""
    folder = artifact if artifact.is_dir() else artifact.parent
    manifest = folder / "manifest.json"
    if manifest.is_file():
        try:
            data = json.loads(manifest.read_text(encoding="utf-8"))
            quant = data.get("target", {}).get("quant")
        except ValueError:
            data, quant = {}, None
        if quant == AUTO_QUANT.name:  # --quant auto: the stock mix of its size, as convert gated it
            quant = (data.get("recipe") or {}).get("file_type")
        if quant:
            return str(quant)
    if artifact.suffix == ".gguf":
        return _gguf_quant(artifact)
    config = folder / "config.json"
    if config.is_file():
        data = json.loads(config.read_text(encoding="utf-8"))
        mlx = data.get("quantization")
        if isinstance(mlx, dict) and "bits" in mlx:  # mlx-lm's table: {group_size, bits}
            affine = mlx.get("mode", "affine") == "affine"
            return f"{mlx['bits']}bit" if affine else None
        if "quantization_config" not in data:
            dtype = str(data.get("dtype") or data.get("torch_dtype") or "")
            return {"bfloat16": "BF16", "float16": "FP16"}.get(dtype)
    return None


def _gguf_quant(path: Path) -> str | None:
    from gguf import Keys

    from ..formats.gguf_read import read_metadata
    from ..formats.quants import GGUF_QUANTS

    try:
        ftype = read_metadata(path, {Keys.General.FILE_TYPE}).get(Keys.General.FILE_TYPE)
    except Exception:  # noqa: BLE001 - no gate rather than a crash over a damaged header
        return None
    by_ftype = {q.ftype: q.name for q in GGUF_QUANTS.values()}
    return by_ftype.get(int(ftype)) if ftype is not None else None
