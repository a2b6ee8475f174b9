"""One home for every fact: the safetensors scheme table, the quantized-Linear rule and its
byte count, the artifact's name. Each fact is read by several stages (profiles, planner,
backend, quality gates, run commands); these tests hold the readers to the one source."""

from __future__ import annotations

import shlex
from math import prod
from pathlib import Path
from types import SimpleNamespace

import pytest

from quantkit.backends.gguf.backend import artifact_name as gguf_artifact_name
from quantkit.backends.safetensors import backend as st_backend
from quantkit.backends.safetensors.compressed import SCHEMES as COMPRESSED_SCHEMES
from quantkit.errors import ProfileError
from quantkit.evaluation.gates import DEFAULT_GATES
from quantkit.formats import schemes
from quantkit.formats.quants import ArtifactFormat
from quantkit.formats.safetensors_index import TensorInfo
from quantkit.planning import memory as mem
from quantkit.planning.hermes_family import LLAMA31_8B, LLAMA31_70B, QWEN3_14B
from quantkit.planning.model_spec import spec_from_config
from quantkit.planning.planner import load_spec, plan_model
from quantkit.planning.profiles import QUANTS_BY_FORMAT, list_profiles, load_profile
from quantkit.source.model import load_source

QUANTIZING = [s.name for s in schemes.SAFETENSORS_SCHEMES.values() if s.quantized]
ALL_SCHEMES = list(schemes.SAFETENSORS_SCHEMES)


# --- 1. the scheme table ------------------------------------------------------------------
def test_every_reader_takes_its_quants_from_the_scheme_table():
    table = schemes.SAFETENSORS_QUANTS
    assert set(table) == {f.value for f in ArtifactFormat} - {"gguf", "mlx"}  # own tables
    assert table == st_backend.QUANTS
    assert {fmt: QUANTS_BY_FORMAT[fmt] for fmt in table} == table
    assert set(COMPRESSED_SCHEMES) == {"FP8_DYNAMIC", "FP8", "W4A16"}
    for name, scheme in schemes.SAFETENSORS_SCHEMES.items():
        assert st_backend.needs_calibration(name) == scheme.needs_data
        assert name in DEFAULT_GATES, name
        assert (name in COMPRESSED_SCHEMES) == (scheme.llmcompressor is not None)
    assert [st_backend.needs_calibration(q) for q in ALL_SCHEMES] == [
        False, False, False, True, True,
    ]  # fmt: skip
    assert schemes.safetensors_scheme("f16").name == "FP16"


def test_w8a16_is_refused_everywhere_it_was_half_supported(tmp_path: Path):
    assert "W8A16" not in QUANTS_BY_FORMAT["gptq"]
    assert "W8A16" not in DEFAULT_GATES
    assert all(p.quant != "W8A16" for p in list_profiles())
    text = (Path(load_profile("rtx4090-gptq").source)).read_text()
    path = tmp_path / "rtx4090-gptq.toml"
    path.write_text(text.replace('quant = "W4A16"', 'quant = "W8A16"'))
    with pytest.raises(ProfileError, match="'W8A16' is not a gptq quant") as info:
        load_profile(str(path))
    assert "W4A16 only" in (info.value.hint or "")
    with pytest.raises(ValueError, match="unknown safetensors quant"):
        mem.safetensors_weights_bytes(spec_from_config(LLAMA31_8B, "8B"), "W8A16")


# --- 2. which Linears, how many bytes -----------------------------------------------------
def _tensor(name: str, *shape: int) -> TensorInfo:
    return TensorInfo(name, "BF16", shape, "model.safetensors", 2 * prod(shape))


def test_quantized_linear_rule():
    tensors = [
        _tensor("model.embed_tokens.weight", 100, 64),
        _tensor("model.layers.0.self_attn.q_proj.weight", 64, 64),
        _tensor("model.layers.0.mlp.down_proj.weight", 64, 128),
        _tensor("model.layers.0.input_layernorm.weight", 64),
        _tensor("model.layers.0.self_attn.q_proj.bias", 64),
        _tensor("model.norm.weight", 64),
        _tensor("lm_head.weight", 100, 64),
    ]
    assert schemes.quantized_linears(tensors) == [
        ("model.layers.0.self_attn.q_proj", 64),
        ("model.layers.0.mlp.down_proj", 128),
    ]
    with_head = schemes.quantized_linears(tensors, quantize_lm_head=True)
    assert with_head[-1] == ("lm_head", 64) and len(with_head) == 3
    plain = schemes.safetensors_bytes(tensors, "BF16")
    assert plain == sum(t.nbytes for t in tensors)
    head = schemes.safetensors_bytes(tensors, "W4A16", 64, quantize_lm_head=True)
    assert head < schemes.safetensors_bytes(tensors, "W4A16", 64)


def _disk(source, fmt: str, quant: str, group_size: int = 128) -> int:
    return st_backend.estimate_bytes(source, fmt, quant, group_size)


def _fmt(quant: str) -> str:
    return schemes.SAFETENSORS_SCHEMES[quant].format.value


@pytest.mark.parametrize("quant", ALL_SCHEMES)
@pytest.mark.parametrize("config", [LLAMA31_8B, LLAMA31_70B, QWEN3_14B], ids=["8B", "70B", "14B"])
def test_planner_and_disk_estimate_agree_on_spec_models(config, quant):
    spec = spec_from_config(config, "m")
    as_source = SimpleNamespace(tensors=spec.tensors)  # estimate_bytes reads the inventory only
    assert mem.safetensors_weights_bytes(spec, quant) == _disk(as_source, _fmt(quant), quant)


@pytest.mark.parametrize("fixture", ["demo_model", "llama31_model", "qwen3_model"])
def test_planner_and_disk_estimate_agree_on_fixture_models(fixture, request):
    folder = request.getfixturevalue(fixture)
    source = load_source(folder)
    spec = load_spec(str(folder))  # what `quantkit plan FOLDER` sizes
    columns = {cols for _, cols in st_backend.quantized_linears(source)}
    group = 128 if all(c % 128 == 0 for c in columns) else 64  # the demo's 576 columns: 64
    st_backend.check_group_size(source, group)
    for quant in ALL_SCHEMES:
        planned = mem.safetensors_weights_bytes(spec, quant, group)
        assert planned == _disk(source, _fmt(quant), quant, group), (fixture, quant)
    # The plan's own weights figure: group 128, falling back to 64/32 per row where 128
    # does not divide (the demo's 576 columns); the estimate counts the same way.
    for quant in QUANTIZING:
        planned = mem.artifact_weights_bytes(spec, _fmt(quant), quant)
        assert planned == _disk(source, _fmt(quant), quant), (fixture, quant)


def test_disk_estimate_of_plain_folders_is_the_source_size(llama31_model: Path):
    source = load_source(llama31_model)
    assert _disk(source, "safetensors", "BF16") == source.weight_bytes
    w4 = _disk(source, "gptq", "W4A16")
    assert w4 < _disk(source, "fp8", "FP8_DYNAMIC") < source.weight_bytes
    assert st_backend.estimate_bytes(source, "gptq", "W4A16", gptq_format="gptq") == 2 * w4


# --- 3. the artifact's name ---------------------------------------------------------------
@pytest.fixture
def oddly_named_demo(demo_model: Path, tmp_path: Path) -> Path:
    """The demo model under a folder name with a space and parentheses (files linked)."""
    folder = tmp_path / "Hermes demo (v1)"
    folder.mkdir()
    for item in demo_model.iterdir():
        (folder / item.name).symlink_to(item)
    return folder


@pytest.mark.parametrize("profile", ["rtx4090-4bit", "cpu-64gb", "rtx3060-ollama"])
def test_plan_command_names_the_file_convert_writes(oddly_named_demo: Path, profile: str):
    (plan,) = plan_model(str(oddly_named_demo), profile)
    hardware = load_profile(profile)
    written = gguf_artifact_name(load_source(oddly_named_demo), hardware.quant)
    assert written == f"Hermes-demo-v1-{hardware.quant}.gguf"
    if hardware.runtime == "ollama":
        assert f"FROM ./{written}\n" in plan.modelfile
    else:
        args = shlex.split(plan.command)
        assert args[args.index("-m") + 1] == written


def test_vllm_command_names_the_folder_name(oddly_named_demo: Path):
    (plan,) = plan_model(str(oddly_named_demo), "rtx4090-gptq")
    assert shlex.split(plan.command)[2] == "./Hermes-demo-v1-W4A16"


@pytest.mark.slow
@pytest.mark.parametrize("quant", QUANTIZING)
def test_counts_match_a_real_compressed_artifact(demo_model: Path, tmp_path: Path, quant):
    """The byte count against what llmcompressor writes (GPTQ's layout without its
    Hessians: round-to-nearest makes the same tensors in seconds)."""
    pytest.importorskip("llmcompressor")
    from quantkit.backends.safetensors.compressed import quantize_model
    from quantkit.calibration.sets import load_calibration
    from quantkit.formats.safetensors_index import read_header

    source = load_source(demo_model)
    calibration = None
    if quant == "FP8":
        calibration = load_calibration(None, source.tokenizer, samples=4, seq_len=64)
    method = "rtn" if schemes.SAFETENSORS_SCHEMES[quant].grouped else "gptq"
    out = tmp_path / quant
    quantize_model(source, quant, out, calibration=calibration, method=method, group_size=64)
    written = 0
    for path in out.glob("*.safetensors"):
        header, _ = read_header(path)
        written += sum(
            end - start
            for key, info in header.items()
            if key != "__metadata__"
            for start, end in [info["data_offsets"]]
        )
    assert _disk(source, _fmt(quant), quant, 64) == written
    assert mem.safetensors_weights_bytes(load_spec(str(demo_model)), quant, 64) == written
