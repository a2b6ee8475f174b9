"""(model, hardware profile, context) -> Plan: the artifact, whether it fits, how to run it.

    make_plan(source, profile, context=None)   pure: SourceModel or ModelSpec in, Plan out
    plan_model(model, profile=None, ...)       resolves a folder / config.json / Hub id
    ensure_fits(plan, force=False)             what `quantkit convert` calls before working

The byte counts come from quantkit.planning.memory and quantkit.planning.fit; this module decides
the verdict, the largest context, the recommendations and the run command.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from ..errors import PlanError
from ..formats.chat_template import LLAMA_SERVER_NO_REASONING, llama_server_parses_reasoning
from ..formats.quants import AUTO_QUANT
from ..source.model import SourceModel
from . import fit as fitting
from . import memory as mem
from . import run_commands as cmd
from .budget import choose_budget
from .hermes_family import HERMES_FAMILY
from .mix import auto_preview
from .model_spec import ModelSpec, spec_from_config, spec_from_config_file, spec_from_source
from .profiles import HardwareProfile, list_profiles, load_profile

DEFAULT_CONTEXT = 8192


@dataclass(frozen=True)
class Plan:
    model: str
    profile: str
    fit: str  # "full" | "partial" | "none"
    format: str
    quant: str
    runtime: str
    context: int
    weights_bytes: int  # the artifact's weights as they will be on disk
    kv_cache_bytes: int  # at `context`
    overhead_bytes: int  # runtime buffers: compute/output, activations, CUDA context/graphs
    total_bytes: int  # what the deployment needs in memory (GPU + host)
    gpu_layers: int | None  # llama.cpp n_gpu_layers; None for vLLM
    n_layers: int
    max_context: int  # largest context that keeps this verdict (0 for "none")
    command: str | None  # None when it does not fit
    device_need_bytes: int
    device_budget_bytes: int
    devices: int  # GPUs (or 1 memory pool for CPU / unified profiles)
    device_kind: str  # gpu | unified | cpu
    modelfile: str | None = None  # Ollama profiles
    recommended_profile: str | None = None  # smallest known profile it fits fully
    smaller_models: tuple[str, ...] = ()  # family members that fit this profile fully
    notes: tuple[str, ...] = field(default=())
    inventory: str = "safetensors"  # where the tensor list came from
    auto: dict[str, Any] | None = None  # --quant auto: planning.mix.auto_preview
    convert: dict[str, Any] | None = None  # planning.cost: converting to it on this machine

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["smaller_models"] = list(self.smaller_models)
        out["notes"] = list(self.notes)
        return out


def make_plan(
    source: SourceModel | ModelSpec,
    profile: HardwareProfile,
    context: int | None = None,
    *,
    others: Sequence[HardwareProfile] = (),
    suggest_smaller: bool = True,
    artifact_quant: str | None = None,
) -> Plan:
    """The plan for `profile`'s own type; `artifact_quant` (--quant auto) names the file
    the command runs, while sizes and verdict stay those of the profile's type, whose
    memory the auto budget is computed from."""
    spec = spec_from_source(source) if isinstance(source, SourceModel) else source
    g = spec.geometry
    ctx = min(context or DEFAULT_CONTEXT, g.max_position_embeddings)
    if ctx < 1:
        raise PlanError(f"Context must be at least 1 token, got {context}.")
    result = fitting.evaluate(spec, profile, ctx)
    weights = mem.artifact_weights_bytes(spec, profile.format, profile.quant)
    max_ctx = 0 if result.fit == "none" else fitting.max_context(spec, profile, result.fit)
    notes = list(_notes(spec, profile, result, ctx, context))
    thought_in_content = profile.runtime == "llama.cpp" and not _server_parses_reasoning(spec)
    if thought_in_content:
        notes.append(LLAMA_SERVER_NO_REASONING)
    recommended = smaller = None
    if result.fit != "full":
        recommended = recommend_profile(spec, others, ctx, exclude=profile.name)
        if suggest_smaller:
            smaller = smaller_models(spec, profile, ctx)
    command, modelfile = _command(spec, profile, result, thought_in_content, artifact_quant)
    return Plan(
        model=spec.name,
        profile=profile.name,
        fit=result.fit,
        format=profile.format,
        quant=artifact_quant or profile.quant,
        runtime=profile.runtime,
        context=ctx,
        weights_bytes=weights,
        kv_cache_bytes=result.kv_bytes,
        overhead_bytes=result.overhead_bytes,
        total_bytes=result.resident_weights + result.kv_bytes + result.overhead_bytes,
        gpu_layers=result.gpu_layers,
        n_layers=g.num_layers,
        max_context=max_ctx,
        command=command,
        device_need_bytes=result.device_need,
        device_budget_bytes=result.device_budget,
        devices=profile.device_count,
        device_kind=profile.kind,
        modelfile=modelfile,
        recommended_profile=recommended,
        smaller_models=tuple(smaller or ()),
        notes=tuple(notes),
        inventory=spec.inventory,
        convert=_cost_dict(conversion_cost(spec, profile, artifact_quant)),
    )


def _cost_dict(cost) -> dict[str, Any] | None:
    return cost.to_dict() if cost is not None else None


def conversion_cost(spec: ModelSpec, profile: HardwareProfile, artifact_quant: str | None):
    """What `quantkit convert --profile` costs this machine with its defaults (importance
    matrix as the profile says, checks and evaluation on): planning.cost. None for
    `--quant auto` on a profile that is not a GGUF one (the plan refuses it)."""
    from ..formats.quants import AUTO_QUANT, gguf_quant
    from ..runtime.memory import available_memory
    from .cost import CostRequest, choose_repack, convert_cost, gguf_disk_peak
    from .rates import load_rates

    quant = artifact_quant or profile.quant
    auto = quant == AUTO_QUANT.name
    if auto and profile.format != "gguf":
        return None
    imatrix = profile.format == "gguf" and gguf_quant(quant).computes_imatrix(profile.imatrix)
    final = 0 if auto else mem.artifact_weights_bytes(spec, profile.format, quant)
    peak = (gguf_disk_peak(spec, quant, via_bf16=False, probes=auto)
            if profile.format == "gguf" else final)  # fmt: skip
    rates = load_rates()

    def cost_of(repack: bool):
        request = CostRequest(fmt=profile.format, quant=quant, imatrix=imatrix, auto=auto,
                              repack=repack)  # fmt: skip
        return convert_cost(spec, request, rates, disk_peak=peak, disk_final=final or peak)

    # as convert decides it: llama.cpp's weight repacking off where its copy would not fit
    return choose_repack(None, cost_of, available_memory())[1]


def recommend_profile(
    spec: ModelSpec, profiles: Sequence[HardwareProfile], context: int, exclude: str = ""
) -> str | None:
    """The profile with the least total device memory on which the model fits fully."""
    candidates = sorted(
        (p for p in profiles if p.name != exclude),
        key=lambda p: (p.total_usable_bytes, p.name),
    )
    for profile in candidates:
        if fitting.evaluate(spec, profile, context).fit == "full":
            return profile.name
    return None


def smaller_models(spec: ModelSpec, profile: HardwareProfile, context: int) -> list[str]:
    """Hermes family members smaller than `spec` that fit this profile fully."""
    out: list[str] = []
    seen: set[str] = set()
    for known in HERMES_FAMILY:
        candidate = spec_from_config(known.config, known.repo_id.split("/")[-1])
        if candidate.parameter_count >= spec.parameter_count or known.size in seen:
            continue
        if fitting.evaluate(candidate, profile, context).fit == "full":
            size = mem.artifact_weights_bytes(candidate, profile.format, profile.quant)
            out.append(f"{known.repo_id} ({profile.quant}, {size / 1e9:.1f} GB)")
            seen.add(known.size)
    return out


def ensure_fits(plan: Plan, *, force: bool = False) -> None:
    """Refuse a plan that does not fit, unless forced (`quantkit convert --force`)."""
    if plan.fit != "none" or force:
        return
    alternatives = []
    if plan.recommended_profile:
        alternatives.append(f"--profile {plan.recommended_profile}")
    if plan.smaller_models:
        alternatives.append(f"a smaller model: {plan.smaller_models[0]}")
    hint = "Try " + " or ".join(alternatives) + ", " if alternatives else ""
    raise PlanError(
        f"{plan.model} as {plan.quant} does not fit profile {plan.profile} at context "
        f"{plan.context}: one device needs {plan.device_need_bytes / 2**30:.1f} GiB of "
        f"{plan.device_budget_bytes / 2**30:.1f} GiB.",
        hint=f"{hint}lower --context, or pass --force to convert anyway.",
    )


def plan_model(
    model: str,
    profile: str | None = None,
    *,
    context: int | None = None,
    revision: str | None = None,
    auto: AutoBudgetFlags | None = None,
) -> list[Plan]:
    """Plans for one profile, or for every profile when `profile` is None; with `auto`
    (--quant auto, one GGUF profile) also the mix --quant auto would start from."""
    spec = load_spec(model, revision=revision)
    everything = list_profiles()
    chosen = [load_profile(profile)] if profile else everything
    if not chosen:
        raise PlanError("No hardware profiles found.", hint="Check QUANTKIT_PROFILES_DIR.")
    quant = AUTO_QUANT.name if auto is not None else None
    plans = [make_plan(spec, p, context, others=everything, artifact_quant=quant) for p in chosen]
    if auto is None:
        return plans
    if len(chosen) != 1 or chosen[0].format != "gguf":
        raise PlanError(
            "--quant auto plans one GGUF profile.",
            hint="Pass --profile NAME with a gguf profile, e.g. rtx4090-4bit.",
        )
    budget = choose_budget(spec, chosen[0], plans[0].context, max_size=auto.max_size, bpw=auto.bpw)
    preview = auto_preview(spec, budget)
    return [replace(plans[0], auto=preview)]


@dataclass(frozen=True)
class AutoBudgetFlags:
    """--quant auto's budget flags on `quantkit plan` (neither: the profile's memory)."""

    max_size: str | None = None
    bpw: float | None = None


def best_plan(plans: Sequence[Plan]) -> Plan | None:
    """The recommendation among plans: a full fit on the least hardware, else the partial
    fit with the most layers on the GPU."""
    full = [p for p in plans if p.fit == "full"]
    if full:  # GPUs before CPU/unified memory, then the least memory in all
        return min(
            full,
            key=lambda p: (p.device_kind != "gpu", p.device_budget_bytes * p.devices, p.profile),
        )
    partial = [p for p in plans if p.fit == "partial"]
    if partial:
        return max(partial, key=lambda p: ((p.gpu_layers or 0) / p.n_layers, p.profile))
    return None


def load_spec(model: str, *, revision: str | None = None) -> ModelSpec:
    """A local model folder, a config.json path, or a Hub repo id (metadata only)."""
    from ..source.model import load_source
    from .model_spec import spec_from_hub

    path = Path(model).expanduser()
    if path.is_file():
        return spec_from_config_file(path)
    if path.is_dir():
        has_weights = any(path.glob("*.safetensors"))
        if has_weights:
            return spec_from_source(load_source(path, require_architecture=False))
        if (path / "config.json").is_file():
            return spec_from_config_file(path / "config.json")
    if model.count("/") == 1 and not model.startswith((".", "/", "~")) and not path.exists():
        return spec_from_hub(model, revision=revision)
    raise PlanError(
        f"{model} is not a model folder, a config.json, or a Hub repo id (owner/name).",
        hint="Pass a folder with config.json, a path to config.json, or e.g. "
        "NousResearch/Hermes-3-Llama-3.1-8B.",
    )


def _command(
    spec: ModelSpec,
    profile: HardwareProfile,
    result: fitting.Fit,
    thought_in_content: bool,
    quant: str | None = None,
):
    if result.fit == "none":
        return None, None
    artifact = cmd.artifact_name(spec.name, profile, quant)
    if profile.runtime == "ollama":
        modelfile = cmd.ollama_modelfile(artifact, result.context, result.gpu_layers)
        return cmd.ollama_command(spec.name), modelfile
    if profile.runtime == "llama.cpp":
        command = cmd.llama_server_command(
            artifact, profile, result.context, result.gpu_layers, thought_in_content
        )
        return command, None
    if profile.runtime == "mlx-lm":
        return cmd.mlx_lm_server_command(artifact), None
    thinks = any("<think>" in t for t in spec.chat_templates.values())
    return cmd.vllm_command(artifact, profile, result.context, thinks), None


def _server_parses_reasoning(spec: ModelSpec) -> bool:
    """True where llama-server will split the thought out, or where the templates are not
    known (a plan from config.json or Hub metadata alone)."""
    return not spec.chat_templates or llama_server_parses_reasoning(spec.chat_templates)


def _notes(
    spec: ModelSpec,
    profile: HardwareProfile,
    result: fitting.Fit,
    ctx: int,
    asked: int | None,
):
    g = spec.geometry
    if asked and asked > g.max_position_embeddings:
        yield f"Context {asked} is past the model's maximum; planned at {ctx}."
    if spec.inventory == "config":
        yield "Tensor shapes were derived from config.json (no safetensors headers read)."
    if result.fit == "partial":
        yield (
            f"{result.gpu_layers} of {g.num_layers} layers on the GPU, the rest and the "
            f"input embeddings in system RAM: expect several times slower generation."
        )
    if profile.format == "fp8" and profile.fp8 == "weight-only":
        yield "No FP8 tensor cores (sm < 8.9): vLLM runs FP8 weight-only (Marlin kernel)."
    if profile.format == "gguf" and g.hidden_size % 256:
        yield (
            f"Hidden size {g.hidden_size} is not a multiple of 256: llama.cpp falls back "
            "from K-quants to Q5_0/Q8_0 for most tensors."
        )
    if profile.runtime == "ollama":
        yield "Ollama picks the chat template from the GGUF; check `ollama show --template`."
