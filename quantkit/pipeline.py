"""`quantkit convert`: source -> plan -> backend -> checks -> evaluation -> manifest and
card -> publish, atomically.

Reading `convert` top to bottom shows every stage. Everything that can be checked is
checked before any weight is read: the options, the output path, the profile, the
architecture, the plan's fit, calibration data, an importance-matrix file and the free disk
space. The artifact is built in `<out>.partial/` and renamed at the very end, so a crash
never leaves a folder that looks finished; a folder whose checks or quality gate failed is
renamed `<out>.quarantine/`.
"""

from __future__ import annotations

import errno
import logging
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .artifact.manifest import build_manifest, source_record, write_manifest
from .artifact.output_dir import (
    DISK_MARGIN,
    check_disk_space,
    check_download_space,
    check_output_path,
)
from .backends import BackendResult, BuildOptions, ProgressFn, backend_for
from .backends.gguf.options import GGUFOptions
from .backends.mlx.options import MLXOptions
from .backends.safetensors.options import GPTQOptions, SafetensorsOptions
from .calibration.options import CalibrationOptions
from .disk.atomic import building_folder
from .disk.atomic import quarantine as quarantine_folder
from .errors import DiskSpaceError, MemoryShortError, QualityGateError, VerificationError
from .evaluation.engines import fingerprinted_files
from .evaluation.file_hashes import hash_in_background
from .evaluation.options import EvalOptions
from .formats.quants import AUTO_QUANT
from .planning.cost import ConvertCost, CostRequest, StageClock, choose_repack, convert_cost
from .planning.rates import load_rates, record_rates
from .planning.target import Target, resolve_target
from .runtime.interrupts import raise_if_interrupted
from .runtime.llama_cpp import weights_repacked
from .runtime.memory import available_memory, release_freed_memory
from .source.hub_download import cache_folder
from .source.model import SourceModel, load_source
from .source.structure import check_structure

if TYPE_CHECKING:
    from .evaluation.gates import GateResult
    from .inspection.check import Check
    from .inspection.options import ServerOptions, VerifyOptions
    from .planning.profiles import HardwareProfile

log = logging.getLogger(__name__)


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
    recipe: dict[str, Any] | None = None  # --quant auto: the manifest's recipe section
    download_bytes: int = 0  # a Hub source's weights not in the Hugging Face cache yet
    cost: ConvertCost | None = None  # the estimate made before any weight was read

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
            "download_bytes": self.download_bytes,
            "dry_run": self.dry_run,
            "published": self.published,
            "quality": self.quality,
            "recipe": self.recipe,
            "cost": self.cost.to_dict() if self.cost else None,
        }


def convert(
    model: str | Path,
    *,
    out: str | Path,
    profile: str | None = None,
    format: str | None = None,  # noqa: A002 - mirrors the CLI flag
    quant: str | None = None,
    context: int | None = None,
    revision: str | None = None,
    allow_pickle: bool = False,
    trust_remote_code: bool = False,
    calibration: CalibrationOptions | None = None,
    gguf: GGUFOptions | None = None,
    gptq: GPTQOptions | None = None,
    safetensors: SafetensorsOptions | None = None,
    mlx: MLXOptions | None = None,
    evaluation: EvalOptions | None = None,
    verify: bool | VerifyOptions = True,
    force: bool = False,
    dry_run: bool = False,
    push_to: str | None = None,
    progress: ProgressFn | None = None,
) -> ConvertResult:
    """Convert `model` (folder or Hub id) into a checked artifact folder at `out`.

    `profile` picks format and quant for a piece of hardware (and the plan must fit unless
    `force`); or name them with `format` and `quant`. Each stage's knobs come as its own
    option object; None means that stage's defaults. `verify`: the checks in the artifact's
    runtime (True, False, or VerifyOptions with the llama-server round trip's knobs).
    `gguf.repack`: llama.cpp's weight repacking while a GGUF is checked and evaluated
    (runtime.llama_cpp); None: on, unless its copy of the weights would not fit the RAM
    (planning.cost.choose_repack)."""
    from .inspection.options import VerifyOptions

    out_dir = Path(out).expanduser()
    evaluation = evaluation or EvalOptions()
    checks_wanted = verify if isinstance(verify, VerifyOptions) else VerifyOptions(enabled=verify)
    _check_llama_server(checks_wanted)  # a bad --llama-server is refused before any work
    if quant is None and gguf is not None and gguf.recipe is not None:
        quant = AUTO_QUANT.name  # a recipe is what --quant auto applies
    target, hardware = resolve_target(profile, format, quant)
    backend = backend_for(target, hardware, BuildOptions(
        calibration or CalibrationOptions(), gguf or GGUFOptions(), gptq or GPTQOptions(),
        safetensors or SafetensorsOptions(), force=force, verify=checks_wanted.enabled,
        mlx=mlx or MLXOptions(), context=context,
        evaluation=evaluation if evaluation.enabled else None,
    ))  # fmt: skip
    check_output_path(out_dir, model)
    source = load_source(
        model, revision=revision, allow_pickle=allow_pickle,
        trust_remote_code=trust_remote_code, weights=False,
    )  # fmt: skip
    check_structure(source)  # every tensor the config implies, before any is read
    plan = _make_plan(source, hardware, context, force, target.quant)
    backend.prepare(source)
    estimate = int(backend.estimate_bytes(source) * DISK_MARGIN)
    cost_of = partial(_estimate_cost, source, target, backend, estimate, calibration,
                      checks_wanted.enabled, evaluation)  # fmt: skip
    wanted = gguf.repack if gguf is not None else None
    repack, cost = choose_repack(wanted, cost_of, available_memory())
    if wanted is None and not repack and cost is not None:
        log.warning("%s", cost.notes[-1])
    download = source.download.missing_bytes if source.download else 0
    if dry_run:
        return ConvertResult(None, target, source, plan, estimated_bytes=estimate, dry_run=True,
                             download_bytes=download, cost=cost)  # fmt: skip
    clock = StageClock()  # from here on, every second is a stage's or the rest's
    check_disk_space(out_dir, estimate)
    if cost is not None:
        check_memory(cost, force=force)
    if source.download is not None:  # a Hub source: its weights come now, if there is room
        check_download_space(cache_folder(source.download.repo_id), download, out_dir, estimate)
        source = source.with_weights()
    if push_to:
        from .hub.publish import check_push_access

        check_push_access(push_to)
    with (
        _disk_full_is_a_disk_error(out_dir),
        building_folder(out_dir, replace=False) as work,
        weights_repacked(repack),
    ):
        step = _interruptible(clock.wrap(progress))
        if evaluation.enabled:  # the reference cache's key, hashed while the build runs
            hash_in_background(fingerprinted_files(source.path))
        built = backend.build(source, work, step)
        raise_if_interrupted()
        checks = []
        if checks_wanted.enabled:
            step("checking the artifact", 0, 1)
            checks = [c.to_dict() for c in artifact_checks(built, source, checks_wanted.server)]
            release_freed_memory()  # what the generation check's model left behind
            step("checking the artifact", 1, 1)
        raise_if_interrupted()
        manifest = build_manifest(
            source=source_record(source, str(model)),
            target={"format": target.format, "quant": target.quant, "profile": target.profile},
            files=built.files,
            plan=plan,
            checks=checks,
        )
        manifest.update(built.manifest)
        write_manifest(work, manifest)
        _stop_on_failed_checks(checks, work, out_dir)
        quality = None
        if evaluation.enabled:
            gate_quant = built.gate_quant or target.quant
            quality, gate_result = _measure(work, out_dir, source, gate_quant, hardware,
                                            evaluation, step)  # fmt: skip
            manifest["quality"] = quality
            manifest["quality_gate"] = gate_result.to_dict()
            checks.append(gate_result.to_check())
            manifest["checks"] = checks
            write_manifest(work, manifest)
            if evaluation.gate and not gate_result.passed:
                _stop_on_failed_gate(gate_result, work, out_dir)
        _write_card(work)
        raise_if_interrupted()  # the last chance: after this the folder is renamed into place
    if cost is not None:
        record_rates(cost.stages, clock.seconds())  # the next estimate's rates: this machine's
    published = _publish(out_dir, push_to, source) if push_to else None
    return ConvertResult(
        out_dir, target, source, plan, built.files, checks, estimate, published=published,
        quality=quality, recipe=built.manifest.get("recipe"), cost=cost,
    )  # fmt: skip


def _estimate_cost(
    source: SourceModel,
    target: Target,
    backend: Any,
    disk_peak: int,
    calibration: CalibrationOptions | None,
    verify: bool,
    evaluation: EvalOptions,
    *,
    repack: bool = True,
) -> ConvertCost | None:
    """The conversion's memory, time and disk on this machine (planning.cost), from the
    source's headers and the stages the options turn on; None (logged) where the model
    defeats the estimate, which must never stop a convert by itself."""
    try:
        return _cost_of(source, target, backend, disk_peak, calibration, verify, evaluation,
                        repack)  # fmt: skip
    except Exception:  # noqa: BLE001 - an estimate, not a precondition
        log.warning("could not estimate this convert's memory and time", exc_info=True)
        return None


def _cost_of(source, target, backend, disk_peak, calibration, verify, evaluation,
             repack) -> ConvertCost:  # fmt: skip
    from .planning.memory import artifact_weights_bytes
    from .planning.model_spec import spec_from_source

    spec = spec_from_source(source)
    calib = calibration or CalibrationOptions()
    auto = target.quant == AUTO_QUANT.name
    request = CostRequest(
        fmt=target.format, quant=target.quant, auto=auto,
        imatrix=bool(getattr(backend, "computes_imatrix", False)),
        keep_intermediate=bool(getattr(getattr(backend, "options", None), "gguf", None)
                               and backend.options.gguf.keep_intermediate),
        verify=verify, evaluate=evaluation.enabled, n_ctx=evaluation.n_ctx,
        calibration_tokens=(calib.samples or 256) * (calib.seq_len or 2048),  # oneshot's
        gpu=Path("/dev/nvidia0").exists(), repack=repack,
    )  # fmt: skip
    final = disk_peak if auto else artifact_weights_bytes(spec, target.format, target.quant)
    return convert_cost(spec, request, load_rates(), disk_peak=disk_peak, disk_final=final)


def check_memory(cost: ConvertCost, *, force: bool = False) -> None:
    """Refuse, before any weight is read, a convert whose estimated peak memory is more
    than the machine has available; say what would fit. `force` tries anyway."""
    available = available_memory()
    if force or available is None or cost.peak_bytes <= available:
        return
    raise MemoryShortError(
        f"This convert needs about {cost.peak_bytes / 1e9:.1f} GB of memory at its peak "
        f"({cost.peak_stage}); {available / 1e9:.1f} GB are available.",
        hint=_memory_hint(cost.peak_stage),
    )


def _memory_hint(stage: str) -> str:
    if "artifact" in stage and "checking" in stage:
        return "Skip the checks with --no-verify, free some memory, or pass --force to try anyway."
    if "reference" in stage or "evaluating" in stage:
        return ("Skip the evaluation with --no-eval (run `quantkit eval` later on a larger "
                "machine), free some memory, or pass --force to try anyway.")  # fmt: skip
    if "llmcompressor" in stage:
        return ("Use a GPU profile, or FP8_DYNAMIC (--format fp8 --quant FP8_DYNAMIC), which "
                "works tensor by tensor; or pass --force to try anyway.")  # fmt: skip
    return "Free some memory or use a machine with more; --force tries anyway."


def _interruptible(progress: ProgressFn | None) -> ProgressFn:
    """Every progress step is a safe point where a swallowed Ctrl-C is raised again."""

    def step(stage: str, done: int, total: int) -> None:
        raise_if_interrupted()
        if progress is not None:
            progress(stage, done, total)

    return step


@contextmanager
def _disk_full_is_a_disk_error(out_dir: Path) -> Iterator[None]:
    """A write that fails for lack of space (or a file-size limit) is a DiskSpaceError with
    one line, after building_folder has removed the partial folder."""
    try:
        yield
    except OSError as exc:
        if exc.errno not in (errno.ENOSPC, errno.EFBIG, errno.EDQUOT):
            raise
        raise DiskSpaceError(
            f"Writing {out_dir} failed: {exc.strerror}; nothing was left behind.",
            hint="Free some space or choose an --out folder on a larger disk.",
        ) from exc


def artifact_checks(
    built: BackendResult, source: SourceModel, server: ServerOptions | None = None
) -> list[Check]:
    """The `quantkit inspect` battery against the source, in the runtime that loads the
    artifact (for a GGUF also the llama-server round trip), then the backend's own checks."""
    from .inspection.convert_checks import check_converted

    checks = check_converted(built.artifact, source, policy=built.token_policy, server=server)
    return checks + built.checks


def _check_llama_server(checks: VerifyOptions) -> None:
    """The user's own llama-server (--llama-server) must be an executable file: found out
    now, not after the artifact is built (LlamaServerError, exit 9)."""
    if checks.enabled and checks.server.enabled and checks.server.binary:
        from .runtime.llama_server import find_llama_server

        find_llama_server(checks.server.binary)


def _stop_on_failed_checks(checks: list[dict[str, Any]], work: Path, out_dir: Path) -> None:
    failed = [c for c in checks if not c["passed"] and c["fatal"] and not c.get("skipped")]
    if failed:
        quarantine = quarantine_folder(work, out_dir)
        names = ", ".join(c["name"] for c in failed)
        raise VerificationError(
            f"The artifact failed its checks ({names}); it was kept in {quarantine} for "
            "inspection.",
            hint="See manifest.json there for the evidence; pass --no-verify to skip checks.",
        )


def _stop_on_failed_gate(gate: GateResult, work: Path, out_dir: Path) -> None:
    quarantine = quarantine_folder(work, out_dir)
    raise QualityGateError(
        f"{gate.message}; the artifact was kept in {quarantine}.",
        hint="See manifest.json there; choose a higher-precision type, or pass "
        "--no-gate to accept it.",
    )


def _measure(
    work: Path,
    out_dir: Path,
    source: SourceModel,
    quant: str,
    hardware: HardwareProfile | None,
    options: EvalOptions,
    progress: ProgressFn | None = None,
) -> tuple[dict[str, Any], GateResult]:
    """Perplexity, KLD and top-1 agreement against the source, and the quality gate (the
    profile's thresholds when there is one, else quantkit's defaults for `quant`)."""
    from .evaluation.evaluate import evaluate
    from .evaluation.options import reference_dtype

    dtype = reference_dtype(source.parameter_count)
    result = evaluate(
        work, source, corpus=options.corpus, n_ctx=options.n_ctx, dtype=dtype,
        quant=quant, profile=hardware, progress=progress,
    )  # fmt: skip
    assert result.gate is not None  # the quant is given, so the gate is always checked
    quality = result.report.to_dict()
    quality["artifact"] = str(out_dir)  # not the .partial folder it was measured in
    return quality, result.gate


def _write_card(work: Path) -> None:
    """README.md (model card) and, for GGUF, an Ollama Modelfile beside the artifact."""
    from .artifact.card import write_model_card

    write_model_card(work, None)


def _publish(out_dir: Path, repo_id: str, source: SourceModel) -> dict[str, Any]:
    from .hub.publish import publish

    result = publish(out_dir, repo_id, base_model=source.repo_id)
    return {
        "repo_id": result.repo_id,
        "revision": result.revision,
        "url": result.repo_url,
        "verified": result.verified,
    }


def _make_plan(
    source: SourceModel,
    hardware: HardwareProfile | None,
    context: int | None,
    force: bool,
    quant: str,
) -> dict[str, Any] | None:
    if hardware is None:
        return None
    from .planning.planner import ensure_fits, make_plan
    from .planning.profiles import list_profiles

    others = [p for p in list_profiles() if p.name != hardware.name]
    auto = quant if quant == AUTO_QUANT.name else None  # the file the run command names
    plan = make_plan(source, hardware, context=context, others=others, artifact_quant=auto)
    ensure_fits(plan, force=force)
    return plan.to_dict()
