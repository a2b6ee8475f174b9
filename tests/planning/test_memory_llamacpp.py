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


# The evaluation's llama.cpp context, as quantkit makes it, in a process of its own: the
# model loaded (memory-mapped: no anonymous memory), then one batch of chunks decoded and
# its logits copied (LlamaCppEngine.logits_batch, ChunkDecoder), then one chunk's rows put
# through the KL divergence's float64 exps (evaluation/kl.py). Prints llama.cpp's log of
# the context and the process's RssAnon after each step.
_EVAL_PROBE = """
import json, sys
from pathlib import Path
import numpy as np
from quantkit.evaluation.engines import LlamaCppEngine
from quantkit.evaluation.kl import _normalizer
from quantkit.runtime.llama_cpp import captured_log, weights_repacked
from quantkit.runtime.memory import scored_rows

def rss_anon():
    status = Path("/proc/self/status").read_text().splitlines()
    return next(int(line.split()[1]) * 1024 for line in status if line.startswith("RssAnon:"))

path, n_ctx = Path(sys.argv[1]), int(sys.argv[2])
rows = scored_rows(n_ctx)
with weights_repacked(False):
    engine = LlamaCppEngine(path, n_ctx=n_ctx, n_threads=2)
    n_seq = engine.batch_chunks(rows.stop - rows.start)
    engine.load()
    rng = np.random.default_rng(0)
    chunks = [[int(t) for t in rng.integers(0, 1000, n_ctx)] for _ in range(n_seq)]
    loaded = rss_anon()
    with captured_log() as lines:
        logits = engine.logits_batch(chunks, rows)
    decoded = rss_anon()
    exps = _normalizer(logits[0])[0]
    scoring = rss_anon()
print(json.dumps({"n_seq": n_seq, "log": "".join(lines), "loaded": loaded,
                  "decoded": decoded, "scoring": scoring}))
"""


@pytest.mark.parametrize("n_ctx", [512, 96])
def test_the_evaluations_memory_part_by_part(demo_spec_and_f16, tmp_path, n_ctx):
    """planning.memory.llama_eval_parts against the evaluation itself: its KV cache and
    compute buffer as llama.cpp logs them, and what the process holds once a batch is
    decoded (KV cache, the compute buffer's used part, the work buffer, the output buffer
    and quantkit's copy) and while a chunk is scored (the float64 exps), in RssAnon.
    n_ctx 512: four chunks share each ubatch, one of which is all scored rows; n_ctx 96:
    one chunk a decode (48 queries would be under a flash-attention tile), 47 scored rows
    of its 96 positions, so llama.cpp touches half of the logits it reserved."""
    import json
    import os
    import subprocess
    import sys

    from quantkit.planning.memory import llama_eval_parts
    from quantkit.runtime.memory import scored_rows, sequences_per_batch

    spec, f16 = demo_spec_and_f16
    out = tmp_path / "demo-Q4_K_M.gguf"
    _quantize(f16, out, "Q4_K_M")
    root = str(Path(__file__).resolve().parents[2])
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([root, os.environ.get("PYTHONPATH", "")]))
    proc = subprocess.run([sys.executable, "-c", _EVAL_PROBE, str(out), str(n_ctx)], env=env,
                          capture_output=True, text=True, timeout=300)  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    run = json.loads(proc.stdout.strip().splitlines()[-1])
    g = spec.geometry
    rows = scored_rows(n_ctx)
    assert run["n_seq"] == sequences_per_batch(rows.stop - rows.start, g.vocab_size, n_ctx)
    assert run["n_seq"] == (4 if n_ctx == 512 else 1)
    parts = llama_eval_parts(g, n_ctx, chunks=9)
    logged = {kind: float(mib) * mem.MIB for _, kind, mib in _BUFFER.findall(run["log"])}
    assert abs(logged["KV"] - parts["KV cache"]) / logged["KV"] < 0.01
    if n_ctx == 512:  # a ubatch of scored rows uses the whole reserve
        assert abs(logged["compute"] - parts["compute buffer"]) / logged["compute"] < 0.05
    else:  # the reserve is for every position an output; the scored half touches half
        reserved = mem.llama_cpp_compute_bytes(g, n_ctx, n_ubatch=n_ctx)
        assert abs(logged["compute"] - reserved) / logged["compute"] < 0.05
        assert parts["compute buffer"] < 0.6 * reserved
    decode = sum(parts[k] for k in ("KV cache", "compute buffer", "work buffer",
                                    "output buffer", "logits copy"))  # fmt: skip
    held = run["decoded"] - run["loaded"]
    assert abs(held - decode) / held < 0.10, (held, parts)
    scoring = run["scoring"] - run["decoded"]
    assert abs(scoring - parts["scoring"]) / scoring < 0.10, (scoring, parts)
