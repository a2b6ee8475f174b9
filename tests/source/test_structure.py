"""A source model's structure checked before any weight is read
(quantkit.source.structure): each test breaks one thing in a copy of a real fixture model
(a tensor dropped or added, a shape or a config value changed, the index out of step with
the shards) and expects a SourceModelError naming what is wrong and what was expected,
with nothing written at --out.

The copies symlink the fixture's weights; a shard whose header a test changes is written
anew as a sparse file (tests/support/broken_models.py)."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest
from support.broken_models import convert_refused, edit_json, edit_shard, linked_copy, raw_header
from support.cli_runner import run_cli

import quantkit
from quantkit.errors import SourceModelError
from quantkit.planning.model_spec import derived_tensors as planner_list
from quantkit.source.model import load_source
from quantkit.source.structure import check_structure, derived_tensors, expected_shapes

DEMO_SHARD = "model.safetensors"
LLAMA_SHARD1, LLAMA_SHARD2 = "model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors"
K0 = "model.layers.0.self_attn.k_proj.weight"


@pytest.fixture
def demo_copy(demo_model: Path, tmp_path: Path) -> Path:
    return linked_copy(demo_model, tmp_path / "demo")


@pytest.fixture
def llama_copy(llama31_model: Path, tmp_path: Path) -> Path:
    return linked_copy(llama31_model, tmp_path / "llama")


# --- whole models pass ------------------------------------------------------------------------


@pytest.mark.parametrize(
    "fixture", ["demo_model", "llama31_model", "llama31_model_tf4_config", "qwen3_model"]
)
def test_the_fixture_models_are_whole(fixture: str, request: pytest.FixtureRequest) -> None:
    source = load_source(request.getfixturevalue(fixture))
    check_structure(source)
    assert {t.name for t in source.tensors} == set(expected_shapes(source))


def test_the_planner_sizes_config_only_models_with_the_same_list(qwen3_model: Path) -> None:
    """One list of what a config implies: the planner's derived inventory is this one."""
    geometry = load_source(qwen3_model).geometry
    assert planner_list is derived_tensors
    assert any(t.name.endswith("q_norm.weight") for t in derived_tensors(geometry))


# --- tensors missing, misshapen or unexpected ------------------------------------------------


def test_a_dropped_tensor_is_named(demo_copy: Path, tmp_path: Path) -> None:
    edit_shard(demo_copy / DEMO_SHARD, lambda h: h.pop("model.layers.3.mlp.up_proj.weight"))
    message = convert_refused(
        demo_copy, tmp_path, "missing tensors: model.layers.3.mlp.up_proj.weight."
    )
    assert "30 layers, hidden 576, 9 heads, 3 KV heads of 64, vocabulary 49160" in message
    assert "download the model again" in message


def test_eval_refuses_a_source_missing_a_tensor(demo_copy: Path) -> None:
    """transformers would fill the missing weight with random values and only warn, and
    the reference logits would be noise: quantkit eval refuses the folder instead."""
    edit_shard(demo_copy / DEMO_SHARD, lambda h: h.pop("model.layers.3.mlp.up_proj.weight"))
    with pytest.raises(SourceModelError, match="missing tensors: model.layers.3.mlp.up_proj"):
        quantkit.evaluate(demo_copy, demo_copy, max_chunks=1)


def test_a_changed_shape_says_what_the_config_implies(demo_copy: Path, tmp_path: Path) -> None:
    def two_kv_heads(h: dict[str, Any]) -> None:
        h[K0]["shape"] = [128, 576]

    edit_shard(demo_copy / DEMO_SHARD, two_kv_heads)
    convert_refused(
        demo_copy, tmp_path, f"wrong shapes: {K0} is [128, 576], config.json implies [192, 576]"
    )


def test_an_extra_tensor_is_named(demo_copy: Path, tmp_path: Path) -> None:
    def extra(h: dict[str, Any]) -> None:
        h["model.layers.0.mlp.extra_proj.weight"] = {"dtype": "BF16", "shape": [8, 576]}

    edit_shard(demo_copy / DEMO_SHARD, extra)
    convert_refused(
        demo_copy, tmp_path,
        "unexpected tensors (not part of LlamaForCausalLM): model.layers.0.mlp.extra_proj.weight",
    )  # fmt: skip


def test_fewer_layers_in_the_config_than_in_the_shards(demo_copy: Path, tmp_path: Path) -> None:
    edit_json(demo_copy / "config.json", lambda c: c.update(num_hidden_layers=29))
    message = convert_refused(
        demo_copy, tmp_path,
        "unexpected tensors (not part of LlamaForCausalLM): model.layers.29.input_layernorm",
        "The shards hold 30 layers, config.json says num_hidden_layers: 29",
    )  # fmt: skip
    assert "(and 3 more)" in message  # 9 tensors a layer: 6 named, the rest counted


def test_more_layers_in_the_config_than_in_the_shards(demo_copy: Path, tmp_path: Path) -> None:
    edit_json(demo_copy / "config.json", lambda c: c.update(num_hidden_layers=32))
    convert_refused(
        demo_copy, tmp_path, "missing tensors: model.layers.30.input_layernorm.weight",
        "(and 12 more)", "The shards hold 30 layers, config.json says num_hidden_layers: 32",
    )  # fmt: skip


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        ({"num_key_value_heads": 1}, f"{K0} is [192, 576], config.json implies [64, 576]"),
        ({"num_attention_heads": 18, "head_dim": 32},
         f"{K0} is [192, 576], config.json implies [96, 576]"),
        ({"intermediate_size": 1024},
         "model.layers.0.mlp.gate_proj.weight is [1536, 576], config.json implies [1024, 576]"),
        ({"vocab_size": 49152},
         "model.embed_tokens.weight is [49160, 576], config.json implies [49152, 576]"),
    ],
    ids=["kv-heads", "heads-and-head-dim", "intermediate", "vocabulary"],
)  # fmt: skip
def test_a_config_that_does_not_fit_the_weights(
    demo_copy: Path, tmp_path: Path, change: dict[str, Any], expected: str
) -> None:
    edit_json(demo_copy / "config.json", lambda c: c.update(change))
    convert_refused(demo_copy, tmp_path, "wrong shapes: ", expected)


def test_untied_config_without_an_output_head(demo_copy: Path, tmp_path: Path) -> None:
    edit_json(demo_copy / "config.json", lambda c: c.update(tie_word_embeddings=False))
    convert_refused(demo_copy, tmp_path, "missing tensors: lm_head.weight.")


def test_tied_config_with_an_output_head(llama_copy: Path, tmp_path: Path) -> None:
    edit_json(llama_copy / "config.json", lambda c: c.update(tie_word_embeddings=True))
    convert_refused(
        llama_copy, tmp_path,
        "lm_head.weight is stored, but config.json says tie_word_embeddings: true",
    )  # fmt: skip


def test_qwen3_needs_its_per_head_norms(qwen3_model: Path, tmp_path: Path) -> None:
    folder = linked_copy(qwen3_model, tmp_path / "qwen3")
    edit_shard(folder / DEMO_SHARD, lambda h: h.pop("model.layers.1.self_attn.k_norm.weight"))
    convert_refused(
        folder,
        tmp_path,
        "Qwen3ForCausalLM",
        "missing tensors: model.layers.1.self_attn.k_norm.weight.",
    )


def test_attention_bias_in_the_config_needs_the_biases(demo_copy: Path, tmp_path: Path) -> None:
    edit_json(demo_copy / "config.json", lambda c: c.update(attention_bias=True))
    convert_refused(
        demo_copy, tmp_path, "missing tensors: model.layers.0.self_attn.q_proj.bias, "
        "model.layers.0.self_attn.k_proj.bias",
    )  # fmt: skip


def test_rotary_buffers_are_not_unexpected(demo_copy: Path) -> None:
    """Old exports carry rotary_emb.inv_freq; every converter drops it."""

    def buffer(h: dict[str, Any]) -> None:
        h["model.layers.0.self_attn.rotary_emb.inv_freq"] = {"dtype": "F32", "shape": [32]}

    edit_shard(demo_copy / DEMO_SHARD, buffer)
    check_structure(load_source(demo_copy))


def test_what_is_not_checked(demo_copy: Path) -> None:
    """An architecture quantkit does not convert has no list to check against (plan still
    sizes it); an already-quantized checkpoint is refused by the backends, by name."""
    edit_json(demo_copy / "config.json", lambda c: c.update(num_hidden_layers=2))
    edit_json(demo_copy / "config.json", lambda c: c.update(architectures=["MistralForCausalLM"]))
    check_structure(load_source(demo_copy, require_architecture=False))
    fp8 = {"architectures": ["LlamaForCausalLM"], "quantization_config": {"quant_method": "fp8"}}
    edit_json(demo_copy / "config.json", lambda c: c.update(fp8))
    check_structure(load_source(demo_copy))


# --- the index and the shards --------------------------------------------------------------------


def test_a_missing_shard_fails_in_seconds_naming_it(llama31_model: Path, tmp_path: Path) -> None:
    folder = linked_copy(llama31_model, tmp_path / "llama", skip=(LLAMA_SHARD2,))
    started = time.monotonic()
    convert_refused(folder, tmp_path, f"names shards that are missing: {LLAMA_SHARD2}")
    assert time.monotonic() - started < 10


def test_a_tensor_the_index_lists_but_no_shard_holds(llama_copy: Path, tmp_path: Path) -> None:
    edit_shard(llama_copy / LLAMA_SHARD2, lambda h: h.pop("lm_head.weight"))
    convert_refused(
        llama_copy, tmp_path, "model.safetensors.index.json does not match the shards: tensors "
        f"the index lists but no shard holds: lm_head.weight (in {LLAMA_SHARD2})",
    )  # fmt: skip


def test_a_tensor_in_another_shard_than_the_index_says(llama_copy: Path, tmp_path: Path) -> None:
    def move(weight_map: dict[str, Any]) -> None:
        weight_map["weight_map"]["model.embed_tokens.weight"] = LLAMA_SHARD2

    edit_json(llama_copy / "model.safetensors.index.json", move)
    convert_refused(
        llama_copy, tmp_path, "tensors in another shard than the index says: "
        f"model.embed_tokens.weight (index: {LLAMA_SHARD2}, found in {LLAMA_SHARD1})",
    )  # fmt: skip


def test_a_tensor_the_index_does_not_list(llama_copy: Path, tmp_path: Path) -> None:
    edit_json(llama_copy / "model.safetensors.index.json",
              lambda i: i["weight_map"].pop("model.norm.weight"))  # fmt: skip
    shard = next(
        s for s in (LLAMA_SHARD1, LLAMA_SHARD2) if "model.norm.weight" in raw_header(llama_copy / s)
    )
    convert_refused(
        llama_copy, tmp_path,
        f"tensors in a shard but not in the index: model.norm.weight (in {shard})",
    )  # fmt: skip


def test_a_tensor_stored_in_two_shards(llama_copy: Path, tmp_path: Path) -> None:
    def copy_embedding(h: dict[str, Any]) -> None:
        h["model.embed_tokens.weight"] = raw_header(llama_copy / LLAMA_SHARD1)[
            "model.embed_tokens.weight"
        ]

    edit_shard(llama_copy / LLAMA_SHARD2, copy_embedding)
    convert_refused(llama_copy, tmp_path, "tensors stored in two shards: model.embed_tokens.weight")


# --- the user's view ------------------------------------------------------------------------------


def test_the_cli_prints_one_line_and_exits_3(demo_copy: Path, tmp_path: Path) -> None:
    edit_shard(demo_copy / DEMO_SHARD, lambda h: h.pop("model.norm.weight"))
    out = tmp_path / "out"
    proc = run_cli("convert", demo_copy, "--out", out, "--format", "gguf", "--quant", "Q8_0")
    assert proc.returncode == 3, proc.stderr
    assert "Traceback" not in proc.stderr
    assert "missing tensors: model.norm.weight" in proc.stderr
    assert not out.exists() and not out.with_name("out.partial").exists()
