"""The planner on the mission's cases and the `quantkit plan` / `profiles` commands.

Models are the real Llama-3.1 / Qwen3 configs from quantkit.planning.hermes_family (sources
there)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import typer
from support import REPO_ROOT
from typer.testing import CliRunner

from quantkit.errors import PlanError, SourceModelError
from quantkit.planning import fit as fitting
from quantkit.planning.hermes_family import LLAMA31_8B, LLAMA31_70B, LLAMA31_405B, QWEN3_14B
from quantkit.planning.model_spec import spec_from_config
from quantkit.planning.planner import best_plan, ensure_fits, load_spec, make_plan, plan_model
from quantkit.planning.profiles import list_profiles, load_profile

GB = 1e9
L8 = spec_from_config(LLAMA31_8B, "Hermes-3-Llama-3.1-8B")
L70 = spec_from_config(LLAMA31_70B, "Hermes-4-70B")
L405 = spec_from_config(LLAMA31_405B, "Hermes-4-405B")
Q14 = spec_from_config(QWEN3_14B, "Hermes-4-14B")


def plan(spec, profile, context=None, **kw):
    return make_plan(spec, load_profile(profile), context, others=list_profiles(), **kw)


def test_70b_fp16_needs_two_a100s():
    two = plan(L70, "a100x2-fp16")
    assert two.fit == "full"
    assert two.weights_bytes == 141_107_412_992
    assert "--tensor-parallel-size 2" in two.command
    assert "--tool-call-parser hermes" in two.command
    one_gpu = make_plan(L70, _single(load_profile("a100x2-fp16")), 8192, others=list_profiles())
    assert one_gpu.fit == "none"


def test_vllm_command_asks_for_the_reasoning_parser_when_the_templates_think():
    """Hermes 4's templates use <think>: vLLM then returns the thought in `reasoning`
    (docs/gpu.md ran it). Hermes 3's do not, and vLLM's reasoning parsers refuse to start
    on a vocabulary without the tags, so the command leaves it out."""
    import dataclasses

    assert "--reasoning-parser" not in plan(L70, "a100-fp8").command
    template = "{% if thinking %}<think>{% endif %}{{ messages[0]['content'] }}"
    hermes4 = dataclasses.replace(L70, chat_templates={"default": template})
    assert "--reasoning-parser deepseek_r1" in plan(hermes4, "a100-fp8").command


def _single(profile):
    import dataclasses

    return dataclasses.replace(
        profile, name="a100-bf16", devices_per_node=1, tensor_parallel=1, pipeline_parallel=1
    )


def test_70b_fp8_fits_one_a100_with_a_bounded_context():
    p = plan(L70, "a100-fp8")
    assert p.fit == "full"
    assert 70 * GB < p.weights_bytes < 75 * GB
    # ~68 GiB of weights in 76 GiB (0.95 x 80): room for ~15K tokens of 320 KiB each.
    assert 8192 <= p.max_context < 32768
    assert f"--max-model-len {p.context}" in p.command
    too_long = plan(L70, "a100-fp8", context=p.max_context + 4096)
    assert too_long.fit == "none"
    assert any("weight-only" in note for note in p.notes)


def test_70b_q4_k_m_does_not_fit_a_4090_and_gets_a_split():
    p = plan(L70, "rtx4090-4bit")
    assert abs(p.weights_bytes - 42.5 * GB) < 0.5 * GB
    assert p.fit == "partial"
    assert 30 <= p.gpu_layers < 80  # 24 GB holds roughly half of the 80 layers
    assert f"-ngl {p.gpu_layers}" in p.command
    # Recommends smaller siblings that run fully on the card.
    assert any("8B" in m for m in p.smaller_models)
    assert any("14B" in m for m in p.smaller_models)
    # ... and a profile where the 70B fits fully.
    assert plan(L70, p.recommended_profile).fit == "full"
    d = p.to_dict()
    assert d["fit"] == "partial" and d["gpu_layers"] == p.gpu_layers


def test_partial_split_puts_the_rest_in_system_ram():
    profile = load_profile("rtx4090-4bit")
    result = fitting.evaluate(L70, profile, 8192)
    assert result.weights_gpu + result.weights_cpu == pytest.approx(42.5 * GB, rel=0.01)
    assert result.weights_cpu > 15 * GB  # layers left on the CPU plus the embeddings
    assert result.device_need <= result.device_budget
    # One more layer on the GPU would not fit.
    from quantkit.planning import memory as mem

    layout = mem.gguf_layout(L70, "Q4_K_M")
    kv_layer = mem.kv_cache_bytes(L70.geometry, 8192, layers=1)
    more = layout.gpu_bytes(result.gpu_layers + 1) + kv_layer * (result.gpu_layers + 1)
    assert more + mem.CUDA_CONTEXT_BYTES > profile.usable_bytes - mem.llama_cpp_compute_bytes(
        L70.geometry, 8192, with_output=False
    )


def test_8b_and_14b_fit_a_4090_fully():
    for spec in (L8, Q14):
        p = plan(spec, "rtx4090-4bit")
        assert p.fit == "full"
        assert p.gpu_layers == spec.geometry.num_layers + 1  # output head offloaded too


def test_405b_does_not_fit_one_a100():
    p = plan(L405, "a100-fp8")
    assert p.fit == "none"
    assert p.command is None and p.max_context == 0
    assert p.recommended_profile == "h100x8-fp8"
    with pytest.raises(PlanError, match="does not fit profile a100-fp8"):
        ensure_fits(p)
    ensure_fits(p, force=True)  # --force lets convert go on


def test_405b_multi_gpu_profiles():
    fp8 = plan(L405, "h100x8-fp8")
    assert fp8.fit == "full" and "--tensor-parallel-size 8" in fp8.command
    bf16 = plan(L405, "h100x16-bf16")
    assert bf16.fit == "full"
    assert "--pipeline-parallel-size 2" in bf16.command
    assert "--distributed-executor-backend ray" in bf16.command
    assert "ray start --head" in bf16.command


def test_ollama_profile_writes_a_modelfile():
    p = plan(L8, "rtx3060-ollama")
    assert p.fit == "full"
    assert p.modelfile.startswith("FROM ./Hermes-3-Llama-3.1-8B-Q4_K_M.gguf")
    assert "PARAMETER num_ctx 8192" in p.modelfile
    assert p.command.startswith("ollama create")


def test_cpu_and_mac_profiles():
    cpu = plan(L8, "cpu-64gb")
    assert cpu.fit == "full" and cpu.gpu_layers == 0
    assert "-ctk q8_0 -ctv q8_0" in cpu.command
    mac = plan(L70, "mac-m3max-128gb")
    assert mac.fit == "full"  # 42.5 GB in ~96 GB usable unified memory
    assert plan(L405, "mac-m3max-128gb").fit == "none"


def test_max_context_is_the_edge_of_the_verdict():
    p = plan(L70, "rtx6000ada-4bit")
    assert p.fit == "full"
    profile = load_profile("rtx6000ada-4bit")
    assert fitting.evaluate(L70, profile, p.max_context).fit == "full"
    assert fitting.evaluate(L70, profile, p.max_context + 256).fit != "full"


def test_context_past_model_maximum_is_capped():
    p = plan(Q14, "h200-fp8", context=1_000_000)
    assert p.context == 40960
    assert any("past the model's maximum" in n for n in p.notes)


def test_best_plan_prefers_full_gpu_fit_on_least_hardware():
    plans = [plan(L70, p.name, suggest_smaller=False) for p in list_profiles()]
    best = best_plan(plans)
    assert best.fit == "full" and best.device_kind == "gpu"
    assert best.devices * best.device_budget_bytes <= 50 * 2**30  # a 48 GB card


def test_load_spec_from_folder_config_and_hub_offline(tmp_path, monkeypatch):
    (tmp_path / "config.json").write_text(json.dumps(LLAMA31_8B))
    spec = load_spec(str(tmp_path))
    assert spec.inventory == "config" and spec.parameter_count == 8_030_261_248
    assert load_spec(str(tmp_path / "config.json")).parameter_count == 8_030_261_248
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    import importlib

    import huggingface_hub.constants as hc

    importlib.reload(hc)
    try:
        with pytest.raises(SourceModelError, match="Hub"):
            load_spec("NousResearch/Hermes-3-Llama-3.1-8B")
    finally:
        monkeypatch.delenv("HF_HUB_OFFLINE")
        importlib.reload(hc)


def test_real_inventory_from_a_local_folder(demo_model):
    plans = plan_model(str(demo_model), "rtx4090-4bit")
    assert plans[0].inventory == "safetensors"
    assert plans[0].fit == "full"
    assert any("not a multiple of 256" in n for n in plans[0].notes)


def test_llama_server_command_says_where_the_thought_goes(demo_model, tmp_path):
    """The demo's templates have no enable_thinking switch: llama-server parses no
    reasoning for them, so the run command says --reasoning-format none and a note says
    what to pass. A template with the switch gets neither; vLLM plans neither."""
    import shutil

    from quantkit.formats.chat_template import LLAMA_SERVER_NO_REASONING

    plan = plan_model(str(demo_model), "rtx4090-4bit")[0]
    assert plan.command.endswith("--jinja --reasoning-format none")
    assert LLAMA_SERVER_NO_REASONING in plan.notes
    switched = tmp_path / "switched"
    shutil.copytree(demo_model, switched, ignore=shutil.ignore_patterns("*.safetensors"))
    for f in (demo_model).glob("*.safetensors"):
        (switched / f.name).symlink_to(f)
    jinja = switched / "chat_template.jinja"
    jinja.write_text("{%- set t = enable_thinking | default(true) %}" + jinja.read_text())
    plan = plan_model(str(switched), "rtx4090-4bit")[0]
    assert plan.command.endswith("--jinja") and LLAMA_SERVER_NO_REASONING not in plan.notes
    vllm = plan_model(str(demo_model), "a100-fp8")[0]
    assert "--reasoning-format" not in (vllm.command or "")
    assert LLAMA_SERVER_NO_REASONING not in vllm.notes


def _app() -> typer.Typer:
    from quantkit.cli import plan_cmd, profiles_cmd

    app = typer.Typer()
    plan_cmd.register(app)
    profiles_cmd.register(app)
    return app


def test_cli_plan_json(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps(LLAMA31_70B))
    result = CliRunner().invoke(
        _app(), ["plan", str(tmp_path), "--profile", "rtx4090-4bit", "--json"]
    )
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    for key in ("fit", "weights_bytes", "kv_cache_bytes", "total_bytes", "gpu_layers",
                "max_context", "format", "quant", "command"):  # fmt: skip
        assert key in data
    assert data["fit"] == "partial" and data["format"] == "gguf"
    assert data["kv_cache_bytes"] == 2_684_354_560  # 8192 tokens x 320 KiB


def test_cli_plan_all_table_and_profiles(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps(LLAMA31_8B))
    table = CliRunner().invoke(_app(), ["plan", str(tmp_path), "--all", "--context", "4096"])
    assert table.exit_code == 0, table.output
    # The least hardware that holds the 8B fully: the 12 GB card, through Ollama.
    assert "Recommended: rtx3060-ollama" in table.output
    assert "ollama create" in table.output and "PARAMETER num_ctx 4096" in table.output
    listing = CliRunner().invoke(_app(), ["profiles", "--json"])
    names = [p["name"] for p in json.loads(listing.stdout)["profiles"]]
    assert "a100x2-fp16" in names and "mac-m3max-128gb" in names


def test_plan_imports_no_heavy_library():
    code = (
        "import sys; import quantkit.cli.plan_cmd, quantkit.cli.profiles_cmd;"
        "import quantkit.planning.planner;"
        "heavy = [m for m in ('torch', 'llama_cpp', 'transformers', 'gguf') if m in sys.modules];"
        "print(heavy)"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO_ROOT
    )
    assert out.stdout.strip() == "[]", out.stderr
