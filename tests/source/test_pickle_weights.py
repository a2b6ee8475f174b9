"""Pickled checkpoints are refused by default and converted only with allow_pickle."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from quantkit.errors import UnsafeSourceError
from quantkit.source.model import load_source


@pytest.fixture
def pickled_model(tmp_path: Path, demo_model: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    torch = pytest.importorskip("torch")
    from transformers import LlamaConfig, LlamaForCausalLM

    monkeypatch.setenv("QUANTKIT_CACHE", str(tmp_path / "cache"))
    folder = tmp_path / "pickled"
    folder.mkdir()
    vocab = json.loads((demo_model / "config.json").read_text())["vocab_size"]
    config = LlamaConfig(
        vocab_size=vocab,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        tie_word_embeddings=True,
    )
    torch.manual_seed(0)
    model = LlamaForCausalLM(config).to(torch.bfloat16)
    config.architectures = ["LlamaForCausalLM"]
    config.save_pretrained(folder)
    torch.save(model.state_dict(), folder / "pytorch_model.bin")
    for name in ("tokenizer.json", "tokenizer_config.json", "generation_config.json"):
        shutil.copy(demo_model / name, folder / name)
    return folder


def test_pickle_refused_without_opt_in(pickled_model: Path) -> None:
    with pytest.raises(UnsafeSourceError, match="--allow-pickle"):
        load_source(pickled_model)


def test_pickle_converted_with_opt_in(pickled_model: Path) -> None:
    import torch

    source = load_source(pickled_model, allow_pickle=True)
    assert source.path != pickled_model  # a safetensors copy, the source is left untouched
    assert not list(pickled_model.glob("*.safetensors"))
    state = torch.load(pickled_model / "pytorch_model.bin", weights_only=True)
    names = {t.name for t in source.tensors}
    assert names == set(state)
    embed = next(t for t in source.tensors if t.name == "model.embed_tokens.weight")
    assert embed.dtype == "BF16" and embed.shape == tuple(state["model.embed_tokens.weight"].shape)
    # a second load reuses the converted copy
    assert load_source(pickled_model, allow_pickle=True).path == source.path
