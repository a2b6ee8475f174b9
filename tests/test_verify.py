"""The GGUF checks' own prompt: rendered by the template, exactly one BOS."""

from __future__ import annotations

from pathlib import Path

import pytest

from quantkit.backends.gguf_export import export_gguf
from quantkit.source import load_source
from quantkit.verify import chat_prompt_ids


@pytest.mark.parametrize("fixture", ["llama31_model", "demo_model"])
def test_chat_prompt_has_exactly_the_bos_the_model_wants(
    fixture: str, request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    """llama31: the template writes <|begin_of_text|> and the tokenizer adds BOS; the demo:
    no BOS is added (its "bos" <|im_start|> is the turn opener). Either way the runtime's ids
    must equal the source tokenizer's ids of the rendered text, with one BOS at most."""
    from llama_cpp import Llama
    from tokenizers import Tokenizer

    source = load_source(request.getfixturevalue(fixture))
    path = export_gguf(source, tmp_path / "m.gguf", out_type="Q8_0").path
    llm = Llama(model_path=str(path), vocab_only=True, verbose=False)
    try:
        ids = chat_prompt_ids(llm, source)
    finally:
        llm.close()
    bos_id = source.tokenizer.token_id(source.tokenizer.special_token("bos"))
    assert ids is not None
    assert ids[:2] != [bos_id, bos_id]
    text = _decode(ids, source)
    expected = (
        Tokenizer.from_file(str(source.path / "tokenizer.json"))
        .encode(text, add_special_tokens=False)
        .ids
    )
    assert ids == expected


def _decode(ids: list[int], source) -> str:
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(source.path / "tokenizer.json"))
    return tok.decode(ids, skip_special_tokens=False)


def test_check_gguf_runs_the_inspect_battery_then_generation(
    demo_model: Path, tmp_path: Path
) -> None:
    """What convert calls: the full battery against the source, the generation check last
    and not fatal; a --token-type override passes with the policy it was written with."""
    from quantkit.backends.gguf.vocab import TokenTypePolicy
    from quantkit.verify import check_gguf

    source = load_source(demo_model)
    path = export_gguf(source, tmp_path / "m.gguf", out_type="Q8_0").path
    checks = check_gguf(path, source)
    assert [c.name for c in checks][:3] == [
        "special tokens single ids",
        "token types follow the policy",
        "turn end is end-of-generation",
    ]
    assert checks[-1].name == "greedy generation stops" and not checks[-1].fatal
    assert all(c.passed for c in checks), [c for c in checks if not c.passed]
    policy = TokenTypePolicy().with_overrides({"<think>": "control"})
    overridden = export_gguf(source, tmp_path / "o.gguf", out_type="Q8_0", token_policy=policy).path
    default_policy = {c.name: c for c in check_gguf(overridden, source)}
    assert not default_policy["token types follow the policy"].passed
    with_override = {c.name: c for c in check_gguf(overridden, source, policy=policy)}
    assert with_override["token types follow the policy"].passed
