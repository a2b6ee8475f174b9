"""runtime.cpu: which CPUs compute bfloat16 natively, read from /proc/cpuinfo, and the
evaluation dtype that follows; the key llama.cpp's builds for this CPU are cached under, and
that the llama.cpp quantkit runs was built for this CPU."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from quantkit.runtime import cpu

AVX2 = "flags\t\t: fpu sse2 avx avx2 fma f16c bmi2\n"
AVX512 = "flags\t\t: fpu avx2 avx512f avx512dq avx512bw avx512vl\n"
ZEN4 = "flags\t\t: fpu avx2 avx512f avx512dq avx512bw avx512vl avx512_bf16\n"
ARM_BF16 = "Features\t: fp asimd sve bf16 i8mm\n"
ARM = "Features\t: fp asimd crc32\n"


def _reading(cpuinfo: str, tmp_path: Path, monkeypatch) -> None:
    """/proc/cpuinfo reads as `cpuinfo`, written once per core as the kernel does."""
    info = tmp_path / "cpuinfo"
    info.write_text(cpuinfo * 2, encoding="ascii")
    real_open = open
    monkeypatch.setattr("builtins.open", lambda path, *a, **k: real_open(
        info if path == "/proc/cpuinfo" else path, *a, **k))  # fmt: skip


@pytest.mark.parametrize(("cpuinfo", "fast"), [
    (AVX2, False), (AVX512, True), (ZEN4, True), (ARM_BF16, True), (ARM, False),
    ("processor : 0\n", True),  # says nothing: as before the check existed
])  # fmt: skip
def test_fast_bfloat16_from_the_flags(cpuinfo: str, fast: bool, tmp_path, monkeypatch) -> None:
    _reading(cpuinfo, tmp_path, monkeypatch)
    cpu.fast_bfloat16.cache_clear()
    try:
        assert cpu.fast_bfloat16() is fast
    finally:
        cpu.fast_bfloat16.cache_clear()


@pytest.mark.parametrize(("parameters", "fast", "dtype"), [
    (1.2e9, True, "float32"), (1.2e9, False, "float32"),
    (8e9, True, "bfloat16"), (8e9, False, "float32"),
])  # fmt: skip
def test_eval_dtype(parameters: float, fast: bool, dtype: str, monkeypatch) -> None:
    monkeypatch.setattr(cpu, "fast_bfloat16", lambda: fast)
    assert cpu.eval_dtype(int(parameters)) == dtype


def test_the_build_key_follows_the_instruction_sets(tmp_path: Path, monkeypatch) -> None:
    """One key per kind of CPU: a build for AVX-512 is never found by an AVX2 machine; the
    order of the flags and the number of cores do not matter."""
    keys = {}
    for name, cpuinfo in (("avx2", AVX2), ("avx512", AVX512), ("zen4", ZEN4), ("arm", ARM),
                          ("avx2 reordered", "flags : bmi2 f16c fma avx2 avx sse2 fpu\n")):
        _reading(cpuinfo, tmp_path, monkeypatch)
        keys[name] = cpu.cpu_key()
    assert keys["avx2"] == keys["avx2 reordered"]
    assert len({keys[n] for n in ("avx2", "avx512", "zen4", "arm")}) == 4
    assert all(len(k) == 12 and int(k, 16) >= 0 for k in keys.values())


def test_setup_reads_the_same_key_and_flags_without_quantkit_installed() -> None:
    """scripts/setup.sh runs the module as a file, with the system's Python, before quantkit
    is installed: it must give what the package computes."""
    module = Path(cpu.__file__)

    def run(*args: str) -> str:
        proc = subprocess.run([sys.executable, "-S", str(module), *args], capture_output=True,
                              text=True, cwd=module.parent)  # fmt: skip
        assert proc.returncode == 0, proc.stderr
        return proc.stdout.strip()

    assert run("key") == cpu.cpu_key()
    assert run("cmake-args") == cpu.NATIVE
    bad = subprocess.run([sys.executable, str(module), "nonsense"], capture_output=True,
                         text=True)  # fmt: skip
    assert bad.returncode == 1 and "usage:" in bad.stderr


def test_llama_cpp_runs_kernels_built_for_this_cpu() -> None:
    """scripts/setup.sh builds llama-cpp-python for this CPU: llama.cpp's own report of its
    kernels has AVX-512 exactly where /proc/cpuinfo has it (a portable build reports AVX2
    alone on an AVX-512 machine)."""
    from quantkit.runtime.llama_cpp import cpu_features

    flags = cpu.cpu_flags() or frozenset()
    features = cpu_features()
    for flag, feature in (("avx2", "AVX2"), ("avx512f", "AVX512"), ("avx512_bf16", "AVX512_BF16"),
                          ("avx512_vnni", "AVX512_VNNI")):  # fmt: skip
        built = f"{feature} = 1" in features
        assert built == (flag in flags), (flag, features)


def test_threads_follow_the_affinity_not_the_machine() -> None:
    """A process confined to one CPU (taskset, a cpuset, a pinned test worker) sizes its
    thread pools for one, whatever the machine has (Linux: sched_setaffinity)."""
    code = ("import os; os.sched_setaffinity(0, {min(os.sched_getaffinity(0))}); "
            "from quantkit.runtime import cpu; print(cpu.threads())")  # fmt: skip
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "1"
    assert cpu.threads() == len(os.sched_getaffinity(0))
