"""What `quantkit convert` is asked to make: the format and type, from flags or a hardware
profile, checked before anything is read."""

from __future__ import annotations

from dataclasses import dataclass

from ..errors import QuantkitError
from ..formats.mlx_quants import MLX_QUANT_NAMES, mlx_quant
from ..formats.quants import AUTO_QUANT, ArtifactFormat, gguf_quant
from ..formats.schemes import SAFETENSORS_QUANTS


@dataclass(frozen=True)
class Target:
    format: str
    quant: str
    profile: str | None = None


# Without --quant: Q4_K_M for GGUF, 4bit for MLX (the first row of its table), else the
# first scheme the scheme table lists per format (BF16, FP8_DYNAMIC, W4A16).
_DEFAULT_QUANT = {
    "gguf": "Q4_K_M",
    "mlx": MLX_QUANT_NAMES[0],
    **{f: quants[0] for f, quants in SAFETENSORS_QUANTS.items()},
}


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
        raise QuantkitError(
            f"Unknown format {fmt!r}.", hint="Use gguf, safetensors, fp8, gptq or mlx."
        )
    quant = quant or _DEFAULT_QUANT[fmt]
    if quant.upper() == AUTO_QUANT.name and fmt != ArtifactFormat.GGUF.value:
        raise QuantkitError(
            f"--quant auto chooses a llama.cpp type per tensor: it makes GGUF files, not {fmt}.",
            hint="Use --format gguf or a GGUF profile such as rtx4090-4bit.",
        )
    if fmt == ArtifactFormat.GGUF.value:
        quant = gguf_quant(quant).name
    if fmt == ArtifactFormat.MLX.value:  # mlx-lm's own spelling: 4bit, mixed_4_6, BF16
        return Target(fmt, mlx_quant(quant).name, hardware.name if hardware else None), hardware
    return Target(fmt, quant.upper(), hardware.name if hardware else None), hardware
