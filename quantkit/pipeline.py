"""`quantkit convert`: source -> plan -> backend -> checks -> manifest, atomically.

Everything that can be checked is checked before any weight is read: the output path, the
profile, the architecture, the plan's fit and the free disk space. The artifact is built in
`<out>.partial/` and renamed at the very end, so a crash never leaves a folder that looks
finished; a folder whose checks failed is renamed `<out>.quarantine/`.
"""

from __future__ import annotations

import logging
import shutil
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .convert_target import SafetensorsOptions, Target, prepare_safetensors, resolve_target
from .errors import (
    QualityGateError,
    VerificationError,
)
from .imatrix_request import prepare_imatrix, resolve_imatrix
from .manifest import build_manifest, source_record, write_manifest
from .preflight import check_disk_space, check_output_path, estimate_bytes
from .source import SourceModel, load_source

log = logging.getLogger(__name__)

ProgressFn = Callable[[str, int, int], None]  # (stage, done, total)


@dataclass(frozen=True)
class ConvertResult:
    out: Path | None  # None for a dry run
    target: Target
    source: SourceModel = field(repr=False)
    plan: dict[str, Any] | None = None
    files: list[dict[str, Any]] = field(default_factory=list)
    checks: list[dict[str, Any]] = field(default_factory=list)
    estimated_bytes: int = 0
    dry_run: bool = False
    published: dict[str, Any] | None = None
    quality: dict[str, Any] | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "out": str(self.out) if self.out else None,
            "format": self.target.format,
            "quant": self.target.quant,
            "profile": self.target.profile,
            "source": source_record(self.source, str(self.source.path)),
            "plan": self.plan,
            "files": self.files,
            "checks": self.checks,
            "estimated_bytes": self.estimated_bytes,
            "dry_run": self.dry_run,
            "published": self.published,
            "quality": self.quality,
        }


def convert(
    model: str | Path,
    *,
    out: str | Path,
    profile: str | None = None,
    format: str | None = None,  # noqa: A002 - mirrors the CLI flag
    quant: str | None = None,
    context: int | None = None,
    dry_run: bool = False,
    force: bool = False,
    verify: bool = True,
    keep_intermediate: bool = False,
    revision: str | None = None,
    allow_pickle: bool = False,
    trust_remote_code: bool = False,
    token_types: dict[str, str] | None = None,
    pre_tokenizer: str | None = None,
    push_to: str | None = None,
    evaluate: bool = True,
    gate: bool = True,
    eval_corpus: str | Path | None = None,
    eval_ctx: int = 512,
    calibration: str | None = None,
    calibration_samples: int | None = None,  # None: 256 for FP8/GPTQ, 8 for an imatrix
    calibration_seq_len: int | None = None,  # None: 2048 for FP8/GPTQ, 512 (chunk) for one
    calibration_seed: int = 0,
    think_share: float | None = None,
    tool_share: float | None = None,
    group_size: int = 128,
    actorder: bool = False,
    dampening: float = 0.01,
    gptq_format: str = "compressed-tensors",
    max_shard_size: int = 5 * 10**9,
    quantize_lm_head: bool = False,
    imatrix: str | Path | None = None,  # "auto", an imatrix file, "none"; None: profile/type
    progress: ProgressFn | None = None,
) -> ConvertResult:
    """Convert `model` (folder or Hub id) into an artifact folder at `out`."""
    out_dir = Path(out).expanduser()
    target, hardware = resolve_target(profile, format, quant)
    imatrix, imatrix_origin = resolve_imatrix(imatrix, target.format, target.quant, hardware)
    check_output_path(out_dir, model)
    source = load_source(
        model, revision=revision, allow_pickle=allow_pickle, trust_remote_code=trust_remote_code
    )
    plan = _make_plan(source, hardware, context, force)
    options = SafetensorsOptions(
        calibration,
        calibration_samples,
        calibration_seq_len,
        calibration_seed,
        think_share,
        tool_share,
        group_size,
        actorder,
        dampening,
        gptq_format,
        max_shard_size,
        quantize_lm_head,
    )
    calib = prepare_safetensors(source, target, options) if target.format != "gguf" else None
    imatrix_request = prepare_imatrix(
        imatrix, source, target.quant, origin=imatrix_origin, calibration=calibration,
        samples=calibration_samples, seq_len=calibration_seq_len, seed=calibration_seed,
        think_share=think_share, tool_share=tool_share,
    )  # fmt: skip
    estimate = estimate_bytes(source, target, options)
    if dry_run:
        return ConvertResult(None, target, source, plan, estimated_bytes=estimate, dry_run=True)
    check_disk_space(out_dir, estimate)
    if push_to:
        from .publish import check_push_access

        check_push_access(push_to)
    work = _fresh_work_dir(out_dir)
    if target.format == "gguf":
        backend_options = dict(
            keep_intermediate=keep_intermediate,
            token_types=token_types,
            pre_tokenizer=pre_tokenizer,
            imatrix=imatrix_request,
        )
    else:
        backend_options = options.backend_kwargs(calib, force)
    files, checks = _run_backend(
        source, target, work, verify=verify, progress=progress, **backend_options
    )
    manifest = build_manifest(
        source=source_record(source, str(model)),
        target={"format": target.format, "quant": target.quant, "profile": target.profile},
        files=files,
        plan=plan,
        checks=checks,
    )
    if calib is not None:
        manifest["calibration"] = calib.describe()
    if files and files[0].get("imatrix"):
        manifest["imatrix"] = files[0]["imatrix"]
    write_manifest(work, manifest)
    _stop_on_failed_checks(checks, work, out_dir)
    quality = None
    if evaluate:
        quality, gate_result = _measure(
            work, out_dir, source, target, hardware, eval_corpus, eval_ctx
        )
        manifest["quality"] = quality
        manifest["quality_gate"] = gate_result.to_dict()
        checks.append(gate_result.to_check())
        manifest["checks"] = checks
        write_manifest(work, manifest)
        if gate and not gate_result.passed:
            quarantine = _quarantine(work, out_dir)
            raise QualityGateError(
                f"{gate_result.message}; the artifact was kept in {quarantine}.",
                hint="See manifest.json there; choose a higher-precision type, or pass "
                "--no-gate to accept it.",
            )
    _write_card(work)
    work.rename(out_dir)
    published = _publish(out_dir, push_to, source) if push_to else None
    return ConvertResult(
        out_dir, target, source, plan, files, checks, estimate, published=published,
        quality=quality,
    )  # fmt: skip


def _stop_on_failed_checks(checks: list[dict[str, Any]], work: Path, out_dir: Path) -> None:
    failed = [c for c in checks if not c["passed"] and c["fatal"]]
    if failed:
        quarantine = _quarantine(work, out_dir)
        names = ", ".join(c["name"] for c in failed)
        raise VerificationError(
            f"The artifact failed its checks ({names}); it was kept in {quarantine} for "
            "inspection.",
            hint="See manifest.json there for the evidence; pass --no-verify to skip checks.",
        )


def _measure(
    work: Path, out_dir: Path, source: SourceModel, target: Target, hardware, corpus, n_ctx: int
):
    """Perplexity, KLD and top-1 agreement against the source, and the quality gate (the
    profile's thresholds when there is one, else quantkit's per-type defaults)."""
    from .evaluate import evaluate_artifact
    from .quality_gates import check_gate

    # float32 reference logits need 4 bytes per parameter of RAM; past ~2B parameters
    # bfloat16 halves that (docs/quality.md).
    dtype = "float32" if source.parameter_count < 2e9 else "bfloat16"
    report = evaluate_artifact(work, source, corpus=corpus, n_ctx=n_ctx, dtype=dtype)
    verdict = check_gate(report, target.quant, hardware, parameters=source.parameter_count)
    quality = report.to_dict()
    quality["artifact"] = str(out_dir)  # not the .partial folder it was measured in
    return quality, verdict


def _write_card(work: Path) -> None:
    """README.md (model card) and, for GGUF, an Ollama Modelfile beside the artifact."""
    from .model_card import write_model_card

    write_model_card(work, None)


def _publish(out_dir: Path, repo_id: str, source: SourceModel) -> dict[str, Any]:
    from .publish import publish

    result = publish(out_dir, repo_id, base_model=source.repo_id)
    return {
        "repo_id": result.repo_id,
        "revision": result.revision,
        "url": result.repo_url,
        "verified": result.verified,
    }


def _make_plan(source: SourceModel, hardware, context: int | None, force: bool):
    if hardware is None:
        return None
    from .planner import ensure_fits, make_plan
    from .profiles import list_profiles

    others = [p for p in list_profiles() if p.name != hardware.name]
    plan = make_plan(source, hardware, context=context, others=others)
    ensure_fits(plan, force=force)
    return plan.to_dict()


def _fresh_work_dir(out_dir: Path) -> Path:
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    work = out_dir.with_name(out_dir.name + ".partial")
    if work.exists():
        log.warning("Removing %s left by an interrupted run", work)
        shutil.rmtree(work)
    work.mkdir()
    return work


def _quarantine(work: Path, out_dir: Path) -> Path:
    target = out_dir.with_name(out_dir.name + ".quarantine")
    if target.exists():
        shutil.rmtree(target)
    work.rename(target)
    return target


def _run_backend(source: SourceModel, target: Target, work: Path, **options: Any):
    try:
        if target.format == "gguf":
            from .backends.gguf_pipeline import make_gguf

            return make_gguf(source, target.quant, work, **options)
        from .backends.safetensors_pipeline import make_safetensors

        return make_safetensors(source, target.format, target.quant, work, **options)
    except BaseException:
        # Leave nothing that looks finished; the .partial folder is removed on failure.
        shutil.rmtree(work, ignore_errors=True)
        raise
