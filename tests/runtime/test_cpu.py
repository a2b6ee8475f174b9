"""runtime.cpu: which CPUs compute bfloat16 natively, read from /proc/cpuinfo, and the
evaluation dtype that follows."""

from __future__ import annotations

import pytest

from quantkit.runtime import cpu

AVX2 = "flags\t\t: fpu sse2 avx avx2 fma f16c bmi2\n"
AVX512 = "flags\t\t: fpu avx2 avx512f avx512dq avx512bw avx512vl\n"
ZEN4 = "flags\t\t: fpu avx2 avx512f avx512dq avx512bw avx512vl avx512_bf16\n"
ARM_BF16 = "Features\t: fp asimd sve bf16 i8mm\n"
ARM = "Features\t: fp asimd crc32\n"


@pytest.mark.parametrize(("cpuinfo", "fast"), [
    (AVX2, False), (AVX512, True), (ZEN4, True), (ARM_BF16, True), (ARM, False),
    ("processor : 0\n", True),  # says nothing: as before the check existed
])  # fmt: skip
def test_fast_bfloat16_from_the_flags(cpuinfo: str, fast: bool, tmp_path, monkeypatch) -> None:
    info = tmp_path / "cpuinfo"
    info.write_text(cpuinfo * 2, encoding="ascii")  # one block per core
    real_open = open
    monkeypatch.setattr("builtins.open", lambda path, *a, **k: real_open(
        info if path == "/proc/cpuinfo" else path, *a, **k))  # fmt: skip
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
