"""Reading a source model (quantkit.source.model, quantkit.source.tokenizer_bundle): rope
settings in both config forms, chat templates from every place they live, and refusals with messages
that say what to do."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from support import REPO_ROOT
from support.broken_models import linked_copy

from quantkit.errors import (
    QuantkitError,
    SourceModelError,
    UnsafeSourceError,
    UnsupportedArchitectureError,
)
from quantkit.source.model import RopeSettings, geometry_from_config, load_source, rope_settings
from quantkit.source.tokenizer_bundle import load_tokenizer_bundle, read_chat_templates

LLAMA31_ROPE = RopeSettings(
    theta=500000.0,
    rope_type="llama3",
    factor=8.0,
    low_freq_factor=1.0,
    high_freq_factor=4.0,
    original_max_position_embeddings=8192,
)


def _edit_config(folder: Path, **changes: Any) -> None:
    config = json.loads((folder / "config.json").read_text())
    config.update(changes)
    (folder / "config.json").write_text(json.dumps(config))


# --- rope and geometry --------------------------------------------------------------------


def test_rope_is_the_same_from_both_config_forms(
    llama31_model: Path, llama31_model_tf4_config: Path
) -> None:
    tf5 = load_source(llama31_model)
    tf4 = load_source(llama31_model_tf4_config)
    assert "rope_parameters" in tf5.config and "rope_scaling" not in tf5.config
    assert "rope_scaling" in tf4.config and "rope_parameters" not in tf4.config
    assert tf5.geometry.rope == tf4.geometry.rope == LLAMA31_ROPE
    assert tf5.geometry == tf4.geometry


def test_geometry_of_the_llama31_fixture(llama31_model: Path) -> None:
    geo = load_source(llama31_model).geometry
    assert (geo.architecture, geo.num_layers, geo.hidden_size) == ("LlamaForCausalLM", 4, 512)
    assert (geo.num_heads, geo.num_kv_heads, geo.head_dim) == (8, 2, 64)
    assert (geo.vocab_size, geo.tie_word_embeddings) == (128256, False)


@pytest.mark.parametrize(
    ("config", "expected"),
    [
        ({}, RopeSettings(10000.0, "default")),
        ({"rope_theta": 1e6}, RopeSettings(1e6, "default")),
        ({"rope_theta": 1e4, "rope_scaling": {"type": "linear", "factor": 2}},
         RopeSettings(1e4, "linear", factor=2.0)),
        ({"rope_parameters": {"rope_type": "default", "rope_theta": 1e5}},
         RopeSettings(1e5, "default")),
        ({"rope_theta": 3e5, "rope_parameters": {"rope_type": "yarn", "factor": 4.0,
          "original_max_position_embeddings": 32768}},
         RopeSettings(3e5, "yarn", factor=4.0, original_max_position_embeddings=32768)),
        ({"rope_theta": 5e5, "rope_scaling": None}, RopeSettings(5e5, "default")),
    ],
    ids=["nothing", "theta-only", "tf4-type-key", "tf5-default", "tf5-theta-outside", "null"],
)  # fmt: skip
def test_rope_settings_forms(config: dict[str, Any], expected: RopeSettings) -> None:
    assert rope_settings(config) == expected


def test_default_rope_models(demo_model: Path, qwen3_model: Path) -> None:
    assert load_source(demo_model).geometry.rope == RopeSettings(100000.0, "default")
    assert load_source(qwen3_model).geometry.rope == RopeSettings(1000000.0, "default")


def test_missing_config_key_is_a_source_error() -> None:
    config = {"architectures": ["LlamaForCausalLM"], "hidden_size": 64}
    with pytest.raises(SourceModelError, match="config.json lacks 'num_attention_heads'") as info:
        geometry_from_config(config)
    assert info.value.hint


# --- chat templates from every place ------------------------------------------------------


def _tokenizer_folder(
    demo_model: Path,
    dest: Path,
    *,
    config_template: Any = None,
    files: dict[str, str] | None = None,
) -> Path:
    """tokenizer.json of the demo model plus chosen template files."""
    dest.mkdir()
    shutil.copy2(demo_model / "tokenizer.json", dest / "tokenizer.json")
    config = json.loads((demo_model / "tokenizer_config.json").read_text())
    config.pop("chat_template", None)
    if config_template is not None:
        config["chat_template"] = config_template
    (dest / "tokenizer_config.json").write_text(json.dumps(config))
    for name, text in (files or {}).items():
        (dest / name).parent.mkdir(parents=True, exist_ok=True)
        (dest / name).write_text(text, encoding="utf-8")
    return dest


TEMPLATE_LAYOUTS = {
    "config-string": ({"config_template": "S{{ messages }}"}, {"default": "S{{ messages }}"}),
    "config-list": (
        {"config_template": [{"name": "default", "template": "D"},
                             {"name": "tool_use", "template": "T"}]},
        {"default": "D", "tool_use": "T"},
    ),
    "jinja": ({"files": {"chat_template.jinja": "J ünï\n"}}, {"default": "J ünï\n"}),
    "json": ({"files": {"chat_template.json": json.dumps({"chat_template": "JS"})}},
             {"default": "JS"}),
    "additional": (
        {"files": {"chat_template.jinja": "J", "additional_chat_templates/tool_use.jinja": "TU",
                   "additional_chat_templates/rag.jinja": "R"}},
        {"default": "J", "tool_use": "TU", "rag": "R"},
    ),
    "jinja-over-config": ({"config_template": "S", "files": {"chat_template.jinja": "J"}},
                          {"default": "J"}),
    "none": ({}, {}),
}  # fmt: skip


@pytest.mark.parametrize("layout", list(TEMPLATE_LAYOUTS))
def test_chat_templates_are_read_from_every_place(
    layout: str, demo_model: Path, tmp_path: Path
) -> None:
    kwargs, expected = TEMPLATE_LAYOUTS[layout]
    folder = _tokenizer_folder(demo_model, tmp_path / layout, **kwargs)
    assert read_chat_templates(folder) == expected
    assert load_tokenizer_bundle(folder).chat_templates == expected


@pytest.mark.parametrize(
    "layout", ["config-string", "config-list", "jinja", "additional", "jinja-over-config"]
)
def test_chat_templates_resolve_as_transformers_does(
    layout: str, demo_model: Path, tmp_path: Path
) -> None:
    from transformers import AutoTokenizer

    kwargs, _ = TEMPLATE_LAYOUTS[layout]
    folder = _tokenizer_folder(demo_model, tmp_path / layout, **kwargs)
    theirs = AutoTokenizer.from_pretrained(folder).chat_template
    theirs = theirs if isinstance(theirs, dict) else {"default": theirs}
    assert read_chat_templates(folder) == theirs


def test_chat_template_json_does_not_override_the_tokenizers_template(
    demo_model: Path, tmp_path: Path
) -> None:
    from transformers import AutoTokenizer

    files = {"chat_template.json": json.dumps({"chat_template": "JS"})}
    folder = _tokenizer_folder(demo_model, tmp_path / "both", config_template="S", files=files)
    assert AutoTokenizer.from_pretrained(folder).chat_template == "S"
    assert read_chat_templates(folder) == {"default": "S"}


def test_chat_template_of_unexpected_type_is_a_source_error(
    demo_model: Path, tmp_path: Path
) -> None:
    folder = _tokenizer_folder(demo_model, tmp_path / "bad", config_template={"x": 1})
    with pytest.raises(SourceModelError, match="chat_template has an unexpected type") as info:
        read_chat_templates(folder)
    assert "string or a list" in str(info.value)


def test_source_model_carries_the_templates(llama31_model: Path, qwen3_model: Path) -> None:
    llama = load_source(llama31_model).tokenizer
    qwen = load_source(qwen3_model).tokenizer
    assert llama is not None and qwen is not None
    config = json.loads((llama31_model / "tokenizer_config.json").read_text())
    assert llama.chat_templates == {t["name"]: t["template"] for t in config["chat_template"]}
    assert qwen.chat_templates == {
        "default": (qwen3_model / "chat_template.jinja").read_text(encoding="utf-8"),
        "tool_use": (qwen3_model / "additional_chat_templates" / "tool_use.jinja").read_text(
            encoding="utf-8"
        ),
    }


# --- refusals -----------------------------------------------------------------------------


def test_missing_config_json(llama31_model: Path, tmp_path: Path) -> None:
    folder = linked_copy(llama31_model, tmp_path / "m", skip=("config.json",))
    with pytest.raises(SourceModelError, match="has no config.json") as info:
        load_source(folder)
    assert "Hugging Face model" in (info.value.hint or "")


def test_invalid_config_json_says_what_to_do(llama31_model: Path, tmp_path: Path) -> None:
    folder = linked_copy(llama31_model, tmp_path / "m")
    (folder / "config.json").write_text('{"architectures": ["LlamaForCausalLM"],')
    with pytest.raises(SourceModelError, match="is not valid JSON") as info:
        load_source(folder)
    assert info.value.hint


def test_invalid_config_json_is_a_source_error(llama31_model: Path, tmp_path: Path) -> None:
    folder = linked_copy(llama31_model, tmp_path / "m")
    (folder / "config.json").write_text('{"architectures": ["LlamaForCausalLM"],')
    with pytest.raises(SourceModelError, match=r"config\.json is not valid JSON"):
        load_source(folder)


def test_truncated_shard(llama31_model: Path, tmp_path: Path) -> None:
    folder = linked_copy(llama31_model, tmp_path / "m")
    shard = folder / "model-00002-of-00002.safetensors"
    head = (llama31_model / shard.name).open("rb").read(1 << 20)  # the first MiB only
    shard.unlink()
    shard.write_bytes(head)
    with pytest.raises(SourceModelError, match="not a complete safetensors file") as info:
        load_source(folder)
    assert shard.name in str(info.value)
    assert "download this file again" in str(info.value)


def test_shard_cut_inside_its_header(llama31_model: Path, tmp_path: Path) -> None:
    folder = linked_copy(llama31_model, tmp_path / "m")
    shard = folder / "model-00001-of-00002.safetensors"
    head = (llama31_model / shard.name).open("rb").read(100)
    shard.unlink()
    shard.write_bytes(head)
    with pytest.raises(SourceModelError, match="not a complete safetensors file"):
        load_source(folder)


def test_missing_shard_named_by_the_index(llama31_model: Path, tmp_path: Path) -> None:
    folder = linked_copy(llama31_model, tmp_path / "m", skip=("model-00002-of-00002.safetensors",))
    with pytest.raises(SourceModelError, match="model-00002-of-00002.safetensors") as info:
        load_source(folder)
    assert "all shards" in str(info.value)


def test_remote_code_needs_opt_in(llama31_model: Path, tmp_path: Path) -> None:
    folder = linked_copy(llama31_model, tmp_path / "m")
    _edit_config(folder, auto_map={"AutoModelForCausalLM": "modeling_x.XForCausalLM"})
    with pytest.raises(UnsafeSourceError, match="remote code") as info:
        load_source(folder)
    assert "--trust-remote-code" in str(info.value)
    assert load_source(folder, trust_remote_code=True).geometry.num_layers == 4


def _pickle_only_copy(llama31_model: Path, dest: Path) -> Path:
    shards = ("model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors",
              "model.safetensors.index.json")  # fmt: skip
    folder = linked_copy(llama31_model, dest, skip=shards)
    (folder / "pytorch_model.bin").write_bytes(b"\x80\x04not really a pickle")
    return folder


def test_pickled_weights_need_opt_in(
    llama31_model: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("QUANTKIT_CACHE", str(tmp_path / "cache"))
    folder = _pickle_only_copy(llama31_model, tmp_path / "m")
    with pytest.raises(UnsafeSourceError, match="only pickled weights") as info:
        load_source(folder)
    assert "--allow-pickle" in str(info.value) and "safetensors" in str(info.value)
    assert not (tmp_path / "cache").exists()  # refused before anything was read or written


def test_corrupt_pickle_with_opt_in_is_a_source_error(
    llama31_model: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("QUANTKIT_CACHE", str(tmp_path / "cache"))
    folder = _pickle_only_copy(llama31_model, tmp_path / "m")
    with pytest.raises(SourceModelError, match="pytorch_model.bin"):
        load_source(folder, allow_pickle=True)


def test_unknown_architecture(llama31_model: Path, tmp_path: Path) -> None:
    folder = linked_copy(llama31_model, tmp_path / "m")
    _edit_config(folder, architectures=["GPTNeoXForCausalLM"])
    with pytest.raises(UnsupportedArchitectureError, match="GPTNeoXForCausalLM") as info:
        load_source(folder)
    assert "LlamaForCausalLM" in str(info.value) and "Qwen3ForCausalLM" in str(info.value)
    assert load_source(folder, require_architecture=False).geometry.architecture == (
        "GPTNeoXForCausalLM"
    )


def test_path_that_is_a_file(llama31_model: Path) -> None:
    with pytest.raises(SourceModelError, match="is a file, not a model folder"):
        load_source(llama31_model / "config.json")


def test_path_that_does_not_exist(tmp_path: Path) -> None:
    with pytest.raises(SourceModelError, match="neither an existing folder nor a Hub repo id"):
        load_source(tmp_path / "nope" / "deeper")


def test_every_refusal_is_a_quantkit_error_with_an_exit_code() -> None:
    for cls in (SourceModelError, UnsafeSourceError, UnsupportedArchitectureError):
        assert issubclass(cls, QuantkitError) and cls.exit_code != 0


def test_hub_id_offline_with_empty_cache_is_a_clear_error(tmp_path: Path) -> None:
    """Run in a fresh interpreter: huggingface_hub reads HF_HUB_OFFLINE at import."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf"),
           "PYTHONPATH": str(REPO_ROOT)}  # fmt: skip
    env.pop("HF_TOKEN", None)
    code = (
        "from quantkit.errors import QuantkitError\n"
        "from quantkit.source.model import load_source\n"
        "try:\n"
        "    load_source('NousResearch/Hermes-3-Llama-3.1-8B')\n"
        "except QuantkitError as exc:\n"
        "    print(type(exc).__name__ + ': ' + str(exc))\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120,
        cwd=tmp_path,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr
    out = proc.stdout.strip()
    assert out.startswith("SourceModelError: "), out
    assert "NousResearch/Hermes-3-Llama-3.1-8B" in out and "cache" in out
    assert "pass its folder" in out  # says what to do
