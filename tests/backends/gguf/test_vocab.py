"""The tokenizer inside our GGUF files: llama.cpp must tokenize exactly as the source
tokenizer does, keep the Hermes tags as single visible tokens, stop on the template's turn
end, and carry the chat templates byte for byte. Also pre-tokenizer detection."""

from __future__ import annotations

import json
import random
import shutil
from pathlib import Path
from typing import Any

import pytest
from support.broken_models import linked_copy
from support.gguf_reader import read_gguf

from quantkit.backends.gguf import vocab as vocab_module
from quantkit.backends.gguf.export import export_gguf
from quantkit.backends.gguf.pretokenizers import detect_pre_tokenizer
from quantkit.backends.gguf.vocab import build_vocab
from quantkit.errors import QuantkitError, UnknownPreTokenizerError
from quantkit.formats.tokens import TokenTypePolicy
from quantkit.source.model import load_source
from quantkit.source.tokenizer_bundle import load_tokenizer_bundle

NORMAL, CONTROL, USER_DEFINED = 1, 3, 4
HERMES_TAGS = ("<think>", "</think>", "<tool_call>", "</tool_call>", "<tool_response>",
               "</tool_response>", "<tools>", "</tools>")  # fmt: skip
LLAMA3_MARKERS = ("<|begin_of_text|>", "<|end_of_text|>", "<|start_header_id|>",
                  "<|end_header_id|>", "<|eot_id|>", "<|eom_id|>", "<|python_tag|>")  # fmt: skip
CHATML_MARKERS = ("<|im_start|>", "<|im_end|>")

CORPUS = [
    "The quick brown fox jumps over the lazy dog. It's 5 o'clock; we'll see, they've gone.",
    "I'D SAY DON'T, 'S 'T 're 've 'm 'll 'd",
    "def fib(n):\n    if n < 2:\n        return n\n    return fib(n - 1) + fib(n - 2)\n\n"
    "\tprint(fib(10))  # tab-indented\n",
    'class A:\n\tdef f(self) -> dict[str, int]:\n\t\treturn {"a": 1, "b": [2, 3]}\n',
    "12345 and 3.14159 and 1,000,000 and -42e10 and 0x1F and 2024-11-23 and 99999999999",
    "Café naïve résumé Ærøskøbing Straße façade ﬁne Ǆ",
    "中文测试，日本語のテキスト、한국어 텍스트",
    "emoji 😀👍🏽🎉 family 👨‍👩‍👧‍👦 flag 🇫🇷",
    "עברית שלום مرحبا بالعالم नमस्ते ভাষা",
    "   leading spaces\t\ttabs\n\n\nnewlines     many spaces   \n  trailing   ",
    "  \n\t \r\n x\u00a0nbsp\u200bzwsp\u3000ideographic",
    "<think>\nThe user wants the weather.\n</think>\n<tool_call>\n"
    '{"name": "get_weather", "arguments": {"city": "Zürich"}}\n</tool_call>',
    '<tool_response>\n{"temp": 21}\n</tool_response><tools>[{"name": "f"}]</tools>',
    "a<think>b</think>c <tool_call> x </tool_call>d<tools></tools>",
    " <think> ",
    "",
]
CHAT_TEXT = {
    "demo": "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n"
    "<think>ok</think>Hello<|im_end|>",
    "qwen3": "<|im_start|>system\nX<|im_end|>\n<|im_start|>assistant\n<tool_call>{}</tool_call>",
    "llama31": "<|begin_of_text|><|start_header_id|>user<|end_header_id|>\n\nHi<|eot_id|>"
    "<|start_header_id|>assistant<|end_header_id|>\n\n<think>\nhm\n</think>ok<|eot_id|>",
}
FUZZ_PIECES = [*"aZé中😀٣5_-!?'", " ", "  ", "\t", "\n", "\r\n", "'s", "'ll", "...", "\u00a0",
               "123", "Hello", " world", *HERMES_TAGS]  # fmt: skip
TURN_MARKERS = {"demo": CHATML_MARKERS, "qwen3": CHATML_MARKERS, "llama31": LLAMA3_MARKERS}
TURN_END = {"demo": "<|im_end|>", "qwen3": "<|im_end|>", "llama31": "<|eot_id|>"}


def _fuzz(seed: int, n: int, extra: tuple[str, ...]) -> list[str]:
    rng = random.Random(seed)
    pieces = [*FUZZ_PIECES, *extra]
    return ["".join(rng.choice(pieces) for _ in range(rng.randint(1, 12))) for _ in range(n)]


@pytest.fixture(scope="module")
def models(demo_model: Path, llama31_model: Path, qwen3_model: Path) -> dict[str, Path]:
    return {"demo": demo_model, "llama31": llama31_model, "qwen3": qwen3_model}


@pytest.fixture(scope="module")
def ggufs(models: dict[str, Path], bf16_gguf) -> dict[str, Path]:
    # export_gguf's BF16 files, made once a session (tests/support/models.py): read here
    return {n: bf16_gguf(p) for n, p in models.items()}


@pytest.fixture(scope="module")
def metadata(ggufs: dict[str, Path]) -> dict[str, dict[str, Any]]:
    return {name: read_gguf(path).metadata for name, path in ggufs.items()}


def _llama_vocab(path: Path) -> Any:
    import llama_cpp

    return llama_cpp.Llama(str(path), vocab_only=True, verbose=False)


def _source_tokenizer(folder: Path) -> Any:
    from tokenizers import Tokenizer

    return Tokenizer.from_file(str(folder / "tokenizer.json"))


def _source_vocab(folder: Path) -> tuple[dict[int, str], dict[int, dict]]:
    """id -> token text for the whole vocabulary, and id -> added-token entry."""
    data = json.loads((folder / "tokenizer.json").read_text(encoding="utf-8"))
    tokens = {idx: text for text, idx in data["model"]["vocab"].items()}
    added = {entry["id"]: entry for entry in data["added_tokens"]}
    tokens.update({idx: entry["content"] for idx, entry in added.items()})
    return tokens, added


# --- tokenization parity ------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize("name", ["demo", "llama31", "qwen3"])
def test_llama_cpp_tokenizes_like_the_source(
    name: str, models: dict[str, Path], ggufs: dict[str, Path]
) -> None:
    tok = _source_tokenizer(models[name])
    llm = _llama_vocab(ggufs[name])
    texts = [*CORPUS, CHAT_TEXT[name], *_fuzz(sum(map(ord, name)), 300, TURN_MARKERS[name])]
    mismatches = []
    for text in texts:
        want = tok.encode(text, add_special_tokens=False).ids
        got = llm.tokenize(text.encode("utf-8"), add_bos=False, special=True)
        if got != want:
            mismatches.append(f"{text!r}: source {want} llama.cpp {got}")
    assert not mismatches, "\n".join(mismatches[:10])


@pytest.mark.parametrize("name", ["demo", "llama31", "qwen3"])
def test_tags_and_markers_are_single_tokens_with_the_source_ids(
    name: str, models: dict[str, Path], ggufs: dict[str, Path]
) -> None:
    tok = _source_tokenizer(models[name])
    llm = _llama_vocab(ggufs[name])
    for tag in (*HERMES_TAGS, *TURN_MARKERS[name]):
        source_id = tok.token_to_id(tag)
        assert source_id is not None, tag
        assert llm.tokenize(tag.encode(), add_bos=False, special=True) == [source_id], tag
        inside = llm.tokenize(f"x{tag}y".encode(), add_bos=False, special=True)
        assert source_id in inside, tag
        assert llm.detokenize([source_id], special=True) == tag.encode()


@pytest.mark.parametrize("name", ["demo", "llama31", "qwen3"])
def test_token_list_is_the_source_vocabulary(
    name: str, models: dict[str, Path], metadata: dict[str, dict[str, Any]]
) -> None:
    tokens, _ = _source_vocab(models[name])
    config = json.loads((models[name] / "config.json").read_text())
    gguf_tokens = metadata[name]["tokenizer.ggml.tokens"]
    assert len(gguf_tokens) == config["vocab_size"]
    assert [gguf_tokens[i] for i in sorted(tokens)] == [tokens[i] for i in sorted(tokens)]
    assert metadata[name]["tokenizer.ggml.model"] == "gpt2"


# --- token types, special ids -------------------------------------------------------------


@pytest.mark.parametrize("name", ["demo", "llama31", "qwen3"])
def test_token_types_follow_the_policy(
    name: str, models: dict[str, Path], metadata: dict[str, dict[str, Any]]
) -> None:
    """Documented policy: Hermes tags USER_DEFINED whatever the source says, special added
    tokens (turn markers) CONTROL, the BPE vocabulary NORMAL."""
    tokens, added = _source_vocab(models[name])
    types = metadata[name]["tokenizer.ggml.token_type"].tolist()
    by_text = {text: idx for idx, text in tokens.items()}
    for tag in HERMES_TAGS:
        assert types[by_text[tag]] == USER_DEFINED, tag
    for marker in TURN_MARKERS[name]:
        assert types[by_text[marker]] == CONTROL, marker
    expected = []
    for idx in range(len(types)):
        if idx not in added:
            expected.append(NORMAL)
        elif added[idx]["content"] in HERMES_TAGS:
            expected.append(USER_DEFINED)
        else:
            assert added[idx]["special"], added[idx]  # the fixtures have no other kind
            expected.append(CONTROL)
    assert types == expected


@pytest.mark.parametrize("name", ["demo", "llama31", "qwen3"])
def test_eos_and_eot_are_the_templates_turn_end(
    name: str, models: dict[str, Path], metadata: dict[str, dict[str, Any]], ggufs: dict[str, Path]
) -> None:
    tok = _source_tokenizer(models[name])
    turn_end = tok.token_to_id(TURN_END[name])
    meta = metadata[name]
    assert meta["tokenizer.ggml.eos_token_id"] == turn_end
    assert meta["tokenizer.ggml.eot_token_id"] == turn_end
    assert _llama_vocab(ggufs[name]).token_eos() == turn_end


@pytest.mark.parametrize("name", ["demo", "llama31", "qwen3"])
def test_bos_and_add_bos_match_the_source_tokenizer(
    name: str, models: dict[str, Path], metadata: dict[str, dict[str, Any]], ggufs: dict[str, Path]
) -> None:
    tok = _source_tokenizer(models[name])
    config = json.loads((models[name] / "config.json").read_text())
    meta = metadata[name]
    assert meta["tokenizer.ggml.bos_token_id"] == config["bos_token_id"]
    with_specials = tok.encode("Hello", add_special_tokens=True).ids
    without = tok.encode("Hello", add_special_tokens=False).ids
    source_adds_bos = with_specials[:1] == [config["bos_token_id"]] and with_specials != without
    assert meta["tokenizer.ggml.add_bos_token"] is source_adds_bos
    assert meta["tokenizer.ggml.add_eos_token"] is False
    # llama.cpp itself adds BOS exactly when the source tokenizer does.
    got = _llama_vocab(ggufs[name]).tokenize(b"Hello", add_bos=True, special=False)
    assert got == with_specials


def _tokenizer_copy(source: Path, dest: Path, **config_changes: Any) -> Path:
    dest.mkdir()
    shutil.copy2(source / "tokenizer.json", dest / "tokenizer.json")
    config = json.loads((source / "tokenizer_config.json").read_text(encoding="utf-8"))
    config.update(config_changes)
    (dest / "tokenizer_config.json").write_text(json.dumps(config), encoding="utf-8")
    return dest


def test_eos_follows_the_template_not_tokenizer_config(llama31_model: Path, tmp_path: Path) -> None:
    """Base Llama 3.1 names <|end_of_text|> as eos, but its chat template ends turns with
    <|eot_id|>: generation must stop there."""
    folder = _tokenizer_copy(llama31_model, tmp_path / "t", eos_token="<|end_of_text|>")
    vocab = build_vocab(load_tokenizer_bundle(folder), 128256, {}, pre_tokenizer="llama-bpe")
    assert vocab.special_ids["eos"] == vocab.special_ids["eot"] == 128009
    assert vocab.special_ids["bos"] == 128000


def test_eos_stays_when_the_template_has_no_turn_end(llama31_model: Path, tmp_path: Path) -> None:
    template = "{% for m in messages %}{{ m.content }}\n{% endfor %}"
    folder = _tokenizer_copy(
        llama31_model, tmp_path / "t", eos_token="<|end_of_text|>", chat_template=template
    )
    vocab = build_vocab(load_tokenizer_bundle(folder), 128256, {}, pre_tokenizer="llama-bpe")
    assert vocab.special_ids["eos"] == 128001
    assert "eot" not in vocab.special_ids


def test_tags_are_visible_and_turn_markers_hidden_in_llama_cpp(ggufs: dict[str, Path]) -> None:
    """What the policy is for: llama.cpp prints USER_DEFINED tokens (and matches them in
    plain text), and hides CONTROL ones unless asked."""
    llm = _llama_vocab(ggufs["demo"])
    think, im_end = llm.tokenize(b"<think><|im_end|>", add_bos=False, special=True)
    assert llm.detokenize([think, im_end]) == b"<think>"
    assert llm.detokenize([think, im_end], special=True) == b"<think><|im_end|>"
    assert llm.tokenize(b"<think>", add_bos=False, special=False) == [think]
    assert len(llm.tokenize(b"<|im_end|>", add_bos=False, special=False)) > 1


# --- chat templates -----------------------------------------------------------------------


def _source_templates(folder: Path) -> dict[str, bytes]:
    """The raw template bytes as the source folder stores them (independent reading)."""
    templates: dict[str, bytes] = {}
    config = json.loads((folder / "tokenizer_config.json").read_text(encoding="utf-8"))
    value = config.get("chat_template")
    if isinstance(value, list):
        templates.update({t["name"]: t["template"].encode() for t in value})
    elif isinstance(value, str):
        templates["default"] = value.encode()
    if (folder / "chat_template.jinja").is_file():
        templates["default"] = (folder / "chat_template.jinja").read_bytes()
    for path in (folder / "additional_chat_templates").glob("*.jinja"):
        templates[path.stem] = path.read_bytes()
    return templates


@pytest.mark.parametrize("name", ["demo", "llama31", "qwen3"])
def test_chat_templates_are_byte_identical(
    name: str, models: dict[str, Path], metadata: dict[str, dict[str, Any]], ggufs: dict[str, Path]
) -> None:
    source = _source_templates(models[name])
    assert set(source) == {"default", "tool_use"}
    meta = metadata[name]
    assert meta["tokenizer.chat_template"].encode() == source["default"]
    assert meta["tokenizer.chat_template.tool_use"].encode() == source["tool_use"]
    assert meta["tokenizer.chat_templates"] == ["tool_use"]
    # ... and llama.cpp reads them back unchanged.
    llm_meta = _llama_vocab(ggufs[name]).metadata
    assert llm_meta["tokenizer.chat_template"].encode() == source["default"]
    assert llm_meta["tokenizer.chat_template.tool_use"].encode() == source["tool_use"]


# --- policy overrides ---------------------------------------------------------------------


def test_policy_override_changes_the_token_type(demo_model: Path, tmp_path: Path) -> None:
    policy = TokenTypePolicy().with_overrides(
        {"<think>": "control", "<|im_end|>": "user_defined", "<tools>": "NORMAL"}
    )
    out = export_gguf(load_source(demo_model), tmp_path / "o.gguf", token_policy=policy).path
    tok = _source_tokenizer(demo_model)
    types = read_gguf(out).metadata["tokenizer.ggml.token_type"]
    assert types[tok.token_to_id("<think>")] == CONTROL
    assert types[tok.token_to_id("<|im_end|>")] == USER_DEFINED
    assert types[tok.token_to_id("<tools>")] == NORMAL
    assert types[tok.token_to_id("</think>")] == USER_DEFINED  # untouched
    assert types[tok.token_to_id("<|im_start|>")] == CONTROL  # untouched
    llm = _llama_vocab(out)
    think, end_think = tok.token_to_id("<think>"), tok.token_to_id("</think>")
    assert llm.detokenize([think, end_think]) == b"</think>"  # <think> is hidden now


def test_with_overrides_does_not_change_the_original_policy() -> None:
    base = TokenTypePolicy()
    changed = base.with_overrides({"<think>": "control"})
    assert base.type_of("<think>", special=False) == USER_DEFINED
    assert changed.type_of("<think>", special=False) == CONTROL
    assert changed.with_overrides({"</think>": "normal"}).type_of("<think>", False) == CONTROL


def test_unknown_token_type_name_raises() -> None:
    with pytest.raises(QuantkitError, match="Unknown token type 'sometimes'") as info:
        TokenTypePolicy().with_overrides({"<think>": "sometimes"})
    assert "control" in str(info.value)  # says what is allowed


# --- pre-tokenizer detection --------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "bos", "pre"),
    [("llama31", 128000, "llama-bpe"), ("demo", 1, "smollm"), ("qwen3", 128000, "llama-bpe")],
)
def test_pre_tokenizer_is_detected(
    name: str, bos: int, pre: str, models: dict[str, Path], metadata: dict[str, dict[str, Any]]
) -> None:
    assert detect_pre_tokenizer(models[name] / "tokenizer.json", bos) == pre
    assert metadata[name]["tokenizer.ggml.pre"] == pre


def _with_whitespace_pre_tokenizer(source: Path, dest: Path) -> Path:
    """A copy of a model folder (weights linked) whose pre-tokenizer splits on whitespace."""
    linked_copy(source, dest)
    data = json.loads((dest / "tokenizer.json").read_text(encoding="utf-8"))
    data["pre_tokenizer"] = {"type": "Whitespace"}
    (dest / "tokenizer.json").write_text(json.dumps(data), encoding="utf-8")
    return dest


def test_unknown_pre_tokenizer_is_refused(demo_model: Path, tmp_path: Path) -> None:
    folder = _with_whitespace_pre_tokenizer(demo_model, tmp_path / "ws")
    with pytest.raises(UnknownPreTokenizerError) as info:
        detect_pre_tokenizer(folder / "tokenizer.json", 1)
    message = str(info.value)
    assert str(folder / "tokenizer.json") in message
    assert "--pre-tokenizer" in message and "llama-bpe" in message and "smollm" in message
    out = tmp_path / "ws.gguf"
    with pytest.raises(UnknownPreTokenizerError):
        export_gguf(load_source(folder), out)
    assert not out.exists()  # refused before anything is written


@pytest.mark.slow
def test_explicit_pre_tokenizer_skips_detection(
    llama31_model: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    folder = _with_whitespace_pre_tokenizer(llama31_model, tmp_path / "ws")

    def no_detection(*args: Any, **kwargs: Any) -> str:
        raise AssertionError("detect_pre_tokenizer must not run")

    monkeypatch.setattr(vocab_module, "detect_pre_tokenizer", no_detection)
    bundle = load_tokenizer_bundle(folder)
    vocab = build_vocab(bundle, 128256, {}, pre_tokenizer="llama-bpe")
    assert vocab.pre == "llama-bpe"
    with pytest.raises(AssertionError, match="must not run"):
        build_vocab(bundle, 128256, {})  # the monkeypatch is effective
    out = export_gguf(load_source(folder), tmp_path / "ws.gguf", pre_tokenizer="llama-bpe").path
    assert read_gguf(out).metadata["tokenizer.ggml.pre"] == "llama-bpe"


def test_unknown_explicit_pre_tokenizer_name_is_refused(demo_model: Path, tmp_path: Path) -> None:
    out = tmp_path / "typo.gguf"
    with pytest.raises(QuantkitError):
        export_gguf(load_source(demo_model), out, pre_tokenizer="lama-bpe")
