"""The MLX backend: refusals before any weight is read, then real conversions of the demo
model and the Llama-3.1-shaped fixture through quantkit.convert, loaded back in mlx-lm."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

import quantkit
from quantkit.backends import BuildOptions, backend_for
from quantkit.backends.gguf.options import GGUFOptions
from quantkit.backends.mlx.backend import estimate_bytes, preflight
from quantkit.backends.mlx.options import MLXOptions
from quantkit.backends.safetensors.options import GPTQOptions, SafetensorsOptions
from quantkit.calibration.options import CalibrationOptions
from quantkit.errors import ConversionError, MissingDependencyError, QuantkitError
from quantkit.formats.mlx_quants import mlx_quant
from quantkit.planning import memory as mem
from quantkit.planning.planner import load_spec
from quantkit.planning.target import Target
from quantkit.source.model import load_source

TEMPLATE_FILES = ("chat_template.jinja", "tokenizer.json", "tokenizer_config.json")


def _options(**mlx) -> BuildOptions:
    return BuildOptions(
        CalibrationOptions(), GGUFOptions(), GPTQOptions(), SafetensorsOptions(),
        mlx=MLXOptions(**mlx),
    )  # fmt: skip


def _convert(model: Path, out: Path, quant: str = "4bit", **kwargs):
    return quantkit.convert(
        model, out=out, format="mlx", quant=quant, verify=False,
        evaluation=quantkit.EvalOptions(enabled=False), **kwargs,
    )  # fmt: skip


def _template_files(folder: Path) -> dict[str, bytes]:
    names = [*TEMPLATE_FILES, "special_tokens_map.json"]
    found = {n: (folder / n).read_bytes() for n in names if (folder / n).is_file()}
    for path in sorted(folder.glob("additional_chat_templates/*.jinja")):
        found[str(path.relative_to(folder))] = path.read_bytes()
    return found


def _weights_bytes(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.glob("*.safetensors"))


# --- refusals, no weights read ------------------------------------------------------------
def test_factory_refuses_bad_options():
    with pytest.raises(QuantkitError, match="group size must be one of"):
        backend_for(Target("mlx", "4bit"), None, _options(group_size=48))
    with pytest.raises(QuantkitError, match="Unknown MLX quant"):
        backend_for(Target("mlx", "Q4_K_M"), None, _options())
    with pytest.raises(QuantkitError, match="imatrix"):
        backend_for(Target("mlx", "4bit"), None, BuildOptions(
            CalibrationOptions(), GGUFOptions(imatrix="auto"), GPTQOptions(),
            SafetensorsOptions(),
        ))  # fmt: skip


def test_resolve_target_spells_quants_as_mlx_lm_does():
    from quantkit.planning.target import resolve_target

    assert resolve_target(None, "mlx", None)[0] == Target("mlx", "4bit")
    assert resolve_target(None, "MLX", "MIXED_3_6")[0].quant == "mixed_3_6"
    assert resolve_target(None, "mlx", "bf16")[0].quant == "BF16"


def test_missing_mlx_is_a_missing_dependency(demo_model: Path, monkeypatch):
    monkeypatch.setitem(sys.modules, "mlx_lm", None)  # import mlx_lm now raises ImportError
    source = load_source(demo_model)
    with pytest.raises(MissingDependencyError, match="mlx_lm is not installed") as info:
        preflight(source, mlx_quant("4bit"), 64)
    assert "quantkit[mlx]" in (info.value.hint or "")


def test_quantized_source_and_foreign_shard_names_are_refused(demo_model: Path):
    pytest.importorskip("mlx_lm")
    source = load_source(demo_model)
    config = {**source.config, "quantization_config": {"quant_method": "gptq"}}
    with pytest.raises(ConversionError, match="already quantized"):
        preflight(_with(source, config=config), mlx_quant("4bit"), 64)
    renamed = tuple(_with(t, file="weights.safetensors") for t in source.tensors)
    with pytest.raises(ConversionError, match="model\\*.safetensors"):
        preflight(_with(source, tensors=renamed), mlx_quant("4bit"), 64)


def _with(obj, **changes):
    from dataclasses import replace

    return replace(obj, **changes)


def test_dry_run_estimates_without_writing(demo_model: Path, tmp_path: Path):
    pytest.importorskip("mlx_lm")
    result = quantkit.convert(
        demo_model, out=tmp_path / "x", format="mlx", quant="4bit", dry_run=True
    )
    assert result.dry_run and result.target == Target("mlx", "4bit")
    source = load_source(demo_model)
    assert result.estimated_bytes >= estimate_bytes(source, "4bit", 64)
    assert not (tmp_path / "x").exists()


# --- the demo model, 4bit -----------------------------------------------------------------
@pytest.fixture(scope="module")
def demo_mlx(demo_model: Path, tmp_path_factory) -> tuple[Path, quantkit.ConvertResult]:
    pytest.importorskip("mlx_lm")
    out = tmp_path_factory.mktemp("mlx") / "demo-4bit"
    return out, _convert(demo_model, out)


@pytest.mark.slow
def test_demo_loads_and_generates_in_mlx_lm(demo_mlx):
    from mlx_lm import generate, load

    out, _ = demo_mlx
    model, tokenizer = load(str(out))
    messages = [{"role": "user", "content": "What is the capital of France?"}]
    prompt = tokenizer.apply_chat_template(messages, add_generation_prompt=True)
    text = generate(model, tokenizer, prompt=prompt, max_tokens=8)
    assert isinstance(text, str) and text.strip()
    # mlx-lm stops on the template's turn end
    assert tokenizer.convert_tokens_to_ids("<|im_end|>") in tokenizer.eos_token_ids


@pytest.mark.slow
def test_demo_keeps_tokens_and_templates_byte_for_byte(demo_mlx, demo_model: Path):
    from mlx_lm import load

    out, _ = demo_mlx
    assert _template_files(out) == _template_files(demo_model)
    assert "additional_chat_templates/tool_use.jinja" in _template_files(out)
    added = json.loads((demo_model / "tokenizer.json").read_text())["added_tokens"]
    _, tokenizer = load(str(out))
    for token in added:  # every added token encodes to its own id, alone
        ids = tokenizer.encode(token["content"], add_special_tokens=False)
        assert ids == [token["id"]], token
    assert tokenizer.encode("<tool_call>", add_special_tokens=False) != []


@pytest.mark.slow
def test_demo_manifest_and_records(demo_mlx):
    out, result = demo_mlx
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["target"] == {"format": "mlx", "quant": "4bit", "profile": None}
    assert manifest["mlx"]["group_size"] == 64 and manifest["mlx"]["bits"] == 4
    names = [f["name"] for f in result.files]
    assert names[0] == "model.safetensors" and "model.safetensors.index.json" in names
    weights = result.files[0]
    assert weights["role"] == "artifact" and weights["format"] == "mlx"
    assert set(weights["tensor_types"]) == {"U32", "BF16"}  # packed weights, scales/biases
    config = json.loads((out / "config.json").read_text())
    assert config["quantization"] == {"group_size": 64, "bits": 4, "mode": "affine"}
    for record in result.files:
        assert (out / record["name"]).stat().st_size == record["bytes"]


@pytest.mark.slow
def test_demo_size_estimates_match_the_folder(demo_mlx, demo_model: Path):
    out, _ = demo_mlx
    real = _weights_bytes(out)
    planned = mem.mlx_weights_bytes(load_spec(str(demo_model)), "4bit")
    assert abs(planned - real) / real < 0.01, (planned, real)
    folder = sum(
        p.stat().st_size for p in out.rglob("*")
        if p.is_file() and p.name not in ("README.md", "manifest.json")
    )  # fmt: skip
    estimate = estimate_bytes(load_source(demo_model), "4bit", 64)
    assert 0 <= estimate - folder < 0.03 * folder, (estimate, folder)


@pytest.mark.slow
@pytest.mark.parametrize("quant", ["mixed_3_6", "8bit"])
def test_other_quants_match_the_planner(demo_model: Path, tmp_path: Path, quant: str):
    out = tmp_path / quant
    _convert(demo_model, out, quant, mlx=MLXOptions(group_size=32))
    real = _weights_bytes(out)
    from quantkit.formats.mlx_quants import mlx_bytes

    source = load_source(demo_model)
    planned = mlx_bytes(source.tensors, quant, 32, tied=source.geometry.tie_word_embeddings)
    assert abs(planned - real) / real < 0.01, (planned, real)
    config = json.loads((out / "config.json").read_text())
    assert config["quantization"]["group_size"] == 32


# --- the Llama-3.1-shaped fixture ---------------------------------------------------------
@pytest.mark.slow
def test_llama31_converts_loads_and_keeps_its_templates(llama31_model: Path, tmp_path: Path):
    pytest.importorskip("mlx_lm")
    from mlx_lm import generate, load

    out = tmp_path / "llama31-4bit"
    _convert(llama31_model, out)
    # The source keeps its templates inside tokenizer_config.json only: that file is copied
    # byte for byte, and each template is also written as transformers 5 saves it.
    theirs, ours = _template_files(llama31_model), _template_files(out)
    assert {name: ours.get(name) for name in theirs} == theirs
    source = load_source(llama31_model)
    assert len(source.tokenizer.chat_templates) >= 2  # default and tool_use
    for name, template in source.tokenizer.chat_templates.items():
        relative = "chat_template.jinja" if name == "default" else (
            f"additional_chat_templates/{name}.jinja")  # fmt: skip
        assert ours[relative] == template.encode("utf-8"), name
    model, tokenizer = load(str(out))
    for token in source.tokenizer.added_tokens:
        assert tokenizer.encode(token.content, add_special_tokens=False) == [token.id]
    text = generate(model, tokenizer, prompt="Hello", max_tokens=4)
    assert isinstance(text, str)
    real = _weights_bytes(out)
    planned = mem.mlx_weights_bytes(load_spec(str(llama31_model)), "4bit")
    assert abs(planned - real) / real < 0.01, (planned, real)
