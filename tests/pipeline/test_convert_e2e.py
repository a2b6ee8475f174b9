"""End to end: `quantkit.convert` -> GGUF -> loaded and run by llama.cpp (llama-cpp-python).

The demo model (a real trained chat model) goes through the issue's acceptance path:
Q4_K_M, Hermes tags as single tokens with the source ids, greedy generation that stops at
`<|im_end|>`, a manifest whose hashes and tensor-type counts match the file. The
Llama-3.1-shaped fixture (dims multiples of 256) exercises the K-quants and the other types
llama.cpp makes, and the Qwen3 fixture the Qwen3 writer.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections import Counter
from importlib import metadata
from pathlib import Path

import numpy as np
import pytest

import quantkit
from quantkit.evaluation.options import EvalOptions
from quantkit.formats.gguf_read import tensor_types

NO_EVAL = EvalOptions(enabled=False)  # these tests check other things than quality

HERMES_TAGS = ("<think>", "</think>", "<tool_call>", "</tool_call>")
IM_END_ID = 2  # the demo model's <|im_end|>
USER_DEFINED, CONTROL = 4, 3  # gguf.TokenType


# --- helpers ------------------------------------------------------------------------------


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def gguf_tensor_types(path: Path) -> dict[str, str]:
    """tensor name -> ggml type name, read by the tests' own reader (not by quantkit's;
    gguf-py's GGUFReader takes ~10 s on the Llama 3.1 vocabulary)."""
    from support.gguf_reader import read_gguf_tensors

    return {name: t.tensor_type.name for name, t in read_gguf_tensors(path).items()}


def gguf_token_types(path: Path) -> list[int]:
    from support.gguf_reader import read_gguf

    return read_gguf(path).metadata["tokenizer.ggml.token_type"].tolist()


def source_token_id(tokenizer_json: Path, text: str) -> int:
    """The single id the source tokenizer gives `text` (fails if it is not one token)."""
    from tokenizers import Tokenizer

    ids = Tokenizer.from_file(str(tokenizer_json)).encode(text, add_special_tokens=False).ids
    assert len(ids) == 1, f"{text!r} is {ids} in the source tokenizer, not one token"
    return ids[0]


def load_llama(path: Path, n_ctx: int = 512, logits_all: bool = False):
    from llama_cpp import Llama

    return Llama(
        model_path=str(path),
        n_ctx=n_ctx,
        n_threads=2,
        seed=0,
        logits_all=logits_all,
        verbose=False,
    )


def last_logits(path: Path, text: str) -> np.ndarray:
    """Evaluate `text` in llama.cpp and return the logits of the last position."""
    llm = load_llama(path, n_ctx=64, logits_all=True)
    try:
        ids = llm.tokenize(text.encode(), add_bos=False, special=True)
        assert ids, "tokenizer returned nothing"
        llm.eval(ids)
        return np.array(llm.scores[llm.n_tokens - 1], dtype=np.float32)
    finally:
        llm.close()


def render_template(template: str, messages: list[dict], **variables) -> str:
    """Render a chat template as transformers does (sandboxed jinja2, trim/lstrip blocks),
    independently of quantkit.formats.chat_template."""
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)
    return env.from_string(template).render(messages=messages, **variables)


def artifact(result) -> Path:
    (record,) = [f for f in result.files if f["role"] == "artifact"]
    return result.out / record["name"]


# --- the demo model -> Q4_K_M (the acceptance) -----------------------------------


@pytest.fixture(scope="module")
def demo_q4(demo_model: Path, tmp_path_factory):
    out = tmp_path_factory.mktemp("e2e") / "demo-q4"
    result = quantkit.convert(demo_model, out=out, format="gguf", quant="Q4_K_M")
    return result


@pytest.fixture(scope="module")
def demo_llm(demo_q4):
    llm = load_llama(artifact(demo_q4))
    yield llm
    llm.close()


@pytest.mark.slow
def test_artifact_folder_is_complete_and_atomic(demo_q4, demo_model: Path) -> None:
    out = demo_q4.out
    assert out is not None and out.is_dir()
    assert not out.with_name(out.name + ".partial").exists()
    assert not out.with_name(out.name + ".quarantine").exists()
    gguf_name = f"{demo_model.name}-Q4_K_M.gguf"
    # The artifact, its manifest, the model card and the Ollama Modelfile: the BF16
    # intermediate is gone.
    assert sorted(p.name for p in out.iterdir()) == sorted(
        [gguf_name, "manifest.json", "README.md", "Modelfile"]
    )
    assert [f["name"] for f in demo_q4.files] == [gguf_name]
    assert demo_q4.target.format == "gguf" and demo_q4.target.quant == "Q4_K_M"
    with (out / gguf_name).open("rb") as fh:
        assert fh.read(4) == b"GGUF"


@pytest.mark.slow
def test_manifest_hashes_versions_and_tensor_types(demo_q4) -> None:
    gguf_path = artifact(demo_q4)
    manifest = json.loads((demo_q4.out / "manifest.json").read_text())
    (record,) = manifest["files"]
    assert record["name"] == gguf_path.name
    assert record["sha256"] == sha256_of(gguf_path)
    assert record["bytes"] == gguf_path.stat().st_size
    assert record["quant"] == "Q4_K_M" and record["format"] == "gguf"

    types = gguf_tensor_types(gguf_path)
    counted = dict(Counter(types.values()))
    assert record["tensor_types"] == counted
    assert tensor_types(gguf_path) == types  # the fast reader used below agrees
    # K-quants are there, and because 576 is not a multiple of 256 llama.cpp falls back
    # to Q5_0 for most tensors: the manifest must show that, not hide it.
    assert {"Q4_K", "Q6_K", "Q5_0", "F32"} <= set(counted)

    source = manifest["source"]
    assert re.fullmatch(r"[0-9a-f]{64}", source["content_hash"])
    assert source["content_hash"] == demo_q4.source.content_hash
    assert source["architecture"] == "LlamaForCausalLM"
    assert source["parameters"] == demo_q4.source.parameter_count > 100_000_000

    libs = manifest["libraries"]
    assert libs["gguf"] == metadata.version("gguf")
    assert libs["llama-cpp-python"] == metadata.version("llama-cpp-python")
    assert libs["quantkit"] == quantkit.__version__
    assert manifest["target"] == {"format": "gguf", "quant": "Q4_K_M", "profile": None}
    assert manifest["checks"] == demo_q4.checks


@pytest.mark.slow
def test_checks_ran_and_passed(demo_q4) -> None:
    names = {c["name"]: c for c in demo_q4.checks}
    assert set(names) == {  # the inspect battery, generation, llama-server, the quality gate
        "special tokens single ids",
        "token types follow the policy",
        "turn end is end-of-generation",
        "BOS and PAD tokens",
        "chat templates byte-identical",
        "chat templates render identically",
        "tokenization parity",
        "rope_freqs",
        "greedy generation stops",
        "llama-server uses the artifact's template",
        "tool-call round trip",
        "reasoning round trip",
        "quality gate",
    }
    # A trained model: every check passes, including the non-fatal generation check.
    assert all(c["passed"] for c in demo_q4.checks), demo_q4.checks


@pytest.mark.slow
def test_hermes_tags_are_single_tokens_with_source_ids(demo_llm, demo_q4, demo_model) -> None:
    types = gguf_token_types(artifact(demo_q4))
    for tag in HERMES_TAGS:
        source_id = source_token_id(demo_model / "tokenizer.json", tag)
        assert demo_llm.tokenize(tag.encode(), add_bos=False, special=True) == [source_id], tag
        # Printed, not hidden: tool-call parsers must see them (docs/formats.md).
        assert types[source_id] == USER_DEFINED, tag
        assert demo_llm.detokenize([source_id], special=True).decode() == tag
    assert types[IM_END_ID] == CONTROL


@pytest.mark.slow
def test_chat_prompt_tokenizes_like_the_source(demo_llm, demo_model) -> None:
    from tokenizers import Tokenizer

    template = (demo_model / "chat_template.jinja").read_text()
    prompt = render_template(
        template,
        [
            {"role": "system", "content": "Think in <think></think> before answering."},
            {"role": "user", "content": 'Call a tool: <tool_call>{"name": "f"}</tool_call>'},
        ],
        add_generation_prompt=True,
    )
    source = Tokenizer.from_file(str(demo_model / "tokenizer.json"))
    expected = source.encode(prompt, add_special_tokens=False).ids
    assert demo_llm.tokenize(prompt.encode(), add_bos=False, special=True) == expected


@pytest.mark.slow
def test_greedy_generation_stops_at_im_end(demo_llm, demo_model) -> None:
    import llama_cpp

    template = (demo_model / "chat_template.jinja").read_text()
    prompt = render_template(
        template,
        [{"role": "user", "content": "What is the capital of France?"}],
        add_generation_prompt=True,
    )
    assert prompt.endswith("<|im_start|>assistant\n")
    ids = demo_llm.tokenize(prompt.encode(), add_bos=False, special=True)
    vocab = llama_cpp.llama_model_get_vocab(demo_llm.model)
    assert llama_cpp.llama_vocab_is_eog(vocab, IM_END_ID)
    assert demo_llm.token_eos() == IM_END_ID

    generated: list[int] = []
    stop = None
    for token in demo_llm.generate(ids, temp=0.0, top_k=1):
        if llama_cpp.llama_vocab_is_eog(vocab, token):
            stop = token
            break
        generated.append(token)
        if len(generated) >= 64:
            break
    text = demo_llm.detokenize(generated).decode(errors="replace")
    assert stop == IM_END_ID, f"no <|im_end|> within 64 tokens: {text!r}"
    assert generated, "stopped before saying anything"
    assert "Paris" in text


# --- K-quants and other llama.cpp types on the Llama-3.1-shaped fixture -------------------

LLAMA31_QUANTS = ("Q4_0", "Q4_K_M", "Q5_K_M", "Q6_K", "Q8_0")


@pytest.fixture(scope="module")
def llama31_convert(llama31_model: Path, tmp_path_factory):
    """quant -> ConvertResult, each converted once per module (the Q4_K_M one verified)."""
    root = tmp_path_factory.mktemp("llama31")
    done: dict[str, object] = {}

    def get(quant: str):
        if quant not in done:
            done[quant] = quantkit.convert(
                llama31_model,
                out=root / quant,
                format="gguf",
                quant=quant,
                verify=quant == "Q4_K_M",
                evaluation=NO_EVAL,  # random weights: quality numbers would mean nothing
            )
        return done[quant]

    return get


def _weight_types(types: dict[str, str]) -> dict[str, str]:
    return {n: t for n, t in types.items() if not n.endswith("_norm.weight")}


@pytest.mark.slow
@pytest.mark.parametrize("quant", LLAMA31_QUANTS)
def test_llama31_quant_loads_and_evaluates(llama31_convert, quant: str) -> None:
    result = llama31_convert(quant)
    path = artifact(result)
    assert path.name == f"{result.source.name}-{quant}.gguf"
    types = tensor_types(path)
    assert result.files[0]["tensor_types"] == dict(Counter(types.values()))
    norms = {n: t for n, t in types.items() if n.endswith("_norm.weight")}
    assert norms and set(norms.values()) == {"F32"}
    weights = Counter(t for n, t in _weight_types(types).items() if n != "rope_freqs.weight")
    if quant == "Q4_K_M":
        assert weights["Q4_K"] > 0 and weights["Q6_K"] > 0
        assert weights["Q4_K"] > weights["Q6_K"]
    elif quant == "Q5_K_M":
        assert weights["Q5_K"] > 0 and weights["Q6_K"] > 0
    elif quant == "Q6_K":
        assert set(weights) == {"Q6_K"}
    elif quant == "Q4_0":
        assert weights["Q4_0"] > sum(weights.values()) / 2
    elif quant == "Q8_0":
        # Written by quantkit's own writer: every 2-D weight Q8_0, vectors F32.
        assert set(weights) == {"Q8_0"}
        assert types["rope_freqs.weight"] == "F32"  # llama3 rope scaling, as llama.cpp has it

    logits = last_logits(path, "<|begin_of_text|>The quick brown fox")
    assert logits.shape == (128256,)
    assert np.isfinite(logits).all()
    assert logits.std() > 0


@pytest.mark.slow
def test_llama31_sizes_follow_bits_per_weight(llama31_convert) -> None:
    sizes = {q: artifact(llama31_convert(q)).stat().st_size for q in LLAMA31_QUANTS}
    assert sizes["Q4_0"] < sizes["Q4_K_M"] < sizes["Q5_K_M"] < sizes["Q6_K"] < sizes["Q8_0"]
    for q in LLAMA31_QUANTS:
        assert llama31_convert(q).files[0]["bytes"] == sizes[q]


@pytest.mark.slow
def test_llama31_verified_checks_pass_tokens_and_turn_end(llama31_convert) -> None:
    result = llama31_convert("Q4_K_M")
    checks = {c["name"]: c for c in result.checks}
    assert checks["special tokens single ids"]["passed"], checks
    assert checks["special tokens single ids"]["fatal"]
    turn_end = checks["turn end is end-of-generation"]
    assert turn_end["passed"] and "128009" in turn_end["evidence"], turn_end
    # Random weights never learned to stop: this check may fail, but must not be fatal.
    assert not checks["greedy generation stops"]["fatal"]
    manifest = json.loads((result.out / "manifest.json").read_text())
    assert manifest["checks"] == result.checks


@pytest.mark.slow
def test_qwen3_q8_0_loads_in_llama_cpp(qwen3_model: Path, tmp_path: Path) -> None:
    import llama_cpp

    result = quantkit.convert(
        qwen3_model,
        out=tmp_path / "qwen3-q8",
        format="gguf",
        quant="Q8_0",
        verify=False,
        evaluation=NO_EVAL,
    )
    path = artifact(result)
    types = tensor_types(path)
    assert "Q8_0" in types.values()
    # Qwen3's per-head q/k norms are vectors too: F32.
    assert types["blk.0.attn_q_norm.weight"] == "F32"
    assert types["blk.0.attn_k_norm.weight"] == "F32"

    im_end = source_token_id(qwen3_model / "tokenizer.json", "<|im_end|>")
    llm = load_llama(path, n_ctx=64)
    try:
        assert llm.tokenize(b"<|im_end|>", add_bos=False, special=True) == [im_end]
        vocab = llama_cpp.llama_model_get_vocab(llm.model)
        assert llama_cpp.llama_vocab_is_eog(vocab, im_end)
    finally:
        llm.close()
    logits = last_logits(path, "<|im_start|>user\nHello<|im_end|>\n<|im_start|>assistant\n")
    assert np.isfinite(logits).all() and logits.std() > 0


@pytest.mark.slow
def test_convert_measures_quality_and_records_it(demo_q4) -> None:
    """The eval step of every convert: numbers in the result, the manifest and the card,
    and the gate as one more check."""
    quality = demo_q4.quality
    assert quality is not None and quality["engine"] == "llama.cpp"
    assert quality["tokens"] > 1000
    # Q4_K_M of a real model: a little worse than the source, never better by much.
    assert 1.0 < quality["ppl_ratio"] < 1.3
    assert 0.0 < quality["kld_mean"] < 0.3 and 0.6 < quality["top1_agreement"] < 1.0
    manifest = json.loads((demo_q4.out / "manifest.json").read_text())
    assert manifest["quality"]["perplexity"] == pytest.approx(quality["perplexity"])
    gate = next(c for c in manifest["checks"] if c["name"] == "quality gate")
    assert gate["passed"] and "Q4_K_M" in gate["evidence"]
    card = (demo_q4.out / "README.md").read_text()
    assert f"| Perplexity of this artifact | {quality['perplexity']:.4f} |" in card
