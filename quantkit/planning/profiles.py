"""Hardware profiles: profiles/*.toml -> HardwareProfile, validated against a schema.

A profile says what the hardware is (devices, memory, compute capability, FP8 support,
interconnect), how a model is served on it (runtime, parallelism, KV-cache type) and what
artifact quantkit makes for it (format + quant) and which quality it must reach.
Unknown keys are errors: a typo such as `memmory_gib` must not silently fall back to a
default and produce a plan for the wrong machine. docs/profiles.md describes every field.
"""

from __future__ import annotations

import os
import tomllib
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

from ..errors import ProfileError
from ..formats.mlx_quants import MLX_QUANT_NAMES, MLX_QUANTS
from ..formats.quants import GGUF_QUANTS, ArtifactFormat, gguf_quant
from ..formats.schemes import NOT_MADE, SAFETENSORS_QUANTS
from .fp8 import fp8_support

FORMATS = tuple(f.value for f in ArtifactFormat)
RUNTIMES = ("llama.cpp", "ollama", "vllm", "transformers", "mlx-lm")
DEVICE_KINDS = ("gpu", "unified", "cpu")
KV_CACHE_TYPES = ("f16", "q8_0", "fp8")
IMATRIX_SETTINGS = ("auto", "none")  # the default of `convert --imatrix` for this profile
# q8_0 is llama.cpp's cache type (-ctk/-ctv), fp8 is vLLM's (--kv-cache-dtype fp8).
KV_TYPES_BY_RUNTIME = {
    "llama.cpp": ("f16", "q8_0"),
    "ollama": ("f16", "q8_0"),
    "vllm": ("f16", "fp8"),
    "transformers": ("f16",),
    "mlx-lm": ("f16",),  # mlx-lm keeps the KV cache in the model dtype
}
# Which quant names each artifact format accepts (GGUF: every llama.cpp type we know;
# the others: formats.schemes' table, the same one the backend refuses by).
QUANTS_BY_FORMAT: dict[str, tuple[str, ...]] = {
    "gguf": tuple(GGUF_QUANTS),
    "mlx": MLX_QUANT_NAMES,  # formats.mlx_quants' table, in mlx-lm's spelling
    **SAFETENSORS_QUANTS,
}
# Runtimes that can load each format.
RUNTIMES_BY_FORMAT: dict[str, tuple[str, ...]] = {
    "gguf": ("llama.cpp", "ollama"),
    "safetensors": ("vllm", "transformers"),
    "fp8": ("vllm", "transformers"),
    "gptq": ("vllm", "transformers"),
    "mlx": ("mlx-lm",),
}
# mlx-lm runs on Apple silicon (Metal, unified memory); mlx's CPU build runs it elsewhere.
MLX_DEVICE_KINDS = ("unified", "cpu")


@dataclass(frozen=True)
class QualityGate:
    """The quality an artifact must reach against its source (checked by
    quantkit.evaluation.gates)."""

    max_ppl_increase: float  # relative: 0.03 = perplexity may rise by 3 %
    max_kld: float  # mean KL divergence (nats/token) vs the source
    min_top1: float  # share of positions where the top-1 token agrees with the source


@dataclass(frozen=True)
class HardwareProfile:
    name: str
    description: str
    format: str  # one of FORMATS
    quant: str  # e.g. "Q4_K_M", "BF16", "FP8_DYNAMIC", "W4A16"
    runtime: str  # the runtime the run command is written for
    runtimes: tuple[str, ...]  # every runtime that can serve this profile's artifact
    device: str  # marketing name, e.g. "NVIDIA GeForce RTX 4090"
    kind: str  # gpu | unified (Apple silicon) | cpu
    devices_per_node: int
    nodes: int
    memory_gib: float  # per device (for cpu/unified: the machine's RAM)
    usable_fraction: float  # share of memory_gib a runtime may take (Mac: ~0.75)
    compute_capability: str | None  # CUDA sm version "8.9"; None for non-NVIDIA
    fp8: str  # native | weight-only | none
    interconnect: str
    system_ram_gib: float  # host RAM per node, where llama.cpp keeps offloaded layers
    kv_cache_type: str  # f16 | q8_0
    tensor_parallel: int
    pipeline_parallel: int
    gpu_memory_utilization: float  # vLLM's --gpu-memory-utilization
    quality: QualityGate
    source: Path | None = None
    imatrix: str | None = None  # "auto" | "none" | None (quantkit's per-type default)

    @property
    def device_count(self) -> int:
        return self.devices_per_node * self.nodes

    @property
    def memory_bytes(self) -> int:
        """Memory of one device, in bytes."""
        return int(self.memory_gib * 1024**3)

    @property
    def usable_bytes(self) -> int:
        """What a runtime may use on one device (before the runtime's own overheads)."""
        return int(self.memory_bytes * self.usable_fraction)

    @property
    def total_usable_bytes(self) -> int:
        return self.usable_bytes * self.device_count

    @property
    def system_ram_bytes(self) -> int:
        return int(self.system_ram_gib * 1024**3)

    @property
    def is_gpu(self) -> bool:
        return self.kind == "gpu"


# --- schema -------------------------------------------------------------------------------
# key -> (python types, required, default). Tables are validated key by key.
_NUM = (int, float)
_TOP: dict[str, tuple[tuple[type, ...], bool, Any]] = {
    "name": ((str,), True, None),
    "description": ((str,), True, None),
    "format": ((str,), True, None),
    "quant": ((str,), True, None),
    "runtime": ((str,), True, None),
    "runtimes": ((list,), False, None),
    "kv_cache_type": ((str,), False, "f16"),
    "imatrix": ((str,), False, None),
}
_HARDWARE: dict[str, tuple[tuple[type, ...], bool, Any]] = {
    "device": ((str,), True, None),
    "kind": ((str,), True, None),
    "count": ((int,), False, 1),
    "nodes": ((int,), False, 1),
    "memory_gib": (_NUM, True, None),
    "usable_fraction": (_NUM, False, 1.0),
    "compute_capability": ((str,), False, None),
    "fp8": ((str,), False, None),
    "interconnect": ((str,), False, "none"),
    "system_ram_gib": (_NUM, False, None),
}
_PARALLEL: dict[str, tuple[tuple[type, ...], bool, Any]] = {
    "tensor": ((int,), False, None),
    "pipeline": ((int,), False, None),
    "gpu_memory_utilization": (_NUM, False, 0.90),
}
_QUALITY: dict[str, tuple[tuple[type, ...], bool, Any]] = {
    "max_ppl_increase": (_NUM, True, None),
    "max_kld": (_NUM, True, None),
    "min_top1": (_NUM, True, None),
}
_TABLES = {
    "hardware": (_HARDWARE, True),
    "parallel": (_PARALLEL, False),
    "quality": (_QUALITY, True),
}


def profiles_dir() -> Path:
    """QUANTKIT_PROFILES_DIR, else the shipped profiles: quantkit/data/profiles, a symlink
    to the repo's top-level profiles/ in a checkout, which a wheel build copies in (so
    `pip install .` ships them too)."""
    env = os.environ.get("QUANTKIT_PROFILES_DIR")
    if env:
        return Path(env)
    return Path(str(resources.files("quantkit") / "data" / "profiles")).resolve()


def list_profiles() -> list[HardwareProfile]:
    folder = profiles_dir()
    return [_load_file(path) for path in sorted(folder.glob("*.toml"))]


def profile_names() -> list[str]:
    return sorted(path.stem for path in profiles_dir().glob("*.toml"))


def load_profile(name_or_path: str) -> HardwareProfile:
    """A profile by name (profiles/NAME.toml) or by path to a .toml file."""
    path = Path(name_or_path).expanduser()
    if name_or_path.endswith(".toml") or path.is_file():
        if not path.is_file():
            raise ProfileError(f"Profile file {path} does not exist.", hint="Check the path.")
        return _load_file(path)
    candidate = profiles_dir() / f"{name_or_path}.toml"
    if not candidate.is_file():
        known = ", ".join(profile_names()) or "(none found)"
        raise ProfileError(
            f"Unknown profile {name_or_path!r}.",
            hint=f"Known profiles: {known}. Or pass the path to a .toml file "
            "(see docs/profiles.md).",
        )
    return _load_file(candidate)


def _load_file(path: Path) -> HardwareProfile:
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except tomllib.TOMLDecodeError as exc:
        raise ProfileError(f"{path} is not valid TOML ({exc}).") from exc
    profile = profile_from_dict(data, source=path)
    if profile.name != path.stem:
        raise ProfileError(
            f"{path}: name {profile.name!r} differs from the file name.",
            hint=f"Rename the file to {profile.name}.toml or set name = {path.stem!r}.",
        )
    return profile


def profile_from_dict(data: dict[str, Any], *, source: Path | None = None) -> HardwareProfile:
    """Validate one parsed profile and build it; every problem names the file and key."""
    where = str(source) if source else "profile"
    top = _check_table(data, _TOP, where, extra_tables=set(_TABLES))
    tables = {}
    for table, (schema, required) in _TABLES.items():
        raw = data.get(table)
        if raw is None and required:
            raise ProfileError(f"{where}: missing table [{table}].", hint=_DOC_HINT)
        if raw is not None and not isinstance(raw, dict):
            raise ProfileError(f"{where}: {table} must be a table ([{table}]).", hint=_DOC_HINT)
        tables[table] = _check_table(raw or {}, schema, f"{where} [{table}]")
    hw, par, qual = tables["hardware"], tables["parallel"], tables["quality"]

    fmt = _choice(top["format"], FORMATS, where, "format")
    quant = top["quant"].upper()
    if fmt == "mlx":  # mlx-lm spells its quants 4bit, mixed_4_6: matched case-insensitively
        quant = {q.lower(): q for q in MLX_QUANTS}.get(quant.lower(), quant)
    if quant not in QUANTS_BY_FORMAT[fmt]:
        raise ProfileError(
            f"{where}: quant {top['quant']!r} is not a {fmt} quant.",
            hint=NOT_MADE.get(quant, f"Use one of: {', '.join(QUANTS_BY_FORMAT[fmt])}."),
        )
    runtime = _choice(top["runtime"], RUNTIMES, where, "runtime")
    if runtime not in RUNTIMES_BY_FORMAT[fmt]:
        raise ProfileError(
            f"{where}: runtime {runtime!r} cannot load {fmt} artifacts.",
            hint=f"Use one of: {', '.join(RUNTIMES_BY_FORMAT[fmt])}.",
        )
    runtimes = tuple(top["runtimes"] or (runtime,))
    for rt in runtimes:
        _choice(rt, RUNTIMES_BY_FORMAT[fmt], where, "runtimes")
    kv_type = _choice(top["kv_cache_type"], KV_TYPES_BY_RUNTIME[runtime], where, "kv_cache_type")
    imatrix = _imatrix_setting(top["imatrix"], fmt, quant, where)
    kind = _choice(hw["kind"], DEVICE_KINDS, where, "hardware.kind")
    if runtime == "mlx-lm" and kind not in MLX_DEVICE_KINDS:
        raise ProfileError(
            f"{where}: runtime 'mlx-lm' runs on Apple silicon (unified memory), not a {kind} "
            "device.",
            hint="Use hardware.kind = 'unified' for a Mac.",
        )
    if runtime not in ("llama.cpp", "ollama", "mlx-lm") and kind != "gpu":
        raise ProfileError(
            f"{where}: runtime {runtime!r} needs NVIDIA GPUs, not a {kind} device.",
            hint="Use format gguf with runtime llama.cpp for CPU and Apple silicon.",
        )
    cc = hw["compute_capability"]
    fp8 = fp8_support(cc, hw["fp8"], kind, where, _DOC_HINT)
    if fmt == "fp8" and fp8 == "none":
        raise ProfileError(
            f"{where}: format fp8 needs an NVIDIA GPU of compute capability 8.0 or newer.",
            hint="Pick another format (gguf, gptq) for this hardware.",
        )
    count, nodes = _positive(hw["count"], where, "count"), _positive(hw["nodes"], where, "nodes")
    tp = par["tensor"] if par["tensor"] is not None else count
    pp = par["pipeline"] if par["pipeline"] is not None else nodes
    if tp * pp != count * nodes:
        raise ProfileError(
            f"{where}: tensor ({tp}) x pipeline ({pp}) must equal the device count "
            f"({count} x {nodes} nodes).",
            hint="Set [parallel] tensor/pipeline so every device is used once.",
        )
    memory = float(hw["memory_gib"])
    usable = float(hw["usable_fraction"])
    gmu = float(par["gpu_memory_utilization"])
    for label, value in (("usable_fraction", usable), ("gpu_memory_utilization", gmu)):
        if not 0 < value <= 1:
            raise ProfileError(f"{where}: {label} must be in (0, 1], got {value}.")
    if memory <= 0:
        raise ProfileError(f"{where}: memory_gib must be positive, got {memory}.")
    # cpu/unified: the device memory *is* system RAM.
    ram = (
        hw["system_ram_gib"]
        if hw["system_ram_gib"] is not None
        else (memory if kind != "gpu" else 0.0)
    )
    return HardwareProfile(
        name=top["name"],
        description=top["description"],
        format=fmt,
        quant=quant,
        runtime=runtime,
        runtimes=runtimes,
        device=hw["device"],
        kind=kind,
        devices_per_node=count,
        nodes=nodes,
        memory_gib=memory,
        usable_fraction=usable,
        compute_capability=cc,
        fp8=fp8,
        interconnect=hw["interconnect"],
        system_ram_gib=float(ram),
        kv_cache_type=kv_type,
        tensor_parallel=tp,
        pipeline_parallel=pp,
        gpu_memory_utilization=gmu,
        quality=QualityGate(
            max_ppl_increase=float(qual["max_ppl_increase"]),
            max_kld=float(qual["max_kld"]),
            min_top1=float(qual["min_top1"]),
        ),
        source=source,
        imatrix=imatrix,
    )


_DOC_HINT = "See docs/profiles.md for the schema."


def _check_table(
    raw: dict[str, Any],
    schema: dict[str, tuple[tuple[type, ...], bool, Any]],
    where: str,
    extra_tables: set[str] | None = None,
) -> dict[str, Any]:
    allowed = set(schema) | (extra_tables or set())
    unknown = sorted(set(raw) - allowed)
    if unknown:
        raise ProfileError(
            f"{where}: unknown key(s) {', '.join(unknown)}.",
            hint=f"Allowed here: {', '.join(sorted(allowed))}. {_DOC_HINT}",
        )
    out: dict[str, Any] = {}
    for key, (types, required, default) in schema.items():
        if key not in raw:
            if required:
                raise ProfileError(f"{where}: missing required key {key!r}.", hint=_DOC_HINT)
            out[key] = default
            continue
        value = raw[key]
        # bool is an int subclass; `count = true` is a mistake, not 1.
        if isinstance(value, bool) or not isinstance(value, types):
            names = " or ".join(t.__name__ for t in types)
            raise ProfileError(f"{where}: {key} must be {names}, got {value!r}.", hint=_DOC_HINT)
        out[key] = value
    return out


def _choice(value: str, choices: tuple[str, ...], where: str, key: str) -> str:
    if value not in choices:
        raise ProfileError(
            f"{where}: {key} {value!r} is not one of {', '.join(choices)}.", hint=_DOC_HINT
        )
    return value


def _imatrix_setting(value: str | None, fmt: str, quant: str, where: str) -> str | None:
    """`imatrix = "auto"` asks for an importance matrix by default for the profile's type,
    which must be a llama.cpp-made GGUF type of 4 bits or lower (formats.py's bits class;
    `--imatrix auto` still works for any llama.cpp type); `"none"` cannot be the default of
    a type that needs one."""
    if value is None:
        return None
    _choice(value, IMATRIX_SETTINGS, where, "imatrix")
    spec = gguf_quant(quant) if fmt == "gguf" else None
    if value == "auto" and (spec is None or spec.written_directly):
        raise ProfileError(
            f"{where}: imatrix = 'auto' applies to GGUF types made by llama.cpp's quantizer, "
            f"not {fmt} {quant}.",
            hint="Remove the imatrix key, or use a type such as Q4_K_M.",
        )
    if value == "auto" and not spec.low_bit:
        raise ProfileError(
            f"{where}: imatrix = 'auto' is a default for types of 4 bits and lower; {quant} is "
            f"{spec.bits}-bit.",
            hint="Remove the imatrix key (convert --imatrix auto still computes one when "
            "asked), or use a type such as Q4_K_M.",
        )
    if value == "none" and spec is not None and spec.needs_imatrix:
        raise ProfileError(
            f"{where}: {quant} needs an importance matrix; imatrix = 'none' cannot make it.",
            hint="Use imatrix = 'auto' or remove the key.",
        )
    return value


def _positive(value: int, where: str, key: str) -> int:
    if value < 1:
        raise ProfileError(f"{where}: hardware.{key} must be at least 1, got {value}.")
    return value
