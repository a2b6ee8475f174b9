"""What `quantkit convert` is asked to make: the format and type (from flags or a hardware
profile) and the knobs of the safetensors, FP8 and GPTQ paths, checked before any weight is
read."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from .errors import QuantkitError
from .formats import ArtifactFormat, gguf_quant
from .source import SourceModel


@dataclass(frozen=True)
class Target:
    format: str
    quant: str
    profile: str | None = None


_DEFAULT_QUANT = {"gguf": "Q4_K_M", "safetensors": "BF16", "fp8": "FP8_DYNAMIC", "gptq": "W4A16"}


def resolve_target(profile: str | None, fmt: str | None, quant: str | None):
    if profile is None and fmt is None:
        raise QuantkitError(
            "Say what to make: --profile NAME, or --format gguf --quant Q4_K_M.",
            hint="`quantkit profiles` lists the hardware profiles.",
        )
    hardware = None
    if profile is not None:
        from .profiles import load_profile

        hardware = load_profile(profile)
        fmt = fmt or hardware.format
        quant = quant or hardware.quant
    fmt = (fmt or "").lower()
    if fmt not in {f.value for f in ArtifactFormat}:
        raise QuantkitError(f"Unknown format {fmt!r}.", hint="Use gguf, safetensors, fp8 or gptq.")
    quant = quant or _DEFAULT_QUANT[fmt]
    if fmt == ArtifactFormat.GGUF.value:
        quant = gguf_quant(quant).name
    return Target(fmt, quant.upper(), hardware.name if hardware else None), hardware


@dataclass(frozen=True)
class SafetensorsOptions:
    """The knobs of the safetensors, FP8 and GPTQ paths (calibration and GPTQ)."""

    calibration: str | None
    samples: int | None
    seq_len: int | None
    seed: int
    think_share: float | None
    tool_share: float | None
    group_size: int
    actorder: bool
    dampening: float
    gptq_format: str
    max_shard_size: int
    quantize_lm_head: bool

    def backend_kwargs(self, calib, force: bool) -> dict[str, Any]:
        return dict(
            calibration=calib,
            group_size=self.group_size,
            actorder=self.actorder,
            dampening=self.dampening,
            gptq_format=self.gptq_format,
            max_shard_size=self.max_shard_size,
            force=force,
            quantize_lm_head=self.quantize_lm_head,
        )


def prepare_safetensors(source: SourceModel, target: Target, options: SafetensorsOptions):
    """Everything the safetensors paths can check before a weight is read: calibration
    data (read and tokenized now, so a bad file fails in seconds), the format/quant pair,
    the group size."""
    from .backends.safetensors_pipeline import needs_calibration, preflight

    calib = None
    if needs_calibration(target.quant):
        from .calibration import load_calibration

        if source.tokenizer is None:
            raise QuantkitError(f"{source.path} has no tokenizer; calibration needs one.")
        calib = load_calibration(
            options.calibration,
            source.tokenizer,
            samples=256 if options.samples is None else options.samples,
            seq_len=2048 if options.seq_len is None else options.seq_len,
            seed=options.seed,
            think_share=options.think_share,
            tool_share=options.tool_share,
        )
    preflight(
        source,
        target.format,
        target.quant,
        calibration=calib,
        group_size=options.group_size,
        dampening=options.dampening,
        gptq_format=options.gptq_format,
    )
    return calib
