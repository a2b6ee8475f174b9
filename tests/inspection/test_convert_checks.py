"""The GGUF checks' own prompt: rendered by the template, exactly one BOS."""

from __future__ import annotations

from pathlib import Path

import pytest

from quantkit.backends.gguf.export import export_gguf
from quantkit.evaluation.options import EvalOptions
from quantkit.inspection.generation import chat_prompt_ids
from quantkit.source.model import load_source

NO_EVAL = EvalOptions(enabled=False)  # these tests check other things than quality


@pytest.mark.parametrize("fixture", ["llama31_model", "demo_model"])
def test_chat_prompt_has_exactly_the_bos_the_model_wants(
    fixture: str, request: pytest.FixtureRequest, q8_gguf
) -> None:
    """llama31: the template writes <|begin_of_text|> and the tokenizer adds BOS; the demo:
    no BOS is added (its "bos" <|im_start|> is the turn opener). Either way the runtime's ids
    must equal the source tokenizer's ids of the rendered text, with one BOS at most."""
    from llama_cpp import Llama
    from tokenizers import Tokenizer

    source = load_source(request.getfixturevalue(fixture))
    path = q8_gguf(source.path)  # export_gguf's Q8_0 of it, once a session
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


@pytest.mark.slow
def test_check_gguf_runs_the_inspect_battery_then_generation(
    demo_model: Path, demo_q8: Path, tmp_path: Path
) -> None:
    """What convert calls: the full battery against the source, the generation check last
    and not fatal; a --token-type override passes with the policy it was written with."""
    from quantkit.formats.tokens import TokenTypePolicy
    from quantkit.inspection import server_checks
    from quantkit.inspection.convert_checks import check_gguf

    source = load_source(demo_model)
    path = demo_q8  # export_gguf's Q8_0 of the demo, once a session (read-only)
    checks = check_gguf(path, source)
    assert [c.name for c in checks][:3] == [
        "special tokens single ids",
        "token types follow the policy",
        "turn end is end-of-generation",
    ]
    by_name = {c.name: c for c in checks}
    assert not by_name["greedy generation stops"].fatal
    # ... then the round trip through llama-server (server_checks), last.
    assert [c.name for c in checks][-3:] == list(server_checks.NAMES)
    assert all(c.passed for c in checks), [c for c in checks if not c.passed]
    policy = TokenTypePolicy().with_overrides({"<think>": "control"})
    overridden = export_gguf(source, tmp_path / "o.gguf", out_type="Q8_0", token_policy=policy).path
    default_policy = {c.name: c for c in check_gguf(overridden, source)}
    assert not default_policy["token types follow the policy"].passed
    with_override = {c.name: c for c in check_gguf(overridden, source, policy=policy)}
    assert with_override["token types follow the policy"].passed


def test_a_crash_inside_the_checks_is_a_failed_fatal_check(demo_model: Path, monkeypatch) -> None:
    """check_gguf / check_safetensors (convert's entry points) never raise for the artifact:
    a check that crashes is a failed fatal check, so convert quarantines instead of deleting.
    KeyboardInterrupt still stops."""
    from quantkit.inspection import gguf_checks, safetensors_checks
    from quantkit.inspection.convert_checks import check_gguf, check_safetensors

    def boom(*args, **kwargs):
        raise RuntimeError("boom")

    source = load_source(demo_model)
    monkeypatch.setattr(gguf_checks, "gguf_checks", boom)
    monkeypatch.setattr(safetensors_checks, "safetensors_checks", boom)
    for checks in (
        check_gguf(demo_model / "missing.gguf", source),
        check_safetensors(demo_model, source, generate=False),
    ):
        assert [(c.name, c.passed, c.fatal) for c in checks] == [
            ("artifact loads and can be checked", False, True)
        ]
        assert checks[0].evidence == "the checks crashed: RuntimeError: boom"

    def interrupt(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(gguf_checks, "gguf_checks", interrupt)
    with pytest.raises(KeyboardInterrupt):
        check_gguf(demo_model / "missing.gguf", source)


def test_convert_quarantines_when_a_check_crashes(
    demo_model: Path, tmp_path: Path, monkeypatch
) -> None:
    import quantkit
    from quantkit.errors import VerificationError
    from quantkit.inspection import gguf_checks

    def boom(*args, **kwargs):
        raise RuntimeError("boom in a check")

    monkeypatch.setattr(gguf_checks, "types_check", boom)
    out = tmp_path / "out"
    with pytest.raises(VerificationError, match="artifact loads and can be checked"):
        quantkit.convert(demo_model, out=out, format="gguf", quant="Q8_0", evaluation=NO_EVAL)
    quarantine = tmp_path / "out.quarantine"
    assert quarantine.is_dir() and not out.exists()
    assert list(quarantine.glob("*.gguf"))
    assert "RuntimeError: boom in a check" in (quarantine / "manifest.json").read_text()
