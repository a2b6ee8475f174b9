"""Which FP8 a GPU runs, from its CUDA compute capability (profiles state it; the planner
and the run command follow it)."""

from __future__ import annotations


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
