"""llama.cpp's weight repacking (runtime.llama_cpp): on, as in llama.cpp, and off for
every GGUF load of the checks and the evaluation inside `weights_repacked(False)`: the
evaluation's engine, the generation check's `Llama`, llama-server's command line. What
llama.cpp did is read from its own load log (its CPU_REPACK buffer)."""

from __future__ import annotations

from pathlib import Path

import pytest

from quantkit.runtime.llama_cpp import captured_log, open_llama, repacking, weights_repacked

pytestmark = pytest.mark.slow  # the demo's Q4_K_M artifact


def _gguf(folder: Path) -> Path:
    (path,) = folder.glob("*.gguf")
    return path


def _repacked(log: list[str]) -> bool:
    text = "".join(log)
    assert "model buffer size" in text, "llama.cpp's load log was not captured"
    return "CPU_REPACK" in text


def test_the_engine_follows_the_block(demo_artifact_cached: Path) -> None:
    from quantkit.evaluation.engines import LlamaCppEngine

    seen = {}
    for repack in (True, False):
        with weights_repacked(repack), captured_log() as log:
            engine = LlamaCppEngine(_gguf(demo_artifact_cached), n_ctx=64, n_threads=2)
            engine.load()
            try:
                engine.logits([1, 2, 3])
            finally:
                engine.close()
        seen[repack] = (_repacked(log), engine.describe())
    assert seen[True] == (True, "llama.cpp (weights repacked)")
    assert seen[False] == (False, "llama.cpp (weights not repacked)")
    assert repacking()  # the block ended


def test_the_generation_checks_llama_follows_the_block(demo_artifact_cached: Path) -> None:
    import llama_cpp.llama_cpp as lib

    original = lib.llama_model_default_params
    for repack in (False, True):
        with weights_repacked(repack), captured_log() as log:
            open_llama(_gguf(demo_artifact_cached), n_ctx=64, verbose=False).close()
        assert _repacked(log) is repack
    assert lib.llama_model_default_params is original
    assert original().use_extra_bufts  # llama.cpp's default, left as it was


def test_llama_server_is_told(demo_artifact_cached: Path) -> None:
    from quantkit.runtime.llama_server import LlamaServer, ServerBinary

    binary = ServerBinary(Path("llama-server"), "PATH")
    gguf = _gguf(demo_artifact_cached)
    assert "--no-repack" not in LlamaServer(binary, gguf).command()
    with weights_repacked(False):
        assert "--no-repack" in LlamaServer(binary, gguf).command()


def test_inspect_without_repacking(demo_artifact_cached: Path) -> None:
    """`quantkit inspect --generate --no-repack`: the generation check loads the weights
    without the repacked copy, and passes as it does with it."""
    import quantkit
    from quantkit.inspection import ServerOptions

    no_server = ServerOptions(enabled=False)
    for repack in (False, True):
        with captured_log() as log:
            report = quantkit.inspect(demo_artifact_cached, generate=True, server=no_server,
                                      repack=repack)  # fmt: skip
        assert report.passed, report.to_dict()
        assert _repacked(log) is repack


def test_a_converts_choice_reaches_its_evaluation(demo_model: Path, tmp_path: Path) -> None:
    """`convert --no-repack` (GGUFOptions.repack=False): the evaluation at its end loads the
    artifact without the repacked copy too (evaluate() used to default to repacking on,
    overriding the convert's block: the 8B convert's evaluation held 2.9 GB it was told
    not to), and its report says so."""
    import quantkit
    from quantkit.evaluation.corpus import default_corpus_dir
    from quantkit.evaluation.options import EvalOptions

    # The shipped corpus's prose alone (2 chunks of its 9): how the evaluation loads the
    # artifact does not depend on how many chunks it then scores (as in
    # tests/planning/test_cost.py); the 9 chunks were most of this convert's time.
    short = EvalOptions(gate=False, corpus=default_corpus_dir() / "prose.txt")
    with captured_log() as log:
        result = quantkit.convert(
            demo_model, out=tmp_path / "out", format="gguf", quant="Q4_K_M",
            gguf=quantkit.GGUFOptions(imatrix="none", repack=False), verify=False,
            evaluation=short,
        )  # fmt: skip
    assert result.quality is not None
    assert result.quality["engine_detail"] == "llama.cpp (weights not repacked)"
    assert _repacked(log) is False


def test_the_repacked_types_are_the_ones_llama_cpp_repacks(
    demo_model: Path, bf16_gguf, tmp_path: Path
) -> None:
    """`repacked_types()`, what the memory estimate counts (planning.cost), against
    llama.cpp's own load log: the demo quantized with a type per tensor (Q2_K, Q5_K, IQ4_NL,
    Q8_0 beside the Q4_K_M mix and its fallbacks); llama.cpp's CPU_REPACK buffer holds
    exactly the matrices of those types (rows in multiples of 8; the token embedding is
    looked up, not multiplied, and stays in the file)."""
    import re

    from quantkit.backends.gguf.quantize import quantize_gguf
    from quantkit.formats.gguf_read import read_header
    from quantkit.runtime.ggml_quant import row_bytes
    from quantkit.runtime.llama_cpp import repacked_types

    gguf = tmp_path / "mixed.gguf"
    overrides = {"blk.0.ffn_down.weight": "Q2_K", "blk.1.ffn_down.weight": "Q5_K",
                 "blk.2.attn_q.weight": "IQ4_NL", "blk.3.ffn_up.weight": "Q8_0"}  # fmt: skip
    quantize_gguf(bf16_gguf(demo_model), gguf, "Q4_K_M", tensor_types=overrides)
    tensors = read_header(gguf).tensors.values()
    assert {t.type_name for t in tensors} >= {"Q2_K", "Q5_K", "IQ4_NL", "Q8_0", "Q4_K"}
    counted = sum(row_bytes(t.type_name, t.dims[0]) * t.dims[1] for t in tensors
                  if len(t.dims) == 2 and t.dims[1] % 8 == 0 and t.name != "token_embd.weight"
                  and t.type_name in repacked_types())  # fmt: skip
    with weights_repacked(True), captured_log() as log:
        open_llama(gguf, n_ctx=64, verbose=False).close()
    found = re.search(r"CPU_REPACK model buffer size =\s*([\d.]+) MiB", "".join(log))
    assert found, "llama.cpp repacked nothing"
    assert float(found[1]) == pytest.approx(counted / 2**20, abs=0.01)
