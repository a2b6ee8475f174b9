"""quantkit.evaluation.measure: perplexity, KL divergence and top-1 agreement against the source.

The cross-checks compute their figures here, independently of quantkit: a GGUF's
perplexity from llama-cpp-python's logits, a safetensors model's from transformers' own
loss, and the exact full-vocabulary KL divergence from both models' full logits.
"""

from __future__ import annotations

import json
import math
import re
import shutil
from pathlib import Path

import numpy as np
import pytest

from quantkit.evaluation import corpus as eval_corpus
from quantkit.evaluation.corpus import (
    ASSISTANT,
    REASONING,
    TOOL_CALL,
    CorpusError,
    build_stream,
    load_corpus,
)
from quantkit.evaluation.gates import DEFAULT_GATES, check_gate, default_gate
from quantkit.evaluation.options import EvalOptions

NO_EVAL = EvalOptions(enabled=False)  # these tests check other things than quality

N_CTX = 512
CHUNKS = 2  # 2 x 255 scored positions: enough to order the quant types, cheap on 2 cores
QUANTS = ("BF16", "Q8_0", "Q4_K_M", "Q4_0")


@pytest.fixture(scope="module")
def eval_cache(tmp_path_factory):
    """A private QUANTKIT_CACHE for this module's reference logits."""
    mp = pytest.MonkeyPatch()
    cache = tmp_path_factory.mktemp("quantkit-cache")
    mp.setenv("QUANTKIT_CACHE", str(cache))
    yield cache
    mp.undo()


@pytest.fixture(scope="module")
def demo_ggufs(demo_model: Path, demo_artifact_cached: Path, tmp_path_factory) -> dict[str, Path]:
    """quant -> the demo's convert folder of that type (read-only). The Q4_K_M one is the
    shared demo artifact (support/hub.py: the same convert, checked, no imatrix; built once
    per machine and evaluated by tests/evaluation/test_gates.py too), not a second
    conversion of the same thing."""
    import quantkit

    root = tmp_path_factory.mktemp("demo-ggufs")
    out = {"Q4_K_M": demo_artifact_cached}
    for quant in QUANTS:
        if quant in out:
            continue
        result = quantkit.convert(
            demo_model,
            out=root / quant,
            format="gguf",
            quant=quant,
            verify=False,
            evaluation=NO_EVAL,
        )
        out[quant] = result.out
    return {quant: out[quant] for quant in QUANTS}


@pytest.fixture(scope="module")
def reports(demo_ggufs, demo_model, eval_cache):
    from quantkit.evaluation.measure import evaluate_artifact

    return {
        quant: evaluate_artifact(folder, demo_model, n_ctx=N_CTX, max_chunks=CHUNKS)
        for quant, folder in demo_ggufs.items()
    }


@pytest.fixture(scope="module")
def plain_text(tmp_path_factory) -> Path:
    """One plain text document (the shipped prose without separators): llama.cpp's stream."""
    text = (eval_corpus.default_corpus_dir() / "prose.txt").read_text(encoding="utf-8")
    path = tmp_path_factory.mktemp("corpus") / "prose-one-document.txt"
    path.write_text(text.replace("%%\n", "\n"), encoding="utf-8")
    return path


# --- the corpus -----------------------------------------------------------------------------


def test_shipped_corpus_has_prose_code_and_chat_with_think_and_tools() -> None:
    corpus = load_corpus()
    assert corpus.name == "quantkit-eval"
    kinds = [doc.kind for doc in corpus.documents]
    assert kinds.count("text") == 11 and kinds.count("chat") == 10
    chats = [doc for doc in corpus.documents if doc.kind == "chat"]
    assert any("<think>" in (m.get("content") or "") for d in chats for m in d.messages)
    assert sum(bool(m.get("tool_calls")) for d in chats for m in d.messages) >= 4
    readme = (eval_corpus.default_corpus_dir() / "README.md").read_text(encoding="utf-8")
    assert "written for quantkit" in readme and "Apache-2.0" in readme


def test_eval_corpus_is_held_out_from_the_calibration_mix() -> None:
    """No run of ten words of the eval corpus appears in the calibration data."""
    words = lambda text: re.findall(r"\w+", text.lower())  # noqa: E731
    calibration = eval_corpus.default_corpus_dir().parent / "calibration"
    seen = set()
    for path in calibration.glob("*.jsonl"):
        w = words(path.read_text(encoding="utf-8"))
        seen.update(tuple(w[i : i + 10]) for i in range(len(w) - 10))
    assert seen, "calibration mix not found"
    for path in eval_corpus.default_corpus_dir().glob("*.*"):
        w = words(path.read_text(encoding="utf-8"))
        shared = [
            " ".join(w[i : i + 10]) for i in range(len(w) - 10) if tuple(w[i : i + 10]) in seen
        ]
        assert not shared, f"{path.name} shares text with the calibration mix: {shared[:3]}"


def test_user_corpus_files(tmp_path: Path) -> None:
    plain = tmp_path / "one.txt"
    plain.write_text("no separators here\n%%% is not one\n", encoding="utf-8")
    assert [d.text for d in load_corpus(plain).documents] == [plain.read_text()]
    split = tmp_path / "two.txt"
    split.write_text("first\n%%\nsecond\n", encoding="utf-8")
    assert [d.text for d in load_corpus(split).documents] == ["first\n", "second\n"]
    lines = tmp_path / "mixed.jsonl"
    lines.write_text(
        json.dumps({"text": "hello"})
        + "\n\n"
        + json.dumps({"messages": [{"role": "user", "content": "hi"}]})
        + "\n",
        encoding="utf-8",
    )
    assert [d.kind for d in load_corpus(lines).documents] == ["text", "chat"]
    assert load_corpus(lines).sha256 != load_corpus(split).sha256
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"prompt": "x"}\n', encoding="utf-8")
    with pytest.raises(CorpusError, match="bad.jsonl:1"):
        load_corpus(bad)
    with pytest.raises(CorpusError, match="does not exist"):
        load_corpus(tmp_path / "missing.txt")


def test_span_labels_cover_assistant_think_and_tool_call_tokens(demo_model: Path) -> None:
    from quantkit.evaluation.engines import open_engine

    engine = open_engine(demo_model, n_ctx=N_CTX)
    stream = build_stream(load_corpus(), engine)
    assert len(stream.ids) == len(stream.labels) > 4000
    ids, labels = np.array(stream.ids), np.array(stream.labels)

    def text_of(bit: int) -> str:
        return engine._tokenizer.decode(
            ids[(labels & bit) != 0].tolist(), skip_special_tokens=False
        )

    think_id = engine.bundle.token_id("<think>")
    call_id = engine.bundle.token_id("<tool_call>")
    # every <think> / <tool_call> token written by an assistant is labelled, and only those
    assert ((ids == think_id) & ((labels & REASONING) != 0)).sum() == (ids == think_id).sum() == 7
    system_prompt_calls = ((ids == call_id) & ((labels & ASSISTANT) == 0)).sum()
    assert system_prompt_calls > 0  # the tool_use template's instructions: not assistant text
    assert ((ids == call_id) & ((labels & TOOL_CALL) != 0)).sum() == 6
    assert (labels[(labels & (REASONING | TOOL_CALL)) != 0] & ASSISTANT).all()
    assert "13 x 17" in text_of(ASSISTANT) and "Is 221 a prime" not in text_of(ASSISTANT)
    assert "Start at 14:35" in text_of(REASONING) and "The train arrives" not in text_of(REASONING)
    assert '"name": "fx_quote"' in text_of(TOOL_CALL) and "Here are the available" not in text_of(
        TOOL_CALL
    )


def test_tokenization_mismatch_is_refused_before_any_weights_load(
    demo_model, tmp_path, eval_cache
) -> None:
    from quantkit.evaluation.measure import TokenizationMismatchError, evaluate_artifact

    changed = tmp_path / "bos-model"
    shutil.copytree(demo_model, changed)
    config = json.loads((changed / "tokenizer_config.json").read_text())
    config.update(add_bos_token=True, bos_token="<|im_start|>")
    (changed / "tokenizer_config.json").write_text(json.dumps(config))
    with pytest.raises(
        TokenizationMismatchError, match=r"first difference at token 1 .*5031 vs 5032 tokens"
    ):
        evaluate_artifact(changed, demo_model, n_ctx=N_CTX, max_chunks=1)
    assert not list(eval_cache.glob("reference-logits/*"))


# --- KL divergence from the top-k cache -----------------------------------------------------


def test_kl_estimate_and_bound_on_synthetic_distributions() -> None:
    from quantkit.evaluation.kl import compress_rows as _compress
    from quantkit.evaluation.kl import kl_divergence
    from quantkit.evaluation.reference_cache import Reference

    rng = np.random.default_rng(1)
    vocab, n = 5000, 200
    p_logits = (rng.standard_normal((n, vocab)) * 2.5).astype(np.float32)
    q_logits = p_logits + (rng.standard_normal((n, vocab)) * 0.3).astype(np.float32)
    block = _compress(p_logits, np.zeros(n, dtype=np.int64), 64, 64, np.random.default_rng(0))
    ref = Reference(**block, labels=np.zeros(n, np.uint8), stream=np.zeros(1, np.int32), meta={})
    estimate, bound, _ = kl_divergence(ref, slice(0, n), q_logits)
    lp = p_logits - np.logaddexp.reduce(p_logits.astype(np.float64), axis=1, keepdims=True)
    lq = q_logits - np.logaddexp.reduce(q_logits.astype(np.float64), axis=1, keepdims=True)
    exact = (np.exp(lp) * (lp - lq)).sum(axis=1)
    assert np.exp(block["rest"]).mean() > 0.3  # a flat P: much mass outside the top 64
    assert (bound <= exact + 1e-9).all()  # merging the rest never raises the divergence
    assert bound.mean() < 0.8 * exact.mean()  # ... and here the bucket alone is far off
    # the tail holds ~40 % of P here, sampled 64 times per row: a few per cent of noise
    assert estimate.mean() == pytest.approx(exact.mean(), rel=0.05)
    identical, lower, _ = kl_divergence(ref, slice(0, n), p_logits)
    assert np.abs(identical).max() < 1e-6 and np.abs(lower).max() < 1e-6


def test_normalizer_is_the_plain_float64_formula_to_the_bit() -> None:
    """kl._normalizer works in place for speed; its figures are the plain expression's."""
    from quantkit.evaluation.kl import _normalizer

    rows = (np.random.default_rng(2).standard_normal((37, 1001)) * 4).astype(np.float32)
    rows[3, :] = -np.inf
    rows[3, 5] = 2.0  # a row with one finite logit
    top = rows.max(axis=1, keepdims=True).astype(np.float64)
    expd = np.exp(rows.astype(np.float64) - top)
    total = expd.sum(axis=1)
    for got, want in zip(_normalizer(rows), (expd, total, top[:, 0] + np.log(total)), strict=True):
        assert got.dtype == want.dtype and np.array_equal(got, want)


# --- gates ------------------------------------------------------------------------------------


def _report(ppl_ratio: float, kld: float, top1: float, parameters: int) -> dict:
    return {
        "ppl_ratio": ppl_ratio,
        "kld_mean": kld,
        "top1_agreement": top1,
        "parameters": parameters,
    }


def test_default_gates_match_the_issue_targets_and_cover_every_quant() -> None:
    from quantkit.formats.quants import GGUF_QUANTS
    from quantkit.planning.profiles import QUANTS_BY_FORMAT

    every = set(GGUF_QUANTS) | {q.upper() for quants in QUANTS_BY_FORMAT.values() for q in quants}
    assert every == set(DEFAULT_GATES)  # a gate for every quant made (names as _known spells them)
    for eight_bit in ("Q8_0", "FP8_DYNAMIC", "FP8"):
        gate = default_gate(eight_bit, 8_000_000_000)
        assert (gate.max_ppl_increase, gate.max_kld) == (0.01, 0.01)
    q4 = default_gate("q4_k_m", 8_000_000_000)
    assert (q4.max_ppl_increase, q4.max_kld) == (0.05, 0.06)
    for quant, gates in DEFAULT_GATES.items():  # tiny models: looser, never stricter
        tiny, std = gates["tiny"], gates["standard"]
        assert tiny.max_kld >= std.max_kld and tiny.max_ppl_increase >= std.max_ppl_increase, quant
        assert tiny.min_top1 <= std.min_top1, quant


def test_check_gate_size_classes_profiles_and_errors() -> None:
    from quantkit.errors import QuantkitError

    q4_on_8b = check_gate(_report(1.04, 0.05, 0.93, 8_000_000_000), "Q4_K_M")
    assert q4_on_8b.passed and q4_on_8b.size_class == "standard"
    failed = check_gate(_report(1.07, 0.05, 0.93, 8_000_000_000), "Q4_K_M")
    assert not failed.passed and "ppl_increase 0.07 <= 0.05 FAILED" in failed.message
    assert [c.passed for c in failed.checks] == [False, True, True]
    assert failed.to_check() == {
        "name": "quality gate",
        "passed": False,
        "evidence": failed.message,
        "fatal": True,
    }
    tiny = check_gate(_report(1.07, 0.08, 0.86, 135_000_000), "Q4_K_M")
    assert tiny.passed and tiny.size_class == "tiny"
    # a profile's gate replaces the default (rtx4090-4bit: +5 %, KLD 0.05, top-1 0.90) ...
    by_profile = check_gate(_report(1.04, 0.055, 0.93, 8_000_000_000), "Q4_K_M", "rtx4090-4bit")
    assert not by_profile.passed and by_profile.origin == "profile rtx4090-4bit"
    # ... and is loosened to the tiny default on a tiny model
    tiny_profile = check_gate(_report(1.07, 0.08, 0.86, 135_000_000), "Q4_K_M", "rtx4090-4bit")
    assert tiny_profile.passed and "tiny-model default" in tiny_profile.origin
    assert json.loads(json.dumps(tiny_profile.to_dict()))["thresholds"]["max_kld"] == 0.15
    with pytest.raises(QuantkitError, match="No quality gate"):
        check_gate(_report(1.0, 0.0, 1.0, 1), "Q9_X")


# --- the engines against independent computations --------------------------------------------


def _llama_cpp_logits(gguf: Path, chunks: list[list[int]]) -> list[np.ndarray]:
    from llama_cpp import Llama

    llm = Llama(
        model_path=str(gguf),
        n_ctx=N_CTX,
        n_batch=N_CTX,
        n_ubatch=N_CTX,
        logits_all=True,
        flash_attn=True,  # as quantkit's engine and llama-perplexity
        verbose=False,
    )
    try:
        out = []
        for ids in chunks:
            llm.reset()
            llm.eval(ids)
            out.append(np.array(llm.scores[: len(ids)], dtype=np.float32))
        return out
    finally:
        llm.close()


@pytest.fixture(scope="module")
def direct(demo_model, demo_ggufs, plain_text):
    """Computed here, not by quantkit: the text's chunks, llama.cpp's logits of the Q4_K_M
    GGUF and transformers' loss and logits of the source, second halves only."""
    import torch
    from llama_cpp import Llama
    from transformers import AutoModelForCausalLM

    gguf = next(demo_ggufs["Q4_K_M"].glob("*.gguf"))
    vocab = Llama(model_path=str(gguf), vocab_only=True, verbose=False)
    add_bos = vocab._model.add_bos_token()
    tokens = vocab.tokenize(plain_text.read_bytes(), add_bos=add_bos, special=True)
    vocab.close()
    chunks = [tokens[i * N_CTX : (i + 1) * N_CTX] for i in range(CHUNKS)]
    first = N_CTX // 2
    gguf_logits = [x[first : N_CTX - 1] for x in _llama_cpp_logits(gguf, chunks)]
    model = AutoModelForCausalLM.from_pretrained(demo_model, dtype=torch.float32).eval()
    losses, hf_logits = [], []
    with torch.inference_mode():
        for ids in chunks:
            labels = torch.tensor([ids])
            labels[0, : first + 1] = -100  # score targets first+1 .. n_ctx-1
            out = model(input_ids=torch.tensor([ids]), labels=labels)
            losses.append(float(out.loss))
            hf_logits.append(out.logits[0, first : N_CTX - 1].float().numpy())
    targets = [np.array(ids[first + 1 :]) for ids in chunks]
    return {"gguf": gguf_logits, "hf": hf_logits, "hf_losses": losses, "targets": targets}


@pytest.fixture(scope="module")
def plain_text_report(demo_ggufs, demo_model, plain_text, eval_cache):
    """quantkit's report of the Q4_K_M on the plain text: the first evaluation of that
    text in this module, so it computes the source's reference, which the tests below
    then find cached whatever order they run in."""
    from quantkit.evaluation.measure import evaluate_artifact

    return evaluate_artifact(
        demo_ggufs["Q4_K_M"], demo_model, corpus=plain_text, n_ctx=N_CTX, max_chunks=CHUNKS
    )


@pytest.mark.slow
def test_gguf_perplexity_matches_llama_cpp_logits_computed_directly(
    direct, plain_text_report
) -> None:
    nll = []
    for logits, targets in zip(direct["gguf"], direct["targets"], strict=True):
        lp = logits - np.logaddexp.reduce(logits.astype(np.float64), axis=1, keepdims=True)
        nll.extend(-lp[np.arange(len(targets)), targets])
    expected = math.exp(float(np.mean(nll)))
    report = plain_text_report
    assert report.engine == "llama.cpp" and report.tokens == CHUNKS * (N_CTX // 2 - 1)
    assert report.perplexity == pytest.approx(expected, rel=0.005)
    # the reference side (transformers) against transformers' own loss
    hf_ppl = math.exp(float(np.mean(direct["hf_losses"])))
    assert report.reference_perplexity == pytest.approx(hf_ppl, rel=0.005)


@pytest.mark.slow
def test_safetensors_perplexity_matches_transformers_loss_and_self_kld_is_zero(
    direct, demo_model, plain_text, plain_text_report
) -> None:
    from quantkit.evaluation.measure import evaluate_artifact

    report = evaluate_artifact(
        demo_model, demo_model, corpus=plain_text, n_ctx=N_CTX, max_chunks=CHUNKS
    )
    assert report.engine == "transformers"
    assert report.perplexity == pytest.approx(
        math.exp(float(np.mean(direct["hf_losses"]))), rel=0.005
    )
    assert report.reference_cached  # computed for plain_text_report, not twice
    assert abs(report.kld_mean) < 1e-6 and report.kld_p99 < 1e-5
    assert report.top1_agreement == 1.0 and report.ppl_ratio == pytest.approx(1.0, abs=1e-6)


@pytest.mark.slow
def test_topk_kld_is_within_tolerance_of_the_exact_full_vocabulary_kld(
    direct, plain_text_report
) -> None:
    exact = []
    for p_logits, q_logits in zip(direct["hf"], direct["gguf"], strict=True):
        lp = p_logits - np.logaddexp.reduce(p_logits.astype(np.float64), axis=1, keepdims=True)
        lq = q_logits - np.logaddexp.reduce(q_logits.astype(np.float64), axis=1, keepdims=True)
        exact.extend((np.exp(lp) * (lp - lq)).sum(axis=1))
    exact = np.array(exact)
    report = plain_text_report
    assert report.kld_mean == pytest.approx(exact.mean(), rel=0.03)
    # The 99th percentile of 510 positions is about the fifth largest, and the tail term is
    # sampled: over 8 seeds of the tail draws its estimate lay 1 % under to 14 % over the
    # exact one, with either llama.cpp build's logits (docs/quality.md). The mean: within 2.4 %.
    assert report.kld_p99 == pytest.approx(np.percentile(exact, 99), rel=0.15)
    assert report.kld_mean_lower_bound <= exact.mean()
    assert report.rest_mass_mean > 0.03  # the tiny model's P is flat: the tail term matters
    # the confident positions and their top-1 agreement, from both models' full logits
    p_logits, q_logits = np.concatenate(direct["hf"]), np.concatenate(direct["gguf"])
    p = np.exp(p_logits - np.logaddexp.reduce(p_logits.astype(np.float64), axis=1)[:, None])
    top2 = np.sort(p, axis=1)[:, -2:]
    confident = top2[:, 1] - top2[:, 0] >= report.confidence_margin
    agree = p_logits.argmax(axis=1) == q_logits.argmax(axis=1)
    assert report.confident_positions == pytest.approx(confident.sum(), abs=1)
    assert report.top1_agreement_confident == pytest.approx(agree[confident].mean(), abs=0.005)
    assert report.top1_agreement == pytest.approx(agree.mean(), abs=0.005)


# --- the quant types ----------------------------------------------------------------------------


@pytest.mark.slow
def test_kld_orders_the_quant_types_and_bf16_is_near_zero(reports) -> None:
    kld = {quant: reports[quant].kld_mean for quant in QUANTS}
    assert kld["BF16"] < kld["Q8_0"] < kld["Q4_K_M"] < kld["Q4_0"], kld
    assert kld["BF16"] < 1e-3  # cross-engine: llama.cpp BF16 vs transformers float32
    assert reports["BF16"].top1_agreement > 0.99
    assert reports["BF16"].ppl_ratio == pytest.approx(1.0, abs=0.005)
    for quant in QUANTS:  # every figure the issue asks for, in range
        data = reports[quant].to_dict()
        assert data["engine"] == "llama.cpp" and data["tokens"] == CHUNKS * (N_CTX // 2 - 1)
        assert 0 <= data["top1_agreement"] <= 1 and data["perplexity"] > 1
        assert data["reference_perplexity"] == reports["BF16"].reference_perplexity
        assert data["kld_p99"] >= data["kld_median"]
        json.dumps(data)


@pytest.mark.slow
def test_span_figures_and_the_tiny_model_gates(reports) -> None:
    q4 = reports["Q4_K_M"]
    assert q4.spans["assistant"].tokens > 0 and q4.spans["tool_call"].tokens > 0
    assert q4.spans["assistant"].kld_mean is not None and q4.spans["assistant"].kld_mean > 0
    for quant in ("BF16", "Q8_0", "Q4_K_M", "Q4_0"):
        assert check_gate(reports[quant], quant).passed, check_gate(reports[quant], quant).message
    assert check_gate(reports["Q4_K_M"], "Q4_K_M").size_class == "tiny"
    assert not check_gate(reports["Q4_0"], "Q8_0").passed


@pytest.mark.slow
def test_top1_agreement_where_the_source_is_confident(reports) -> None:
    """The confident positions are the source's: the same for every quant. There a trained
    model's quants agree more often than over all positions, and the order is kept."""
    counts = {reports[q].confident_positions for q in QUANTS}
    assert len(counts) == 1 and 200 < counts.pop() < reports["BF16"].tokens
    confident = {q: reports[q].top1_agreement_confident for q in QUANTS}
    assert confident["BF16"] > 0.99 and confident["Q8_0"] > 0.99
    assert confident["Q8_0"] > confident["Q4_K_M"] > confident["Q4_0"], confident
    for quant in ("Q8_0", "Q4_K_M", "Q4_0"):
        assert confident[quant] > reports[quant].top1_agreement, quant
    spans = reports["Q4_K_M"].spans
    assert 0 < spans["assistant"].confident_positions <= spans["assistant"].tokens
    assert json.loads(json.dumps(reports["Q4_K_M"].to_dict()))["confident_positions"] > 200


@pytest.mark.slow
def test_reference_cache_is_small_keyed_and_reused(reports, demo_model, eval_cache) -> None:
    from quantkit.evaluation.engines import open_engine
    from quantkit.evaluation.reference_cache import cache_key, reference_path

    files = list((eval_cache / "reference-logits").glob("*.npz"))
    assert files and all(f.stat().st_size < 2_000_000 for f in files)
    assert not list((eval_cache / "reference-logits").glob("*.partial"))
    assert sum(not reports[q].reference_cached for q in QUANTS) == 1  # computed once
    engine = open_engine(demo_model, n_ctx=N_CTX)
    corpus_sha = load_corpus().sha256
    key = cache_key(engine, corpus_sha, N_CTX, CHUNKS, 64)
    assert reference_path(key) in files
    others = {
        cache_key(engine, corpus_sha, 1024, CHUNKS, 64),
        cache_key(engine, corpus_sha, N_CTX, CHUNKS + 1, 64),
        cache_key(engine, "another corpus", N_CTX, CHUNKS, 64),
        cache_key(engine, corpus_sha, N_CTX, CHUNKS, 32),
    }
    assert key not in others and len(others) == 4


@pytest.mark.slow
def test_a_whole_corpus_reference_serves_shorter_evaluations(
    demo_ggufs, demo_model, plain_text, tmp_path, monkeypatch
) -> None:
    """--quant auto's probes score one chunk but compute the whole corpus's reference; the
    convert's own evaluation then finds it cached, and its first chunks are the probes'.
    (A one-document corpus in chunks of 128 tokens: the same logic, a tenth of the cost.)"""
    from quantkit.evaluation.measure import evaluate_artifact

    monkeypatch.setenv("QUANTKIT_CACHE", str(tmp_path))
    gguf, shared = demo_ggufs["Q4_K_M"], {"corpus": plain_text, "n_ctx": 128}
    probe = evaluate_artifact(gguf, demo_model, max_chunks=1, whole_reference=True, **shared)
    assert not probe.reference_cached and probe.chunks == 1
    assert len(list((tmp_path / "reference-logits").glob("*.npz"))) == 1
    whole = evaluate_artifact(gguf, demo_model, **shared)
    assert whole.reference_cached and whole.chunks > 4
    assert whole.chunk_kld[0] == probe.chunk_kld[0]
    again = evaluate_artifact(gguf, demo_model, max_chunks=2, **shared)
    assert again.reference_cached and again.chunk_kld == whole.chunk_kld[:2]
    # the prefix is what a reference of those chunks alone gives (batching aside)
    alone = evaluate_artifact(gguf, demo_model, max_chunks=2, use_cache=False, **shared)
    assert alone.chunk_kld == pytest.approx(again.chunk_kld, rel=1e-3)
    assert alone.perplexity == pytest.approx(again.perplexity, rel=1e-5)


@pytest.mark.slow
def test_a_gguf_source_uses_llama_cpp_for_the_reference(demo_ggufs, eval_cache) -> None:
    from quantkit.evaluation.measure import evaluate_artifact

    report = evaluate_artifact(
        demo_ggufs["Q8_0"], next(demo_ggufs["BF16"].glob("*.gguf")), n_ctx=N_CTX, max_chunks=1
    )
    # the reference records its engine's details: llama.cpp's repacking moves its figures too
    assert report.reference_engine == "llama.cpp (weights repacked)"
    assert report.engine == "llama.cpp"
    assert 0 < report.kld_mean < 0.02 and report.parameters and report.parameters > 100_000_000


@pytest.mark.slow
def test_bf16_safetensors_artifact_through_transformers(
    demo_model, tmp_path, reports, eval_cache
) -> None:
    """A BF16 safetensors artifact of a BF16 source holds the same weights: KLD ~ 0."""
    import quantkit
    from quantkit.errors import QuantkitError
    from quantkit.evaluation.measure import evaluate_artifact

    try:
        result = quantkit.convert(
            demo_model, out=tmp_path / "bf16", format="safetensors", quant="BF16",
            verify=False, evaluation=NO_EVAL,
        )  # fmt: skip
    except QuantkitError as exc:
        pytest.skip(f"safetensors conversion not available here: {exc}")
    report = evaluate_artifact(result.out, demo_model, n_ctx=N_CTX, max_chunks=CHUNKS)
    assert report.engine == "transformers" and report.reference_cached
    assert abs(report.kld_mean) < 1e-6 and report.top1_agreement == 1.0


@pytest.mark.slow
def test_fp8_artifact_through_transformers(demo_model, tmp_path, reports, eval_cache) -> None:
    """FP8 (compressed-tensors) is decompressed by transformers on load; skipped until the
    safetensors conversion path exists."""
    import quantkit
    from quantkit.errors import QuantkitError
    from quantkit.evaluation.measure import evaluate_artifact

    try:
        result = quantkit.convert(
            demo_model,
            out=tmp_path / "fp8",
            format="fp8",
            quant="FP8_DYNAMIC",
            verify=False,
            evaluation=NO_EVAL,
        )
    except QuantkitError as exc:
        pytest.skip(f"FP8 conversion not available here: {exc}")
    report = evaluate_artifact(result.out, demo_model, n_ctx=N_CTX, max_chunks=CHUNKS)
    assert report.engine == "transformers"
    # weights and (dynamic, per token) activations rounded to FP8: between Q8_0 and Q4_K_M
    assert 0.005 < report.kld_mean < 0.06 and report.top1_agreement > 0.85
    assert check_gate(report, "FP8_DYNAMIC").passed
