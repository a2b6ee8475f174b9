"""MLX in the planner: the Mac profile that offers it, its schema rules, the weight bytes
against published MLX uploads, the fit in unified memory and the mlx_lm.server command."""

from __future__ import annotations

import shlex
from pathlib import Path

import pytest

from quantkit.errors import ProfileError
from quantkit.planning import memory as mem
from quantkit.planning.hermes_family import LLAMA31_8B, LLAMA31_70B, QWEN3_14B
from quantkit.planning.model_spec import spec_from_config
from quantkit.planning.planner import make_plan, plan_model
from quantkit.planning.profiles import load_profile

MAC_MLX = "mac-m3max-128gb-mlx"


def test_the_mac_mlx_profile():
    profile = load_profile(MAC_MLX)
    assert (profile.format, profile.quant, profile.runtime) == ("mlx", "4bit", "mlx-lm")
    assert profile.kind == "unified"
    assert load_profile("mac-m3max-128gb").format == "gguf"  # the GGUF one stays


def _edited(tmp_path: Path, old: str, new: str) -> str:
    text = Path(load_profile(MAC_MLX).source).read_text()
    assert old in text
    path = tmp_path / f"{MAC_MLX}.toml"
    path.write_text(text.replace(old, new))
    return str(path)


def test_schema_rules(tmp_path: Path):
    assert load_profile(_edited(tmp_path, 'quant = "4bit"', 'quant = "4BIT"')).quant == "4bit"
    with pytest.raises(ProfileError, match="not a mlx quant"):
        load_profile(_edited(tmp_path, 'quant = "4bit"', 'quant = "Q4_K_M"'))
    with pytest.raises(ProfileError, match="cannot load mlx artifacts"):
        load_profile(_edited(tmp_path, 'runtime = "mlx-lm"', 'runtime = "llama.cpp"'))
    with pytest.raises(ProfileError, match="Apple silicon"):
        load_profile(
            _edited(tmp_path, 'kind = "unified"', 'kind = "gpu"\ncompute_capability = "8.9"')
        )


def test_4bit_weights_match_a_published_upload():
    """mlx-community/Meta-Llama-3.1-8B-Instruct-4bit (Hermes 3 8B's shape, group 64) is a
    4.52 GB model.safetensors."""
    planned = mem.mlx_weights_bytes(spec_from_config(LLAMA31_8B, "m"), "4bit")
    assert abs(planned - 4.52e9) / 4.52e9 < 0.005, planned
    assert mem.mlx_weights_bytes(spec_from_config(QWEN3_14B, "m"), "4bit") < 9e9


def test_bits_per_weight_include_scales_and_biases():
    spec = spec_from_config(LLAMA31_8B, "m")
    params = spec.parameter_count
    bpw = {q: mem.mlx_weights_bytes(spec, q) * 8 / params for q in ("4bit", "6bit", "8bit")}
    for quant, bits in (("4bit", 4.5), ("6bit", 6.5), ("8bit", 8.5)):  # + 2 x 16 / 64
        assert bpw[quant] == pytest.approx(bits, abs=0.01), quant
    assert mem.mlx_weights_bytes(spec, "BF16") == pytest.approx(params * 2, rel=0.001)
    assert 4.5 < mem.mlx_weights_bytes(spec, "mixed_4_6") * 8 / params < 6.5


def test_plan_fit_and_command():
    profile = load_profile(MAC_MLX)
    plan = make_plan(spec_from_config(LLAMA31_70B, "Hermes-3-Llama-3.1-70B"), profile)
    assert plan.fit == "full" and plan.gpu_layers is None
    assert shlex.split(plan.command) == [
        "mlx_lm.server", "--model", "./Hermes-3-Llama-3.1-70B-4bit",
    ]  # fmt: skip
    assert plan.weights_bytes == mem.mlx_weights_bytes(spec_from_config(LLAMA31_70B, "x"), "4bit")
    assert plan.total_bytes > plan.weights_bytes + plan.kv_cache_bytes
    big = dict(LLAMA31_70B, num_hidden_layers=126, hidden_size=16384, intermediate_size=53248,
               num_attention_heads=128)  # fmt: skip
    assert make_plan(spec_from_config(big, "405B"), profile).fit == "none"


def test_plan_of_the_demo_folder(demo_model: Path):
    (plan,) = plan_model(str(demo_model), MAC_MLX)
    assert plan.fit == "full" and plan.format == "mlx" and plan.quant == "4bit"
    assert plan.command.endswith("-4bit")
