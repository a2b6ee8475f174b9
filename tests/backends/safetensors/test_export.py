"""BF16/FP16 safetensors folders: shard plan, streamed writer, index, FP16 range refusal,
artifact files (tokenizer, templates, generation config) and preflight refusals."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file

from quantkit.artifact.tokenizer_files import chat_template_value
from quantkit.backends.safetensors.backend import (
    GroupSizeError,
    check_group_size,
    estimate_bytes,
    make_safetensors,
    needs_calibration,
    preflight,
)
from quantkit.backends.safetensors.export import FP16RangeError, export_safetensors, plan_shards
from quantkit.errors import ConversionError
from quantkit.formats.safetensors_index import TensorInfo, read_header
from quantkit.inspection.vllm_checks import NAMES as VLLM_NAMES
from quantkit.pipeline import artifact_checks
from quantkit.source.model import load_source

TINY_CONFIG = {
    "architectures": ["LlamaForCausalLM"],
    "model_type": "llama",
    "hidden_size": 64,
    "intermediate_size": 128,
    "num_hidden_layers": 1,
    "num_attention_heads": 2,
    "num_key_value_heads": 1,
    "vocab_size": 32,
    "torch_dtype": "float32",
}


def _tiny_model(folder: Path, big: float = 0.5) -> Path:
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps(TINY_CONFIG))
    g = torch.Generator().manual_seed(0)
    tensors = {
        "model.embed_tokens.weight": torch.randn(32, 64, generator=g),
        "model.layers.0.mlp.down_proj.weight": torch.randn(64, 128, generator=g),
        "model.layers.0.mlp.up_proj.weight": torch.randn(128, 64, generator=g),
        "model.norm.weight": torch.ones(64),
        "lm_head.weight": torch.randn(32, 64, generator=g),
    }
    tensors["model.layers.0.mlp.up_proj.weight"][3, 5] = big
    tensors["lm_head.weight"][0, 0] = -big
    save_file(tensors, str(folder / "model.safetensors"))
    return folder


def _all_tensors(folder: Path) -> dict[str, torch.Tensor]:
    out = {}
    for path in sorted(folder.glob("*.safetensors")):
        with safe_open(str(path), framework="pt") as fh:
            out.update({k: fh.get_tensor(k) for k in fh.keys()})  # noqa: SIM118
    return out


def test_shard_plan_hub_order_and_sizes() -> None:
    infos = [
        TensorInfo("lm_head.weight", "BF16", (100, 10), "a", 2000),
        TensorInfo("model.layers.10.w.weight", "BF16", (10, 10), "a", 200),
        TensorInfo("model.layers.9.w.weight", "BF16", (10, 10), "a", 200),
        TensorInfo("model.embed_tokens.weight", "F32", (100, 10), "a", 4000),
        TensorInfo("model.norm.weight", "BF16", (10,), "a", 20),
    ]
    shards = plan_shards(infos, "BF16", max_shard_size=450)
    order = [t.name for s in shards for t in s.tensors]
    assert order == [
        "model.embed_tokens.weight",  # embeddings first
        "model.layers.9.w.weight",  # layers numerically
        "model.layers.10.w.weight",
        "model.norm.weight",
        "lm_head.weight",  # head last
    ]
    # A tensor larger than the limit gets a shard of its own; F32 is planned as 2 bytes.
    assert [s.nbytes for s in shards] == [2000, 420, 2000]
    assert [s.file for s in shards][0] == "model-00001-of-00003.safetensors"
    assert plan_shards(infos, "FP16")[0].file == "model.safetensors"


def test_bf16_shards_index_and_exact_copy(llama31_model: Path, tmp_path: Path) -> None:
    source = load_source(llama31_model)
    paths = export_safetensors(source, tmp_path, "BF16", max_shard_size=40 * 10**6)
    assert len(paths) > 2 and (tmp_path / "model.safetensors.index.json").is_file()
    index = json.loads((tmp_path / "model.safetensors.index.json").read_text())
    tensor_bytes = 0
    for path in paths:
        header, start = read_header(path)
        offsets = [v["data_offsets"] for k, v in header.items() if k != "__metadata__"]
        tensor_bytes += sum(end - begin for begin, end in offsets)
        assert start % 8 == 0 and path.stat().st_size == start + max(e for _, e in offsets)
    assert index["metadata"]["total_size"] == tensor_bytes == source.weight_bytes
    assert set(index["weight_map"]) == {t.name for t in source.tensors}
    ours, theirs = _all_tensors(tmp_path), _all_tensors(llama31_model)
    for name, tensor in theirs.items():
        assert torch.equal(ours[name], tensor.to(torch.bfloat16)), name
        assert index["weight_map"][name] in {p.name for p in paths}


def test_fp16_refuses_out_of_range_weights(tmp_path: Path) -> None:
    source = load_source(_tiny_model(tmp_path / "src", big=1e5))
    work = tmp_path / "out"
    work.mkdir()
    with pytest.raises(FP16RangeError) as err:
        export_safetensors(source, work, "FP16")
    message = str(err.value)
    assert "model.layers.0.mlp.up_proj.weight (max |w| 100000)" in message
    assert "lm_head.weight (max |w| 100000)" in message and "--force" in message
    assert not list(work.glob("*.safetensors"))  # nothing half-written is left


def test_fp16_forced_is_clamped_not_inf(tmp_path: Path) -> None:
    source = load_source(_tiny_model(tmp_path / "src", big=1e5))
    work = tmp_path / "out"
    work.mkdir()
    export_safetensors(source, work, "FP16", force=True)
    tensors = _all_tensors(work)
    assert all(t.dtype == torch.float16 and torch.isfinite(t).all() for t in tensors.values())
    assert float(tensors["model.layers.0.mlp.up_proj.weight"][3, 5]) == 65504.0
    assert float(tensors["lm_head.weight"][0, 0]) == -65504.0


def test_fp16_in_range_is_exact(tmp_path: Path) -> None:
    source = load_source(_tiny_model(tmp_path / "src"))
    work = tmp_path / "out"
    work.mkdir()
    export_safetensors(source, work, "FP16")
    ours, theirs = _all_tensors(work), _all_tensors(tmp_path / "src")
    assert all(torch.equal(ours[k], v.to(torch.float16)) for k, v in theirs.items())


@pytest.mark.slow
def test_demo_bf16_folder_loads_and_keeps_templates(demo_model: Path, tmp_path: Path) -> None:
    source = load_source(demo_model)
    built = make_safetensors(source, "safetensors", "BF16", tmp_path)
    files, checks = built.files, [c.to_dict() for c in artifact_checks(built, source)]
    # Every check that ran passed; vLLM's round trip needs a GPU and is skipped here.
    ran = [c for c in checks if not c.get("skipped")]
    assert all(c["passed"] for c in ran), checks
    assert {c["name"] for c in checks if c.get("skipped")} == set(VLLM_NAMES)
    names = {f["name"]: f for f in files}
    assert names["model.safetensors"]["tensor_types"] == {"BF16": 272}
    assert "additional_chat_templates/tool_use.jinja" in names
    for name in (
        "tokenizer.json",
        "chat_template.jinja",
        "additional_chat_templates/tool_use.jinja",
    ):
        assert (tmp_path / name).read_bytes() == (demo_model / name).read_bytes()
    tok_config = json.loads((tmp_path / "tokenizer_config.json").read_text())
    assert [t["name"] for t in tok_config["chat_template"]] == ["default", "tool_use"]
    assert json.loads((tmp_path / "generation_config.json").read_text())["eos_token_id"][0] == 2
    config = json.loads((tmp_path / "config.json").read_text())
    assert config["torch_dtype"] == "bfloat16" and "quantization_config" not in config


@pytest.mark.slow
def test_llama31_fp16_eos_is_eot_and_logits_match(llama31_model: Path, tmp_path: Path) -> None:
    from transformers import AutoModelForCausalLM

    source = load_source(llama31_model)
    make_safetensors(source, "safetensors", "FP16", tmp_path, verify=False)
    generation = json.loads((tmp_path / "generation_config.json").read_text())
    assert generation["eos_token_id"] == [128009, 128001, 128008]  # <|eot_id|> first
    ids = torch.tensor([[128000, 9906, 1917, 13]])
    with torch.no_grad():
        ref = AutoModelForCausalLM.from_pretrained(llama31_model, dtype=torch.float32)(ids).logits
        out = AutoModelForCausalLM.from_pretrained(tmp_path, dtype=torch.float32)(ids).logits
    assert torch.allclose(ref, out, atol=2e-2, rtol=1e-2)


def test_template_value_string_or_list() -> None:
    assert chat_template_value({"default": "x"}) == "x"
    assert chat_template_value({"tool_use": "t", "default": "d"}) == [
        {"name": "default", "template": "d"},
        {"name": "tool_use", "template": "t"},
    ]
    assert chat_template_value({}) is None


def test_group_size_refused_with_layers_and_valid_sizes(demo_model: Path) -> None:
    source = load_source(demo_model)
    with pytest.raises(GroupSizeError) as err:
        check_group_size(source, 128)
    message = str(err.value)
    assert "Group size 128" in message and "576 columns" in message
    assert "self_attn.q_proj" in message and "in layers 0-29" in message
    assert "e.g. model.layers.0.mlp.gate_proj" in message
    assert "1536 columns" not in message  # down_proj (1536 = 12 x 128) is fine
    assert "Group sizes that divide every layer: 32, 64." in message
    check_group_size(source, 64)
    with pytest.raises(GroupSizeError):
        check_group_size(source, 0)


def test_preflight_refusals(demo_model: Path, llama31_model: Path, tmp_path: Path) -> None:
    source = load_source(demo_model)
    assert preflight(source, "safetensors", "f16") == ("safetensors", "FP16")
    with pytest.raises(ConversionError, match="made as FP8_DYNAMIC or FP8, not W4A16"):
        preflight(source, "fp8", "W4A16")
    with pytest.raises(ConversionError, match="needs calibration data"):
        preflight(source, "gptq", "W4A16", group_size=64)
    with pytest.raises(GroupSizeError):  # before anything heavy, even with data
        preflight(source, "gptq", "W4A16", calibration=object(), group_size=128)
    with pytest.raises(ConversionError, match="dampening"):
        preflight(source, "gptq", "W4A16", calibration=object(), group_size=64, dampening=2)
    quantized = tmp_path / "quantized"
    shutil.copytree(llama31_model, quantized)
    config = json.loads((quantized / "config.json").read_text())
    config["quantization_config"] = {"quant_method": "gptq"}
    (quantized / "config.json").write_text(json.dumps(config))
    with pytest.raises(ConversionError, match="already quantized"):
        preflight(load_source(quantized), "safetensors", "BF16")


def test_needs_calibration_and_estimates(llama31_model: Path) -> None:
    assert [needs_calibration(q) for q in ("BF16", "FP16", "FP8_DYNAMIC", "FP8", "W4A16")] == [
        False,
        False,
        False,
        True,
        True,
    ]
    source = load_source(llama31_model)
    bf16 = estimate_bytes(source, "safetensors", "BF16")
    assert bf16 == source.weight_bytes
    fp8 = estimate_bytes(source, "fp8", "FP8_DYNAMIC")
    w4 = estimate_bytes(source, "gptq", "W4A16")
    assert w4 < fp8 < bf16
    assert estimate_bytes(source, "gptq", "W4A16", gptq_format="gptq") == 2 * w4
