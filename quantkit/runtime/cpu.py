"""What the CPU computes quickly, read from /proc/cpuinfo (no heavy import).

PyTorch's bfloat16 matrix products are fast only where oneDNN has a bfloat16 kernel for the
CPU: x86 with AVX-512 (F, BW, VL, DQ: oneDNN's avx512_core; AVX512_BF16 and AMX add native
instructions) or an Arm CPU with the BF16 extension. Elsewhere (AVX2 without AVX-512, most
desktop and many server CPUs) it emulates them: measured on a 2-core AVX2 EPYC, a
512 x 4096 by 4096 x 14336 product took 7.1x as long in bfloat16 as in float32, and the
8B reference pass ran 4.85x slower (docs/benchmarks.md, "Reference dtype")."""

from __future__ import annotations

import functools

_X86_AVX512_CORE = {"avx512f", "avx512bw", "avx512vl", "avx512dq"}
_NATIVE_BF16 = {"avx512_bf16", "amx_bf16", "bf16"}  # x86 extensions; "bf16": Arm's


@functools.cache
def fast_bfloat16() -> bool:
    """Whether bfloat16 matrix products run at least at float32's speed here; True where
    /proc/cpuinfo cannot say (the choice made before this check existed)."""
    try:
        with open("/proc/cpuinfo", encoding="ascii", errors="replace") as fh:
            text = fh.read()
    except OSError:
        return True
    flags: set[str] = set()
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip() in ("flags", "Features"):
            flags.update(value.split())
    if not flags:
        return True
    return bool(flags & _NATIVE_BF16) or flags >= _X86_AVX512_CORE


def eval_dtype(parameters: int) -> str:
    """The dtype quantkit's transformers evaluation computes in (the source's reference
    logits, a safetensors artifact's, --quant auto's probes): float32 below 2B parameters
    (exact enough that the reference is not the error) and wherever bfloat16 is emulated
    (fast_bfloat16); bfloat16 from 2B on a CPU that computes it natively. The evaluation
    streams one layer at a time either way, so float32 costs a layer's and the head's
    widening, not the model's (planning.cost)."""
    return "float32" if parameters < 2e9 or not fast_bfloat16() else "bfloat16"
