"""Which FP8 a GPU runs, from its CUDA compute capability (profiles state it; the planner
and the run command follow it)."""

from __future__ import annotations

from ..errors import ProfileError

FP8_SUPPORT = ("native", "weight-only", "none")


def fp8_support_for(compute_capability: str | None) -> str:
    """FP8 tensor cores arrived with Ada/Hopper (sm_89, sm_90); Ampere (sm_80/86) runs FP8
    checkpoints weight-only (vLLM's FP8 Marlin kernel dequantizes to 16 bit)."""
    if compute_capability is None:
        return "none"
    major, _, minor = compute_capability.partition(".")
    version = (int(major), int(minor or 0))
    if version >= (8, 9):
        return "native"
    if version >= (8, 0):
        return "weight-only"
    return "none"


def fp8_support(cc: str | None, stated: str | None, kind: str, where: str, hint: str) -> str:
    """A profile's FP8 support: derived from its compute capability; `stated` (the
    profile's hardware.fp8, optional) must agree with it."""
    if cc is not None:
        try:
            derived = fp8_support_for(cc)
        except ValueError as exc:
            raise ProfileError(
                f"{where}: compute_capability {cc!r} is not of the form '8.9'."
            ) from exc
    else:
        derived = "none"
    if kind == "gpu" and cc is None:
        raise ProfileError(
            f"{where}: a gpu profile needs hardware.compute_capability (e.g. '8.9').",
            hint=hint,
        )
    if stated is not None:
        if stated not in FP8_SUPPORT:
            raise ProfileError(
                f"{where}: hardware.fp8 {stated!r} is not one of {', '.join(FP8_SUPPORT)}.",
                hint=hint,
            )
        if stated != derived:
            raise ProfileError(
                f"{where}: hardware.fp8 = {stated!r} contradicts compute capability "
                f"{cc or '(none)'}, which gives {derived!r}.",
                hint="FP8 tensor cores need sm_89 or newer; sm_80/86 run FP8 weight-only.",
            )
    return derived
