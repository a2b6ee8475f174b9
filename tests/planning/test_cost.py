"""What a conversion costs this machine (quantkit.planning.cost and .rates): the stages each
path runs, memory that follows the largest layer and not the model, times from the rates
this machine measured, and the preflight that refuses a convert the memory cannot hold."""

from __future__ import annotations

import json
import time
from dataclasses import replace
from pathlib import Path

import pytest

import quantkit
from quantkit.errors import MemoryShortError
from quantkit.planning.cost import (
    OVERHEAD_LABEL,
    CostRequest,
    StageCost,
    convert_cost,
    gguf_disk_peak,
)
from quantkit.planning.memory import llama_cpp_compute_bytes
from quantkit.planning.model_spec import spec_from_config
from quantkit.planning.rates import REFERENCE_RATES, Rates, load_rates, record_rates

LLAMA = {
    "architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_act": "silu",
    "num_key_value_heads": 8, "vocab_size": 128256, "max_position_embeddings": 131072,
    "rms_norm_eps": 1e-5, "rope_theta": 500000.0, "torch_dtype": "bfloat16",
}  # fmt: skip
SHAPES = {
    "1b": dict(hidden_size=2048, intermediate_size=8192, num_hidden_layers=16,
               num_attention_heads=32, head_dim=64, tie_word_embeddings=True),
    "8b": dict(hidden_size=4096, intermediate_size=14336, num_hidden_layers=32,
               num_attention_heads=32, head_dim=128, tie_word_embeddings=False),
    "70b": dict(hidden_size=8192, intermediate_size=28672, num_hidden_layers=80,
                num_attention_heads=64, head_dim=128, tie_word_embeddings=False),
    "405b": dict(hidden_size=16384, intermediate_size=53248, num_hidden_layers=126,
                 num_attention_heads=128, head_dim=128, tie_word_embeddings=False),
}  # fmt: skip
REFERENCE = Rates({}, "reference")


@pytest.fixture(autouse=True)
def native_bfloat16(monkeypatch):
    """A CPU that computes bfloat16 natively (as the reference machine did), whatever
    this one is: the evaluation's dtype above 2B depends on it (runtime.cpu)."""
    monkeypatch.setattr("quantkit.runtime.cpu.fast_bfloat16", lambda: True)


def spec(shape: str):
    return spec_from_config({**LLAMA, **SHAPES[shape]}, f"llama-{shape}")


def cost(shape: str, **request):
    fields = {"fmt": "gguf", "quant": "Q4_K_M", **request}
    return convert_cost(spec(shape), CostRequest(**fields), REFERENCE, disk_peak=1, disk_final=1)


def labels(result) -> list[str]:
    """The stages that report progress (the last, OVERHEAD_LABEL, is the time between)."""
    assert result.stages[-1].label == OVERHEAD_LABEL
    return [s.label for s in result.stages[:-1]]


def test_each_path_names_the_stages_its_progress_reports() -> None:
    assert labels(cost("1b", imatrix=True)) == [
        "importance matrix (source)", "quantizing to Q4_K_M",
        "checking the artifact", "reference logits (source)", "evaluating artifact (llama.cpp)",
    ]  # fmt: skip
    assert labels(cost("1b", verify=False, evaluate=False)) == ["quantizing to Q4_K_M"]
    assert labels(cost("1b", keep_intermediate=True, verify=False, evaluate=False)) == [
        "writing BF16 GGUF", "llama.cpp quantize to Q4_K_M"]  # fmt: skip
    assert labels(cost("1b", quant="Q8_0", verify=False, evaluate=False)) == ["writing Q8_0 GGUF"]
    # --quant auto measures, probes and quantizes from the shards: no BF16 file written
    auto = cost("1b", quant="AUTO", auto=True, imatrix=True, verify=False, evaluate=False)
    assert [s.label for s in auto.stages] == [
        "importance matrix (source)", "quantizing to AUTO",
        OVERHEAD_LABEL, "--quant auto: probes and relative errors"]  # fmt: skip
    kept = cost("1b", quant="AUTO", auto=True, keep_intermediate=True, verify=False,
                evaluate=False)  # fmt: skip
    # auto builds its file itself from the BF16 file: not llama.cpp's quantizer's stage
    assert [s.label for s in kept.stages[:2]] == ["writing BF16 GGUF", "quantizing to AUTO"]
    fp8 = cost("1b", fmt="fp8", quant="FP8_DYNAMIC")
    from quantkit.backends.safetensors.model_free import STAGE  # the stage its progress names

    assert labels(fp8)[0] == STAGE
    assert labels(fp8)[-1] == "evaluating artifact (transformers)"


def test_memory_follows_the_layer_not_the_model() -> None:
    """From 8B to 70B the model grows 8.8x; the peak of every path grows with the largest
    layer and the vocabulary (about 2x), except the copy of the weights llama.cpp's CPU
    backend repacks while it evaluates a GGUF (its Q4_K, Q4_0, IQ4_NL matrices)."""
    from quantkit.planning.cost import _repacked_bytes

    model_growth = spec("70b").source_bytes / spec("8b").source_bytes
    assert model_growth > 8
    for request in ({"imatrix": True}, {"fmt": "fp8", "quant": "FP8_DYNAMIC"}):
        small, large = cost("8b", **request), cost("70b", **request)
        full = CostRequest(**{"fmt": "gguf", "quant": "Q4_K_M", **request})
        repacked = [_repacked_bytes(spec(s), full) if full.fmt == "gguf" else 0
                    for s in ("8b", "70b")]  # fmt: skip
        assert large.peak_bytes - repacked[1] < 2.5 * (small.peak_bytes - repacked[0])
        assert large.peak_bytes - repacked[1] < spec("70b").source_bytes / 10
    # Q4_K_M's repacked Q4_K matrices: most of its decoder weights (2.9 GB at 8B measured).
    q4 = CostRequest(fmt="gguf", quant="Q4_K_M")
    assert 2.5e9 < _repacked_bytes(spec("8b"), q4) < 3.5e9


def test_the_llama_cpp_evaluation_is_its_batch_of_scored_rows() -> None:
    """The GGUF evaluation holds what evaluation/llama_batch.py's batch needs: as many
    chunks as its own rule decodes at once (no more than the corpus has), the output
    buffer and quantkit's copy of the batch's scored rows, one chunk's rows in float64."""
    from quantkit.planning.memory import llama_eval_parts
    from quantkit.runtime.memory import MOST_SEQUENCES, scored_rows, sequences_per_batch

    g = spec("8b").geometry
    rows = scored_rows(512).stop - scored_rows(512).start
    n_seq = sequences_per_batch(rows, g.vocab_size, 512)
    assert n_seq == MOST_SEQUENCES  # Llama 3's vocabulary at n_ctx 512: the full batch
    parts = llama_eval_parts(g, 512, chunks=9)
    assert parts["output buffer"] == parts["logits copy"] == n_seq * rows * g.vocab_size * 4
    assert parts["scoring"] == rows * g.vocab_size * 8
    # two chunks in the corpus: a batch of two
    two = llama_eval_parts(g, 512, chunks=2)
    assert two["output buffer"] == 2 * rows * g.vocab_size * 4
    assert two["KV cache"] * n_seq == parts["KV cache"] * 2
    # Qwen3's 151,936 tokens: the rule decodes 2 chunks at n_ctx 512
    qwen = replace(g, vocab_size=151_936)
    assert llama_eval_parts(qwen, 512, 9)["output buffer"] == 2 * rows * 151_936 * 4
    # n_ctx 2048, one chunk a decode: its ubatch is the chunk, 1023 of its 2048 rows scored
    long = llama_eval_parts(g, 2048, 9)
    assert long["output buffer"] == 1023 * g.vocab_size * 4
    assert long["compute buffer"] < llama_cpp_compute_bytes(g, 2048, n_ubatch=2048) * 0.6


# Peak RssAnon of the GGUF convert's evaluation stage, measured by scripts/bench_scale.py
# (docs/benchmarks.md, sections "bench_scale 1b flash attention" and "bench_scale 8b session
# 14": the evaluation with flash attention, weights not repacked, `--paths gguf-plain`).
MEASURED_GGUF_EVAL = {"1b": 2.13e9, "8b": 2.34e9}


@pytest.mark.parametrize("shape", sorted(MEASURED_GGUF_EVAL))
def test_the_gguf_evaluation_estimate_meets_the_measured_peak(shape: str) -> None:
    """The issue's bar: within 25 % of the measured peak, and not under it by more than a
    few percent (the preflight must not let through a convert that does not fit)."""
    result = cost(shape, imatrix=True, repack=False)
    stage = next(s for s in result.stages if s.label == "evaluating artifact (llama.cpp)")
    measured = MEASURED_GGUF_EVAL[shape]
    assert -0.03 < stage.peak_bytes / measured - 1 < 0.25, stage.peak_bytes / 1e9


def test_the_fp8_pass_is_bounded_by_a_block_of_rows() -> None:
    """FP8_DYNAMIC reads a weight over FP8_BLOCK_BYTES a block of rows at a time: its stage
    needs the same memory at 8B as at 405B (whose MLP weights are 1.7 GB each in BF16)."""
    from quantkit.runtime.memory import FP8_BLOCK_BYTES, FP8_BLOCK_WORK

    def stage_peak(shape: str) -> int:
        return cost(shape, fmt="fp8", quant="FP8_DYNAMIC").stages[0].peak_bytes

    assert max(t.nbytes for t in spec("405b").tensors) > 25 * FP8_BLOCK_BYTES
    assert stage_peak("8b") == stage_peak("405b") == stage_peak("1b")
    assert stage_peak("405b") < FP8_BLOCK_WORK * FP8_BLOCK_BYTES + 1e9


def test_a_float32_evaluation_widens_the_head_only_while_it_runs() -> None:
    """Below 2B parameters the reference runs in float32: the BF16 head is widened while
    it is applied, after the decoder's activations are gone, so the peak is the larger of
    the two phases, not their sum; above 2B nothing is widened."""
    s = spec("1b")
    widened = s.geometry.vocab_size * s.geometry.hidden_size * 4
    reference = cost("1b").stages[-3]
    assert reference.label == "reference logits (source)"
    assert widened < reference.peak_bytes < widened + 2 * 1024**3
    eight = cost("8b").stages[-3]
    assert eight.peak_bytes < reference.peak_bytes + 1024**3  # 6.5x the parameters


def test_an_emulated_bfloat16_cpu_evaluates_in_float32(monkeypatch) -> None:
    """Where bfloat16 is emulated (AVX2 without AVX-512) the evaluation runs in float32 at
    every size: its rate is float32's, and the 8B peak holds a float32 layer; the 8B head
    (2.1 GB in float32) is widened a slice at a time, so the peak stays under 3 GB."""
    from quantkit.planning.cost import _layer_bytes

    native = cost("8b").stages[-3]
    monkeypatch.setattr("quantkit.runtime.cpu.fast_bfloat16", lambda: False)
    emulated = cost("8b").stages[-3]
    assert (native.rate_key, emulated.rate_key) == ("reference:bfloat16", "reference:float32")
    assert emulated.peak_bytes - native.peak_bytes >= _layer_bytes(spec("8b"), 2)
    assert emulated.peak_bytes < 3e9


def test_time_is_work_over_this_machines_rate() -> None:
    request = CostRequest(fmt="gguf", quant="Q4_K_M", verify=False, evaluate=False)
    base = convert_cost(spec("8b"), request, REFERENCE, disk_peak=1, disk_final=1)
    stage = base.stages[0]
    assert stage.label == "quantizing to Q4_K_M"
    reference = REFERENCE.rate("quantize:Q4_K_M")
    assert stage.seconds == pytest.approx(spec("8b").parameter_count / reference)
    faster = Rates({"quantize:Q4_K_M": 4 * reference}, "this machine")
    quick = convert_cost(spec("8b"), request, faster, disk_peak=1, disk_final=1)
    assert quick.stages[0].seconds == pytest.approx(stage.seconds / 4)
    assert quick.rates_from == "this machine"


def test_a_rate_not_measured_falls_back_to_its_family() -> None:
    rates = Rates({"eval:gguf": 5.0}, "this machine")
    assert rates.rate("eval:gguf:Q4_K_M") == 5.0  # this machine's GGUF evaluation
    assert rates.rate("eval:FP8_DYNAMIC:bfloat16") == REFERENCE_RATES.get(
        "eval:FP8_DYNAMIC:bfloat16", REFERENCE_RATES["eval"])  # fmt: skip
    assert rates.rate("no-such-stage") == REFERENCE_RATES["eval"]


def test_rates_are_recorded_from_timed_stages(monkeypatch, tmp_path: Path) -> None:
    monkeypatch.setenv("QUANTKIT_CACHE", str(tmp_path))
    assert load_rates().measured == {}
    stages = [StageCost("quantizing to Q4_K_M", "quantize:Q4_K_M", 8e9, 0),
              StageCost("checking the artifact", "checks:gguf", 1e9, 0)]  # fmt: skip
    record_rates(stages, {"quantizing to Q4_K_M": 400.0, "checking the artifact": 0.5})
    rates = load_rates()
    assert rates.measured == {"quantize:Q4_K_M": pytest.approx(2e7)}  # 0.5 s says too little
    assert rates.origin.startswith("this machine")
    (tmp_path / "rates.json").write_text("{not json", encoding="utf-8")
    assert load_rates().measured == {}  # a damaged file is ignored, not fatal


def test_gguf_disk_peak_is_the_artifact_unless_the_bf16_file_is_kept() -> None:
    """The importance matrix is computed from the shards: no model file is written for it."""
    from quantkit.planning.memory import gguf_file_bytes

    s = spec("8b")
    final, bf16 = (gguf_file_bytes(s, t) for t in ("Q4_K_M", "BF16"))
    assert gguf_disk_peak(s, "Q4_K_M", via_bf16=False) == final
    assert gguf_disk_peak(s, "Q4_K_M", via_bf16=True) == final + bf16


def test_auto_needs_no_bf16_file_unless_it_is_kept() -> None:
    """--quant auto: the probes' shards (2 x Q8_0, a margin) are removed before the file
    (at most Q8_0) is written; --keep-intermediate's BF16 file stays beside them all."""
    from quantkit.planning.memory import gguf_file_bytes

    s = spec("8b")
    q8, bf16 = gguf_file_bytes(s, "Q8_0"), gguf_file_bytes(s, "BF16")
    assert gguf_disk_peak(s, "AUTO", via_bf16=False, probes=True) == 2 * q8
    assert gguf_disk_peak(s, "AUTO", via_bf16=False, probes=False) == q8
    assert gguf_disk_peak(s, "AUTO", via_bf16=True, probes=True) == bf16 + 2 * q8


def test_preflight_refuses_what_memory_cannot_hold(demo_model: Path, tmp_path: Path,
                                                    monkeypatch) -> None:  # fmt: skip
    import quantkit.pipeline as pipeline

    monkeypatch.setattr(pipeline, "available_memory", lambda: 200 * 1024**2)
    out = tmp_path / "out"
    with pytest.raises(MemoryShortError) as info:
        quantkit.convert(demo_model, out=out, format="gguf", quant="Q4_K_M", verify=False)
    message = str(info.value)
    assert "\n" not in message and "GB are available" in message
    assert "(evaluating artifact" in message or "(reference logits" in message
    assert "--no-eval" in info.value.hint  # the evaluation is the peak here
    assert info.value.exit_code == 20
    assert list(tmp_path.iterdir()) == []  # refused before anything was written
    dry = quantkit.convert(demo_model, out=out, format="gguf", quant="Q4_K_M", dry_run=True)
    assert dry.cost is not None and dry.cost.peak_bytes > 200 * 1024**2


@pytest.mark.slow
def test_a_finished_convert_records_its_rates(demo_model: Path, tmp_path: Path,
                                              monkeypatch) -> None:  # fmt: skip
    """The stages the estimate names are the ones the convert reports, so each one's rate
    is kept for the next estimate."""
    from quantkit.evaluation.corpus import default_corpus_dir
    from quantkit.evaluation.options import EvalOptions

    monkeypatch.setenv("QUANTKIT_CACHE", str(tmp_path / "cache"))
    started = time.time()
    seen: list[str] = []
    # The shipped corpus's prose alone (2 chunks of its 9): the stages and the rates they
    # leave do not depend on how many chunks are evaluated, and the evaluation (reference
    # logits included, the cache being empty) is most of this convert's time.
    short = EvalOptions(corpus=default_corpus_dir() / "prose.txt")
    result = quantkit.convert(demo_model, out=tmp_path / "out", format="gguf", quant="Q8_0",
                              verify=False, evaluation=short,
                              progress=lambda s, d, t: seen.append(s))  # fmt: skip
    assert result.cost is not None
    assert set(labels(result.cost)) <= set(seen)
    recorded = json.loads((tmp_path / "cache" / "rates.json").read_text(encoding="utf-8"))
    assert "reference:float32" in recorded and recorded["reference:float32"]["when"] >= started


def test_repacking_is_turned_off_only_when_its_copy_does_not_fit(
    demo_model: Path, tmp_path: Path, monkeypatch
) -> None:
    """llama.cpp's repacked copy of the Q4_K/IQ4_NL weights is counted while a GGUF is
    checked and evaluated; where the convert does not fit with it, convert turns it off
    (and says so), and an explicit choice is kept."""
    from quantkit import pipeline

    out = tmp_path / "out"

    def dry(repack):
        return quantkit.convert(demo_model, out=out, format="gguf", quant="Q4_K_M",
                                dry_run=True, gguf=quantkit.GGUFOptions(repack=repack)).cost

    heavy, light = dry(True), dry(False)
    assert light.peak_bytes < heavy.peak_bytes
    between = (heavy.peak_bytes + light.peak_bytes) // 2
    monkeypatch.setattr(pipeline, "available_memory", lambda: between)
    chosen = dry(None)
    assert chosen.peak_bytes == light.peak_bytes
    assert any("repacking is off" in note for note in chosen.notes)
    assert dry(True).peak_bytes == heavy.peak_bytes  # --repack: as asked (the preflight refuses)
    monkeypatch.setattr(pipeline, "available_memory", lambda: heavy.peak_bytes)
    assert dry(None).peak_bytes == heavy.peak_bytes and not dry(None).notes
    monkeypatch.setattr(pipeline, "available_memory", lambda: light.peak_bytes - 1)
    # fits neither way: the lighter one, which the preflight then refuses with the least need
    assert dry(None).peak_bytes == light.peak_bytes
