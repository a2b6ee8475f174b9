"""The classic GPTQ layout (qweight/qzeros/scales/g_idx) repacked from compressed-tensors:
the packing primitives against compressed-tensors' own packer, and a real llmcompressor
W4A16 result unpacked in both layouts to the same dequantized weights."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from quantkit.backends.safetensors.gptq_classic import (
    GPTQRepackError,
    classic_module,
    dequantize_classic_module,
    dequantize_compressed_module,
    dequantize_folder,
    layouts_match_check,
    pack_nibbles,
    unpack_nibbles,
    write_classic,
)


def _compressed_module(out_features: int, in_features: int, group: int, seed: int = 0):
    """A pack-quantized Linear made with compressed-tensors' own packer."""
    from compressed_tensors.compressors.pack_quantized.helpers import pack_to_int32

    g = torch.Generator().manual_seed(seed)
    q = torch.randint(-8, 8, (out_features, in_features), generator=g, dtype=torch.int8)
    scale = (torch.rand(out_features, in_features // group, generator=g) + 0.01) / 100
    tensors = {
        "weight_packed": pack_to_int32(q, 4),
        "weight_scale": scale.to(torch.bfloat16),
        "weight_shape": torch.tensor([out_features, in_features]),
    }
    return tensors, q


def test_pack_unpack_roundtrip_both_axes() -> None:
    values = torch.randint(0, 16, (24, 40), dtype=torch.int32)
    for dim in (0, 1):
        packed = pack_nibbles(values, dim)
        assert packed.dtype == torch.int32 and packed.shape[dim] == values.shape[dim] // 8
        assert torch.equal(unpack_nibbles(packed, dim, values.shape[dim]), values)
    with pytest.raises(GPTQRepackError):
        pack_nibbles(torch.zeros(3, 5, dtype=torch.int32), 1)


def test_our_unpacker_reads_compressed_tensors_packing() -> None:
    tensors, q = _compressed_module(16, 64, 32)
    assert torch.equal(unpack_nibbles(tensors["weight_packed"], 1, 64) - 8, q.to(torch.int32))
    expected = q.float() * tensors["weight_scale"].float().repeat_interleave(32, dim=1)
    assert torch.equal(dequantize_compressed_module(tensors, 32), expected)


def test_classic_module_layout_and_dequantization() -> None:
    tensors, _ = _compressed_module(24, 128, 64, seed=1)
    classic = classic_module(tensors, 64, "m")
    assert classic["qweight"].shape == (16, 24) and classic["qweight"].dtype == torch.int32
    assert classic["qzeros"].shape == (2, 3) and classic["scales"].shape == (2, 24)
    assert classic["scales"].dtype == torch.float16
    assert torch.equal(classic["g_idx"], torch.arange(128, dtype=torch.int32) // 64)
    assert set(unpack_nibbles(classic["qzeros"], 1, 24).unique().tolist()) == {7}  # v1: 8 - 1
    assert torch.equal(
        dequantize_classic_module(classic), dequantize_compressed_module(tensors, 64)
    )
    with pytest.raises(GPTQRepackError, match="divisible"):
        classic_module(_compressed_module(20, 128, 64)[0], 64, "odd")


@pytest.fixture(scope="module")
def rtn_w4a16(demo_model: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A real llmcompressor W4A16 (group 64) compressed-tensors folder of the demo model;
    round-to-nearest, so it takes seconds: the layout is what is under test here."""
    from quantkit.backends.safetensors.compressed import quantize_model
    from quantkit.source.model import load_source

    work = tmp_path_factory.mktemp("rtn") / "ct"
    work.mkdir()
    quantize_model(load_source(demo_model), "W4A16", work, group_size=64, method="rtn")
    return work


@pytest.mark.slow
def test_repacked_folder_dequantizes_to_the_same_weights(rtn_w4a16: Path, tmp_path: Path) -> None:
    out = tmp_path / "classic"
    files = write_classic(rtn_w4a16, out, dampening=0.01)
    assert [f.name for f in files] == ["model.safetensors"]
    quantize_config = json.loads((out / "quantize_config.json").read_text())
    assert quantize_config["bits"] == 4 and quantize_config["group_size"] == 64
    assert quantize_config["desc_act"] is False and quantize_config["sym"] is True
    assert quantize_config["checkpoint_format"] == "gptq"
    config = json.loads((out / "config.json").read_text())
    assert config["quantization_config"]["quant_method"] == "gptq"
    assert config["torch_dtype"] == "float16"

    ct = dequantize_folder(rtn_w4a16, "compressed-tensors")
    classic = dequantize_folder(out, "gptq")
    assert len(ct) == 30 * 7 and set(ct) == set(classic)
    for name, weight in ct.items():
        assert torch.equal(classic[name], weight), name
    check = layouts_match_check(rtn_w4a16, out)
    assert check.passed, check.evidence


@pytest.mark.slow
def test_our_dequantization_matches_transformers_decompression(rtn_w4a16: Path) -> None:
    """compressed-tensors' own decompression (through transformers, on CPU) gives the
    weights our unpacker computes: our reading of the layout is the library's."""
    from transformers import AutoModelForCausalLM, CompressedTensorsConfig

    ours = dequantize_folder(rtn_w4a16, "compressed-tensors")
    model = AutoModelForCausalLM.from_pretrained(
        rtn_w4a16, device_map=None, quantization_config=CompressedTensorsConfig(dequantize=True)
    )
    modules = dict(model.named_modules())
    for name in ("model.layers.0.self_attn.q_proj", "model.layers.29.mlp.down_proj"):
        weight = modules[name].weight.detach().float()
        assert torch.allclose(weight, ours[name], rtol=1e-2, atol=1e-6), name
