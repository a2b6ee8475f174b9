"""Predicted llama.cpp memory vs what llama.cpp allocates on this machine.

The demo model (SmolLM2-135M with Hermes tokens, hidden size 576: K-quant fallbacks) is
exported to an F16 GGUF by quantkit's writer and quantized by llama.cpp itself
(llama_model_quantize) to Q8_0 and Q4_K_M. Each file is loaded with llama-cpp-python on
the CPU and its verbose log read for the model buffer, the KV cache and the compute
buffer. The planner's numbers must be within 10% of each, and the per-tensor types it
predicts must be the ones llama.cpp chose.
"""

from __future__ import annotations

import ctypes
import re
from pathlib import Path

import pytest
from support.gguf_reader import read_gguf_tensors

from quantkit.planning import memory as mem
from quantkit.planning.model_spec import ModelSpec, spec_from_source
from quantkit.runtime.llama_cpp import captured_log

pytestmark = pytest.mark.slow
llama_cpp = pytest.importorskip("llama_cpp")
pytest.importorskip("gguf")

_BUFFER = re.compile(r"(\w+)\s+(model|KV|compute|output) buffer size =\s+([\d.]+) MiB")


@pytest.fixture(scope="module")
def demo_spec_and_f16(demo_model: Path, tmp_path_factory) -> tuple[ModelSpec, Path]:
    export = pytest.importorskip("quantkit.backends.gguf.export")
    from quantkit.source.model import load_source

    source = load_source(demo_model)
    out = tmp_path_factory.mktemp("gguf") / "demo-F16.gguf"
    export.export_gguf(source, out, out_type="F16")
    return spec_from_source(source), out


def _quantize(src: Path, dst: Path, ftype_name: str) -> None:
    from quantkit.formats.quants import gguf_quant

    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = gguf_quant(ftype_name).ftype
    params.nthread = 2
    rc = llama_cpp.llama_model_quantize(str(src).encode(), str(dst).encode(), ctypes.byref(params))
    assert rc == 0, f"llama_model_quantize failed with {rc}"


def _measure(path: Path, n_ctx: int, flash_attn: bool) -> dict[str, float]:
    """Buffer sizes (MiB) from llama.cpp's own load log."""
    # quantkit's own capture: a callback of the test's would replace quantkit's and leave
    # llama.cpp logging to stderr for every later test (silence_llama_cpp installs once).
    with captured_log() as lines:
        llm = llama_cpp.Llama(
            model_path=str(path), n_ctx=n_ctx, n_gpu_layers=0, flash_attn=flash_attn,
            n_batch=512, n_ubatch=512, verbose=True,
        )  # fmt: skip
        del llm
    sizes: dict[str, float] = {}
    for match in _BUFFER.finditer("".join(lines)):
        buffer, kind, mib = match.groups()
        if buffer == "CPU_REPACK":
            # An AVX2 re-layout copy of some Q4_K tensors; their mmap'd originals become
            # reclaimable page cache, so the mapped size is what the plan counts.
            kind = "repack"
        sizes[kind] = sizes.get(kind, 0.0) + float(mib)
    return sizes


@pytest.mark.parametrize("ftype", ["Q8_0", "Q4_K_M"])
def test_predicted_tensor_types_are_llama_cpps(demo_spec_and_f16, tmp_path, ftype):
    spec, f16 = demo_spec_and_f16
    out = tmp_path / f"demo-{ftype}.gguf"
    _quantize(f16, out, ftype)
    actual = {n: t.tensor_type.name for n, t in read_gguf_tensors(out).items()}  # fast reader
    predicted = {t.name: t.ggml_type for t in mem.gguf_tensors(spec, ftype)}
    assert predicted == actual
    # ... and the file size within 3% (metadata is estimated, tensors exact).
    assert abs(mem.gguf_file_bytes(spec, ftype) - out.stat().st_size) / out.stat().st_size < 0.03


@pytest.mark.parametrize(
    ("ftype", "n_ctx", "flash_attn"),
    [("Q8_0", 2048, True), ("Q4_K_M", 4096, True), ("Q4_K_M", 8192, False)],
)
def test_llama_cpp_buffers_within_10_percent(demo_spec_and_f16, tmp_path, ftype, n_ctx, flash_attn):
    spec, f16 = demo_spec_and_f16
    out = tmp_path / f"demo-{ftype}.gguf"
    _quantize(f16, out, ftype)
    measured = _measure(out, n_ctx, flash_attn)
    g = spec.geometry
    predicted = {
        "model": mem.gguf_layout(spec, ftype).total / mem.MIB,
        "KV": mem.kv_cache_bytes(g, mem.llama_cpp_kv_cells(n_ctx)) / mem.MIB,
        "compute": mem.llama_cpp_compute_bytes(g, n_ctx, flash_attn=flash_attn) / mem.MIB,
    }
    for key, value in predicted.items():
        assert key in measured, f"llama.cpp did not report a {key} buffer: {measured}"
        assert abs(value - measured[key]) / measured[key] < 0.10, (key, value, measured)
    assert abs(measured["output"] - mem.llama_cpp_output_bytes(g) / mem.MIB) < 0.01
