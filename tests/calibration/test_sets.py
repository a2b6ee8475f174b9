"""Calibration sets: the built-in mix rendered through each model's own chat template, the
one-BOS rule, kind shares, determinism, user JSONL and hf: datasets, and the errors."""

from __future__ import annotations

import dataclasses
import json
from collections import Counter
from pathlib import Path

import pytest
from tokenizers import Tokenizer

from quantkit.calibration.records import KINDS, builtin_counts, builtin_dir
from quantkit.calibration.sets import CalibrationError, CalibrationSet, load_calibration
from quantkit.source.tokenizer_bundle import TokenizerBundle, load_tokenizer_bundle

CHAT_KINDS = {"math", "chat", "think", "tool"}  # the built-in files written as messages
TURN_TOKENS = {
    "demo": ("<|im_start|>", "<|im_end|>"),
    "llama31": ("<|start_header_id|>", "<|eot_id|>"),
}


@pytest.fixture(scope="module")
def demo_bundle(demo_model: Path) -> TokenizerBundle:
    return load_tokenizer_bundle(demo_model)


@pytest.fixture(scope="module")
def llama31_bundle(llama31_model: Path) -> TokenizerBundle:
    return load_tokenizer_bundle(llama31_model)


@pytest.fixture(scope="module", params=["demo", "llama31"])
def bundle(request) -> TokenizerBundle:
    return request.getfixturevalue(f"{request.param}_bundle")


@pytest.fixture(scope="module")
def full_mix(bundle: TokenizerBundle) -> CalibrationSet:
    """Every sample of the built-in mix, untruncated."""
    return load_calibration(None, bundle, samples=sum(builtin_counts().values()), seq_len=1 << 16)


def _name(bundle: TokenizerBundle) -> str:
    return "llama31" if bundle.add_bos else "demo"


def _id(bundle: TokenizerBundle, token: str) -> int:
    token_id = bundle.token_id(token)
    assert token_id is not None, token
    return token_id


def _write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


# --- the built-in mix ----------------------------------------------------------------------


def test_builtin_mix_size_and_readme() -> None:
    counts = builtin_counts()
    assert set(counts) == set(KINDS)
    assert 280 <= sum(counts.values()) <= 400
    assert all(count >= 40 for count in counts.values()), counts
    readme = (builtin_dir() / "README.md").read_text(encoding="utf-8")
    assert "Apache-2.0" in readme and "written for quantkit" in readme.lower()
    for kind, count in counts.items():
        assert f"| {kind} | {count} |" in readme, f"README count for {kind} is stale"


def test_no_sample_starts_with_two_bos(bundle: TokenizerBundle, full_mix: CalibrationSet) -> None:
    bos = _id(bundle, bundle.special_token("bos"))
    assert len(full_mix) == sum(builtin_counts().values())
    for ids, kind in zip(full_mix.samples, full_mix.kinds, strict=True):
        assert ids[:2] != (bos, bos)
        if bundle.add_bos:  # llama31: exactly one BOS, first (its template writes it too)
            assert ids[0] == bos and ids.count(bos) == 1
        elif kind not in CHAT_KINDS:  # demo adds no BOS; <|im_start|> only opens turns
            assert ids[0] != bos


def test_chat_samples_carry_the_template_turn_tokens(
    bundle: TokenizerBundle, full_mix: CalibrationSet
) -> None:
    start, end = (_id(bundle, t) for t in TURN_TOKENS[_name(bundle)])
    think, call, response = (_id(bundle, t) for t in ("<think>", "<tool_call>", "<tool_response>"))
    for ids, kind in zip(full_mix.samples, full_mix.kinds, strict=True):
        if kind in CHAT_KINDS:
            assert start in ids and end in ids, kind
        else:  # prose and code are plain text
            assert start not in ids and end not in ids, kind
        if kind == "think":
            assert think in ids
        if kind == "tool":
            assert call in ids and response in ids
    assert Counter(full_mix.kinds) == Counter(builtin_counts())


def test_tool_samples_use_the_tool_use_template(demo_bundle: TokenizerBundle) -> None:
    mix = load_calibration(None, demo_bundle, samples=40, tool_share=1.0)
    text = Tokenizer.from_file(str(demo_bundle.folder / "tokenizer.json")).decode(
        list(mix.samples[0]), skip_special_tokens=False
    )
    assert text.startswith("<|im_start|>system\nYou are a function calling AI model.")
    assert "<tools>" in text and '"arguments": {' in text


@pytest.mark.parametrize("think_share, tool_share", [(0.2, 0.3), (0.0, 0.5), (0.1, None)])
def test_kind_shares_match_the_configuration(
    demo_bundle: TokenizerBundle, think_share: float, tool_share: float | None
) -> None:
    mix = load_calibration(
        None, demo_bundle, samples=100, think_share=think_share, tool_share=tool_share
    )
    counts = Counter(mix.kinds)
    assert len(mix) == 100
    assert counts["think"] == round(100 * think_share)
    if tool_share is not None:
        assert counts["tool"] == round(100 * tool_share)
    assert mix.describe()["kinds"] == {k: counts[k] for k in KINDS if counts[k]}


def test_a_share_that_cannot_be_met_is_an_error(demo_bundle: TokenizerBundle) -> None:
    available = builtin_counts()["think"]
    with pytest.raises(CalibrationError, match=rf"think samples .* only {available}"):
        load_calibration(None, demo_bundle, samples=200, think_share=0.5)
    with pytest.raises(CalibrationError, match="add up to more than 1"):
        load_calibration(None, demo_bundle, think_share=0.6, tool_share=0.6)
    with pytest.raises(CalibrationError, match="between 0 and 1"):
        load_calibration(None, demo_bundle, tool_share=1.5)


def test_selection_is_deterministic_for_a_seed(llama31_bundle: TokenizerBundle) -> None:
    first = load_calibration("builtin", llama31_bundle, samples=64, seed=7)
    again = load_calibration("builtin", llama31_bundle, samples=64, seed=7)
    other = load_calibration("builtin", llama31_bundle, samples=64, seed=8)
    assert first == again
    assert first.samples != other.samples
    assert (first.seed, other.seed) == (7, 8)


def test_seq_len_truncates(llama31_bundle: TokenizerBundle) -> None:
    mix = load_calibration(None, llama31_bundle, samples=50, seq_len=32)
    bos = _id(llama31_bundle, "<|begin_of_text|>")
    assert all(len(ids) <= 32 and ids[0] == bos for ids in mix.samples)
    assert sum(len(ids) == 32 for ids in mix.samples) >= 45
    assert mix.describe()["seq_len"] == 32 and mix.describe()["max_tokens"] == 32


def test_to_hf_dataset_and_describe(demo_bundle: TokenizerBundle) -> None:
    mix = load_calibration(None, demo_bundle, samples=8, seq_len=64)
    dataset = mix.to_hf_dataset()
    assert dataset.column_names == ["input_ids", "attention_mask"]
    assert [tuple(row) for row in dataset["input_ids"]] == list(mix.samples)
    assert [sum(m) for m in dataset["attention_mask"]] == [len(s) for s in mix.samples]
    described = mix.describe()
    assert described["source"] == "builtin" and described["samples"] == 8
    assert described["tokens"] == sum(len(s) for s in mix.samples)
    json.dumps(described)


# --- user data -----------------------------------------------------------------------------

USER_ROWS = [
    {"text": "Plain prose about rivers and the sea."},
    {"messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello!"}]},
    {
        "messages": [
            {"role": "user", "content": "2+2?"},
            {"role": "assistant", "content": "<think>\nadd\n</think>\n\n4"},
        ]
    },
    {
        "tools": [{"type": "function", "function": {"name": "now", "parameters": {}}}],
        "messages": [
            {"role": "user", "content": "Time?"},
            {
                "role": "assistant",
                "content": "",
                "tool_calls": [{"type": "function", "function": {"name": "now", "arguments": {}}}],
            },
            {"role": "tool", "content": "12:00"},
            {"role": "assistant", "content": "It is noon."},
        ],
    },
    {"text": "<|begin_of_text|>Text that already starts with the Llama BOS."},
]


def test_jsonl_user_data_both_forms(tmp_path: Path, llama31_bundle: TokenizerBundle) -> None:
    path = _write_jsonl(tmp_path / "mine.jsonl", USER_ROWS)
    mix = load_calibration(str(path), llama31_bundle, samples=5)
    assert sorted(mix.kinds) == ["chat", "prose", "prose", "think", "tool"]
    assert mix.source == str(path)
    bos = _id(llama31_bundle, "<|begin_of_text|>")
    tokenizer = Tokenizer.from_file(str(llama31_bundle.folder / "tokenizer.json"))
    for ids in mix.samples:
        assert ids[0] == bos and ids[1] != bos
    # a text sample gets the tokenizer's normal BOS handling
    plain = tuple(tokenizer.encode(USER_ROWS[0]["text"]).ids)
    assert plain in mix.samples and plain[0] == bos


def test_jsonl_on_a_model_without_bos(tmp_path: Path, demo_bundle: TokenizerBundle) -> None:
    path = _write_jsonl(tmp_path / "mine.jsonl", USER_ROWS[:4])
    mix = load_calibration(str(path), demo_bundle, samples=4)
    tokenizer = Tokenizer.from_file(str(demo_bundle.folder / "tokenizer.json"))
    plain = tuple(tokenizer.encode(USER_ROWS[0]["text"], add_special_tokens=False).ids)
    assert plain in mix.samples
    tool = mix.samples[mix.kinds.index("tool")]
    assert _id(demo_bundle, "<tool_call>") in tool and _id(demo_bundle, "<tool_response>") in tool


def test_hf_spec_through_local_datasets(tmp_path: Path, demo_bundle: TokenizerBundle) -> None:
    import datasets

    # a folder of JSONL files, loaded by datasets.load_dataset's local path
    folder = tmp_path / "chats"
    folder.mkdir()
    _write_jsonl(folder / "train.jsonl", [{"messages": r["messages"]} for r in USER_ROWS[1:3]])
    mix = load_calibration(f"hf:{folder}:train", demo_bundle, samples=2)
    assert sorted(mix.kinds) == ["chat", "think"]
    assert mix.describe()["source"] == f"hf:{folder}:train"

    # a DatasetDict written by save_to_disk, loaded with load_from_disk
    saved = tmp_path / "saved"
    texts = [f"Sample number {i} about tides and harbours." for i in range(6)]
    datasets.DatasetDict({"validation": datasets.Dataset.from_dict({"text": texts})}).save_to_disk(
        str(saved)
    )
    mix = load_calibration(f"hf:{saved}:validation", demo_bundle, samples=6, seed=3)
    assert mix.kinds == ("prose",) * 6 and len(set(mix.samples)) == 6
    with pytest.raises(CalibrationError, match='no split "test"'):
        load_calibration(f"hf:{saved}:test", demo_bundle, samples=1)
    with pytest.raises(CalibrationError, match="cannot be loaded"):
        load_calibration(f"hf:{tmp_path / 'absent'}:train", demo_bundle, samples=1)
    wrong = tmp_path / "wrong"
    datasets.Dataset.from_dict({"prompt": ["x"]}).save_to_disk(str(wrong))
    with pytest.raises(CalibrationError, match='no "messages" or "text" column'):
        load_calibration(f"hf:{wrong}:train", demo_bundle, samples=1)


# --- errors --------------------------------------------------------------------------------


def test_errors_are_calibration_errors_with_exit_code_12() -> None:
    assert CalibrationError.exit_code == 12


def test_missing_file(tmp_path: Path, demo_bundle: TokenizerBundle) -> None:
    with pytest.raises(CalibrationError, match="does not exist"):
        load_calibration(str(tmp_path / "nope.jsonl"), demo_bundle)


@pytest.mark.parametrize(
    "lines, message",
    [
        (['{"text": "ok"}', "", '{"text": "broken"'], "Line 3 of .* is not valid JSON"),
        (['{"text": "ok"}', '{"prompt": "x"}'], 'line 2 of .* has neither "messages" nor "text"'),
        (["[1, 2]"], 'line 1 of .* has neither "messages" nor "text"'),
        (['{"messages": []}'], "must be a non-empty list"),
        (['{"messages": [{"content": "no role"}]}'], "must be a non-empty list"),
        (['{"text": ""}'], '"text" must be a non-empty string'),
        (['{"text": "x", "kind": "poetry"}'], 'unknown kind "poetry"'),
        ([""], "has no samples"),
    ],
)
def test_malformed_jsonl(
    tmp_path: Path, demo_bundle: TokenizerBundle, lines: list[str], message: str
) -> None:
    path = tmp_path / "bad.jsonl"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    with pytest.raises(CalibrationError, match=message):
        load_calibration(str(path), demo_bundle, samples=1)


def test_model_without_chat_template(tmp_path: Path, demo_bundle: TokenizerBundle) -> None:
    bare = dataclasses.replace(demo_bundle, chat_templates={})
    with pytest.raises(CalibrationError, match=r"need a chat template.*--calibration FILE") as err:
        load_calibration(None, bare)
    assert err.value.hint.startswith("Pass --calibration FILE")  # a hint, not the message
    path = _write_jsonl(tmp_path / "mixed.jsonl", USER_ROWS[:2])
    with pytest.raises(CalibrationError, match=r"need a chat template.*\{\"text\": \.\.\.\}"):
        load_calibration(str(path), bare, samples=1)
    # plain text needs no template
    texts = _write_jsonl(tmp_path / "texts.jsonl", [USER_ROWS[0]])
    assert load_calibration(str(texts), bare, samples=1).kinds == ("prose",)


def test_chat_samples_as_plain_text_without_a_template(demo_bundle: TokenizerBundle) -> None:
    """For an importance matrix (chat_as_text) a base model gets the built-in mix as plain
    text: the messages' contents joined by blank lines, no chat markup; the set says so."""
    from tokenizers import Tokenizer

    bare = dataclasses.replace(demo_bundle, chat_templates={})
    mix = load_calibration(None, bare, samples=8, seed=3, chat_as_text=True)
    assert mix.plain_text and mix.describe()["rendering"] == "plain text (no chat template)"
    chat = load_calibration(None, demo_bundle, samples=8, seed=3, chat_as_text=True)
    assert not chat.plain_text and "rendering" not in chat.describe()  # a template: used
    assert mix.kinds == chat.kinds  # the same draw
    start = _id(demo_bundle, "<|im_start|>")
    assert all(start not in ids for ids in mix.samples)
    assert any(start in ids for ids in chat.samples)
    tokenizer = Tokenizer.from_file(str(demo_bundle.folder / "tokenizer.json"))
    i = next(i for i, ids in enumerate(chat.samples) if start in ids)  # a chat sample
    text = tokenizer.decode(list(mix.samples[i]), skip_special_tokens=False)
    rendered = tokenizer.decode(list(chat.samples[i]), skip_special_tokens=False)
    assert "\n\n" in text and "<|im_end|>" not in text and "<|im_end|>" in rendered


STRICT_TEMPLATE = (  # refuses parallel tool calls, as Meta's Llama 3.1 template does
    "{%- for m in messages %}"
    "{%- if m.tool_calls and m.tool_calls | length > 1 %}"
    "{{- raise_exception('only single tool calls are supported') }}{%- endif %}"
    "{{- '<|im_start|>' + m.role + '\\n' + (m.content or '') + '<|im_end|>\\n' }}"
    "{%- endfor %}"
)


def test_unrenderable_samples(tmp_path: Path, demo_bundle: TokenizerBundle) -> None:
    strict = dataclasses.replace(demo_bundle, chat_templates={"default": STRICT_TEMPLATE})
    # built-in samples the template refuses are skipped; the tool calls are then inlined
    mix = load_calibration(None, strict, samples=250)
    call = _id(demo_bundle, "<tool_call>")
    tools = [ids for ids, kind in zip(mix.samples, mix.kinds, strict=True) if kind == "tool"]
    assert tools and all(call in ids for ids in tools)
    assert Counter(mix.kinds)["tool"] < builtin_counts()["tool"]
    with pytest.raises(CalibrationError, match="did not render with this chat template"):
        load_calibration(None, strict, samples=sum(builtin_counts().values()))
    # the user's own data must render: the error names the line
    parallel = dict(USER_ROWS[3])
    parallel["messages"] = [dict(m) for m in USER_ROWS[3]["messages"]]
    parallel["messages"][1]["tool_calls"] = USER_ROWS[3]["messages"][1]["tool_calls"] * 2
    path = _write_jsonl(tmp_path / "parallel.jsonl", [USER_ROWS[0], parallel])
    with pytest.raises(CalibrationError, match=r"line 2 of .* does not render.*single tool"):
        load_calibration(str(path), strict, samples=2)


@pytest.mark.parametrize(
    "spec", ["hf:only-a-name", "hf:a:b:c:d", "hf:name::train", "hf:", "corpus.txt"]
)
def test_unknown_spec_forms(spec: str, demo_bundle: TokenizerBundle) -> None:
    with pytest.raises(CalibrationError, match="hf:NAME"):
        load_calibration(spec, demo_bundle)


@pytest.mark.parametrize(
    "options, message",
    [
        ({"samples": 0}, "at least 1"),
        ({"seq_len": 15}, "at least 16 tokens"),
        ({"samples": 10_000}, r"has only \d+\. Pass --calibration-samples"),
    ],
)
def test_bad_options(demo_bundle: TokenizerBundle, options: dict, message: str) -> None:
    with pytest.raises(CalibrationError, match=message):
        load_calibration(None, demo_bundle, **options)
