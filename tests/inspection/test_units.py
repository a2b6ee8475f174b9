"""The inspection's fixed inputs and its independent rope computation."""

from __future__ import annotations

import json

import pytest

from quantkit.formats.tokens import HERMES_TAGS
from quantkit.inspection.battery import CONVERSATIONS, CORPUS
from quantkit.inspection.rope import llama3_factors


def test_battery_covers_what_hermes_models_use() -> None:
    assert len(CONVERSATIONS) >= 12
    assert len({c.name for c in CONVERSATIONS}) == len(CONVERSATIONS)
    messages = [m for c in CONVERSATIONS for m in c.messages]
    roles = {m["role"] for m in messages}
    assert roles == {"system", "user", "assistant", "tool"}
    assert any(c.tools for c in CONVERSATIONS)
    assert any(m.get("tool_calls") for m in messages)
    assert any(m["role"] == "system" and m["content"] == "" for m in messages)
    assert any("<think>" in m["content"] and m["role"] == "assistant" for m in messages)
    assert any(c.variables.get("thinking") is True for c in CONVERSATIONS)
    assert any(not c.add_generation_prompt for c in CONVERSATIONS)
    assert any(any(ord(ch) > 0x3000 for ch in m["content"]) for m in messages)
    json.dumps([c.messages for c in CONVERSATIONS])  # plain data, as a chat API sends


def test_corpus_covers_prose_code_numbers_unicode_whitespace_and_tags() -> None:
    text = "\n".join(t for _, t in CORPUS)
    for tag in HERMES_TAGS:
        assert tag in text
    assert "def " in text and "\t" in text and "  " in text and "1234567890" in text
    assert "日本語" in text and "👨‍👩‍👧‍👦" in text and "<|im_end|>" in text and "<|eot_id|>" in text


@pytest.mark.parametrize("factor,low,high,orig", [(8.0, 1.0, 4.0, 8192), (32.0, 1.0, 4.0, 8192)])
def test_llama3_factors_match_transformers(factor, low, high, orig) -> None:
    """Our float64 rope_freqs equal base / scaled inverse frequencies from transformers'
    own llama3 rope initialisation (Llama 3.1's factor 8 and Llama 3.2's factor 32)."""
    import torch
    from transformers import LlamaConfig
    from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS

    rope = {"rope_type": "llama3", "factor": factor, "low_freq_factor": low,
            "high_freq_factor": high, "original_max_position_embeddings": orig}  # fmt: skip
    raw = {"hidden_size": 4096, "num_attention_heads": 32, "rope_theta": 500000.0,
           "rope_scaling": rope, "max_position_embeddings": 131072}  # fmt: skip
    config = LlamaConfig(**raw)
    scaled, _ = ROPE_INIT_FUNCTIONS["llama3"](config, "cpu")
    dim = 128
    base = 1.0 / (500000.0 ** (torch.arange(0, dim, 2, dtype=torch.float64) / dim))
    expected = (base / scaled.double()).tolist()
    ours = llama3_factors(raw)
    assert ours is not None and len(ours) == dim // 2
    assert ours == pytest.approx(expected, rel=1e-5)
    assert llama3_factors({**raw, "rope_scaling": None}) is None


def test_a_template_that_renders_nothing_fails_even_when_both_sides_agree() -> None:
    from quantkit.inspection.compare import render_check
    from quantkit.inspection.sides import SandboxSide

    broken = "{{ raise_exception('nope') }}"
    sides = [SandboxSide({"default": broken}, {}, label) for label in ("a", "b")]
    check = render_check(*sides, ["default"])
    assert not check.passed and "renders none of the battery" in check.evidence
    picky = "{% if tools %}{{ raise_exception('no tools') }}{% endif %}{{ messages[0].content }}"
    sides = [SandboxSide({"default": picky}, {}, label) for label in ("a", "b")]
    check = render_check(*sides, ["default"])
    assert check.passed and "3 refused by the template on both sides" in check.evidence


def test_rope_without_a_source_flags_a_stripped_llama31() -> None:
    """No rope_freqs in a llama GGUF: fine for Llama 2/3.0-style metadata (said plainly to
    be consistency only), a failure where the metadata is Llama 3.1's."""
    from quantkit.inspection.gguf_meta import GGUFMeta
    from quantkit.inspection.rope import rope_check

    base = {"general.architecture": "llama", "llama.rope.dimension_count": 128}
    llama31 = GGUFMeta({**base, "llama.context_length": 131072, "llama.rope.freq_base": 5e5})
    check = rope_check(llama31, None, None)
    assert check is not None and not check.passed and check.fatal
    assert "context_length 131072, rope.freq_base 500000" in check.evidence
    assert "expected 64 llama3 scaling divisors" in check.evidence
    typed = GGUFMeta({**base, "llama.rope.scaling.type": "llama3"})
    assert not rope_check(typed, None, None).passed
    llama30 = GGUFMeta({**base, "llama.context_length": 8192, "llama.rope.freq_base": 5e5})
    check = rope_check(llama30, None, None)
    assert check.passed and "without --against only consistency can be checked" in check.evidence


def test_source_cache_key_covers_tokenizers_and_config(tmp_path, monkeypatch) -> None:
    from quantkit.inspection import source_cache

    (tmp_path / "tokenizer.json").write_text("{}")
    (tmp_path / "config.json").write_text('{"model_type": "llama"}')
    key = source_cache._key(tmp_path)
    (tmp_path / "config.json").write_text('{"model_type": "qwen2"}')
    assert source_cache._key(tmp_path) != key
    key = source_cache._key(tmp_path)
    real = source_cache.metadata.version
    monkeypatch.setattr(
        source_cache.metadata,
        "version",
        lambda name: "0.0.0-other" if name == "tokenizers" else real(name),
    )
    assert source_cache._key(tmp_path) != key


def test_source_cache_file_missing_an_entry_is_a_miss(demo_model, tmp_path, monkeypatch) -> None:
    """A cache file with `templates` but no `render` (older or damaged) is recomputed, not
    a KeyError."""
    from quantkit.inspection import source_cache
    from quantkit.inspection.battery import CONVERSATIONS

    monkeypatch.setenv("QUANTKIT_CACHE", str(tmp_path))
    path = tmp_path / "inspect-source" / f"{source_cache._key(demo_model)}.json"
    path.parent.mkdir(parents=True)
    path.write_text(json.dumps({"templates": {"default": "x"}, "encode": {}}))
    side = source_cache.CachedTransformersSide(demo_model, "source")
    assert "<|im_start|>" in side.render("default", CONVERSATIONS[0])
    assert side.token_id("eos") == 2
    side.save()
    assert set(json.loads(path.read_text())) == {"templates", "render", "encode", "ids"}
