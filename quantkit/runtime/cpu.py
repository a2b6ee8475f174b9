"""What the CPU computes quickly, read from /proc/cpuinfo, and the key llama.cpp's builds
for it are cached under. Standard library only: scripts/setup.sh runs this file as a script
before quantkit is installed (`python quantkit/runtime/cpu.py key|cmake-args`).

PyTorch's bfloat16 matrix products are fast only where oneDNN has a bfloat16 kernel for the
CPU: x86 with AVX-512 (F, BW, VL, DQ: oneDNN's avx512_core; AVX512_BF16 and AMX add native
instructions) or an Arm CPU with the BF16 extension. Elsewhere (AVX2 without AVX-512, most
desktop and many server CPUs) it emulates them: measured on a 2-core AVX2 EPYC, a
512 x 4096 by 4096 x 14336 product took 7.1x as long in bfloat16 as in float32, and the
8B reference pass ran 4.85x slower (docs/benchmarks.md, "Reference dtype")."""

from __future__ import annotations

import functools
import hashlib
import os
import platform
import sys

_X86_AVX512_CORE = {"avx512f", "avx512bw", "avx512vl", "avx512dq"}
_NATIVE_BF16 = {"avx512_bf16", "amx_bf16", "bf16"}  # x86 extensions; "bf16": Arm's


def cpu_flags() -> frozenset[str] | None:
    """The instruction-set flags /proc/cpuinfo lists (x86 "flags", Arm "Features"), or None
    where it cannot say (no such file, as on macOS, or no such line)."""
    try:
        with open("/proc/cpuinfo", encoding="ascii", errors="replace") as fh:
            text = fh.read()
    except OSError:
        return None
    flags: set[str] = set()
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip() in ("flags", "Features"):
            flags.update(value.split())
    return frozenset(flags) or None


def threads() -> int:
    """How many threads quantkit's own work uses: the CPUs this process may run on (its
    affinity, which `taskset`, a container's cpuset and a pinned test worker narrow), not
    the machine's count. llama.cpp's and PyTorch's threads wait for each other at every
    barrier, so a thread beyond those CPUs only waits."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):  # not Linux
        return max(1, os.cpu_count() or 1)


@functools.cache
def fast_bfloat16() -> bool:
    """Whether bfloat16 matrix products run at least at float32's speed here; True where
    /proc/cpuinfo cannot say (the choice made before this check existed)."""
    flags = cpu_flags()
    if flags is None:
        return True
    return bool(flags & _NATIVE_BF16) or flags >= _X86_AVX512_CORE


# --- llama.cpp built for this CPU -----------------------------------------------------------
# scripts/setup.sh builds llama-cpp-python's wheel, and `quantkit doctor --build-llama-server`
# llama-server and llama.cpp's tools, with ggml's CPU kernels compiled for this machine
# (AVX-512, VNNI and BF16 where it has them): on an AVX-512 machine 1.2-1.3x less CPU time
# than the portable AVX2 build in the importance matrix, the checks and the evaluation
# (docs/benchmarks.md, "bench_eval"). Only ggml's CPU backend gets the flag; ggml-base, where
# the quantizers live, is compiled the same either way, so quantization stays byte-identical
# to llama-quantize's. Such a build must never run on a CPU without its instructions, so
# both are cached under `cpu_key()`: a cache or a checkout shared by machines of different
# kinds makes one build per kind (pip's own wheel cache, keyed by the sdist alone, would not).

NATIVE = "-DGGML_NATIVE=ON"  # llama.cpp's CMake option


def cpu_key() -> str:
    """12 hex digits naming what this CPU can run: the architecture and the instruction-set
    flags the kernel reports (what -march=native compiles for)."""
    described = f"{platform.machine()} {' '.join(sorted(cpu_flags() or ()))}"
    return hashlib.sha256(described.encode()).hexdigest()[:12]


def eval_dtype(parameters: int) -> str:
    """The dtype quantkit's transformers evaluation computes in (the source's reference
    logits, a safetensors artifact's, --quant auto's probes): float32 below 2B parameters
    (exact enough that the reference is not the error) and wherever bfloat16 is emulated
    (fast_bfloat16); bfloat16 from 2B on a CPU that computes it natively. The evaluation
    streams one layer at a time either way, so float32 costs a layer's and the head's
    widening, not the model's (planning.cost)."""
    return "float32" if parameters < 2e9 or not fast_bfloat16() else "bfloat16"


if __name__ == "__main__":
    _answers = {"key": cpu_key, "cmake-args": lambda: NATIVE}
    if len(sys.argv) != 2 or sys.argv[1] not in _answers:
        sys.exit(f"usage: python {sys.argv[0]} {'|'.join(_answers)}")
    print(_answers[sys.argv[1]]())
