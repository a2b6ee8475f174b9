"""Hardware profiles: the shipped files load, the schema rejects what it should."""

from __future__ import annotations

from pathlib import Path

import pytest
from support import REPO_ROOT

from quantkit.errors import ProfileError
from quantkit.planning.fp8 import fp8_support_for
from quantkit.planning.profiles import list_profiles, load_profile

REQUIRED = {
    "a100x2-fp16": ("safetensors", "BF16", "vllm", 2),
    "a100-fp8": ("fp8", "FP8_DYNAMIC", "vllm", 1),
    "rtx4090-4bit": ("gguf", "Q4_K_M", "llama.cpp", 1),
    "rtx4090-gptq": ("gptq", "W4A16", "vllm", 1),
    "h100-fp8": ("fp8", "FP8_DYNAMIC", "vllm", 1),
    "h100x8-fp8": ("fp8", "FP8_DYNAMIC", "vllm", 8),
    "h100x16-bf16": ("safetensors", "BF16", "vllm", 16),
}

MINIMAL = """
name = "{name}"
description = "test"
format = "gguf"
quant = "Q4_K_M"
runtime = "llama.cpp"

[hardware]
device = "Test GPU"
kind = "gpu"
memory_gib = 24
compute_capability = "8.9"

[quality]
max_ppl_increase = 0.05
max_kld = 0.05
min_top1 = 0.9
"""


RUNTIME = 'runtime = "llama.cpp"\n'


def write(tmp_path: Path, text: str, name: str = "custom") -> Path:
    path = tmp_path / f"{name}.toml"
    path.write_text(text.format(name=name))
    return path


def test_every_shipped_profile_loads_and_names_match():
    profiles = {p.name: p for p in list_profiles()}
    assert len(profiles) >= 15
    for name, (fmt, quant, runtime, devices) in REQUIRED.items():
        p = profiles[name]
        assert (p.format, p.quant, p.runtime, p.device_count) == (fmt, quant, runtime, devices)


def test_profiles_cover_the_hardware_the_issue_lists():
    devices = " ".join(p.device for p in list_profiles())
    for needle in ("H200", "RTX 3090", "RTX 3060", "RTX 6000 Ada", "A6000", "L40S", "Apple"):
        assert needle in devices, needle
    kinds = {p.kind for p in list_profiles()}
    assert kinds == {"gpu", "unified", "cpu"}


def test_two_node_profile_uses_pipeline_parallel_across_nodes():
    p = load_profile("h100x16-bf16")
    assert (p.nodes, p.devices_per_node, p.tensor_parallel, p.pipeline_parallel) == (2, 8, 8, 2)


def test_fp8_support_follows_compute_capability():
    assert fp8_support_for("8.0") == "weight-only"  # A100
    assert fp8_support_for("8.6") == "weight-only"  # RTX 3090 / A6000
    assert fp8_support_for("8.9") == "native"  # RTX 4090 / L40S / RTX 6000 Ada
    assert fp8_support_for("9.0") == "native"  # H100 / H200
    assert fp8_support_for("7.5") == "none"
    assert load_profile("a100-fp8").fp8 == "weight-only"
    assert load_profile("h100-fp8").fp8 == "native"


def test_unknown_name_lists_the_known_ones():
    with pytest.raises(ProfileError) as err:
        load_profile("rtx9090")
    assert "rtx4090-4bit" in str(err.value) and "a100-fp8" in str(err.value)


def test_load_by_path_and_profiles_dir_env(tmp_path, monkeypatch):
    path = write(tmp_path, MINIMAL)
    assert load_profile(str(path)).name == "custom"
    monkeypatch.setenv("QUANTKIT_PROFILES_DIR", str(tmp_path))
    assert [p.name for p in list_profiles()] == ["custom"]
    assert load_profile("custom").memory_gib == 24


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda t: t.replace("memory_gib = 24", "memmory_gib = 24"), "unknown key"),
        (lambda t: t + "\nextra = 1\n", "unknown key"),
        (lambda t: t.replace('quant = "Q4_K_M"', 'quant = "W4A16"'), "not a gguf quant"),
        (lambda t: t.replace('runtime = "llama.cpp"', 'runtime = "vllm"'), "cannot load gguf"),
        (lambda t: t.replace('compute_capability = "8.9"', 'fp8 = "native"'), "compute_cap"),
        (lambda t: t.replace('"8.9"', '"8.9"\nfp8 = "weight-only"'), "contradicts"),
        (lambda t: t.replace("memory_gib = 24", 'memory_gib = "24"'), "must be int or float"),
        (lambda t: t.replace('kind = "gpu"', 'kind = "gpu"\ncount = true'), "must be int"),
        (
            lambda t: (
                t.replace('kind = "gpu"', 'kind = "gpu"\ncount = 2\nnodes = 1')
                + "[parallel]\ntensor = 3\n"
            ),
            "must equal the device count",
        ),  # fmt: skip
        (lambda t: t.replace("[quality]\n", "[quality]\nmin = 1\n"), "unknown key"),
        (
            lambda t: (
                t.replace('format = "gguf"', 'format = "fp8"')
                .replace('"Q4_K_M"', '"FP8_DYNAMIC"')
                .replace('"llama.cpp"', '"vllm"')
                .replace('"8.9"', '"7.5"')
            ),
            "needs an NVIDIA GPU",
        ),  # fmt: skip
        (lambda t: t + '\nkv_cache_type = "fp8"\n', "kv_cache_type"),
        (lambda t: t.replace('runtime = "llama.cpp"', RUNTIME + 'imatrix = "always"'), "imatrix"),
        (
            lambda t: t.replace('"Q4_K_M"', '"Q8_0"').replace(
                'runtime = "llama.cpp"', RUNTIME + 'imatrix = "auto"'
            ),
            "made by llama.cpp's quantizer",
        ),
        (
            lambda t: t.replace('"Q4_K_M"', '"IQ2_XS"').replace(
                'runtime = "llama.cpp"', RUNTIME + 'imatrix = "none"'
            ),
            "needs an importance matrix",
        ),
        (  # a profile turns it on for 4 bits and lower only
            lambda t: t.replace('"Q4_K_M"', '"Q5_K_M"').replace(
                'runtime = "llama.cpp"', RUNTIME + 'imatrix = "auto"'
            ),
            r"4 bits and lower; Q5_K_M is 5-bit",
        ),
        (
            lambda t: t.replace('"Q4_K_M"', '"Q6_K"').replace(
                'runtime = "llama.cpp"', RUNTIME + 'imatrix = "auto"'
            ),
            r"Q6_K is 6-bit",
        ),
    ],
)
def test_schema_errors_say_what_is_wrong(tmp_path, edit, message):
    text = edit(MINIMAL)
    # Top-level keys must come before the first table in TOML; move appended ones up.
    if text.endswith(("extra = 1\n", 'kv_cache_type = "fp8"\n')):
        head, _, tail = text.rpartition("\n\n")
        text = tail + "\n" + head + "\n"
    with pytest.raises(ProfileError, match=message):
        load_profile(str(write(tmp_path, text)))


def test_name_must_match_file_name(tmp_path):
    path = tmp_path / "other.toml"
    path.write_text(MINIMAL.format(name="custom"))
    with pytest.raises(ProfileError, match="differs from the file name"):
        load_profile(str(path))


def test_invalid_toml_is_a_profile_error(tmp_path):
    path = tmp_path / "broken.toml"
    path.write_text("name = \n")
    with pytest.raises(ProfileError, match="not valid TOML"):
        load_profile(str(path))


def test_four_bit_gguf_profiles_default_to_an_importance_matrix():
    """llama.cpp-made GGUF profiles compute an imatrix by default; the others have none."""
    for p in list_profiles():
        expected = "auto" if p.format == "gguf" else None
        assert p.imatrix == expected, p.name


def test_imatrix_key_is_optional_and_checked(tmp_path):
    assert load_profile(str(write(tmp_path, MINIMAL))).imatrix is None
    text = MINIMAL.replace('runtime = "llama.cpp"', RUNTIME + 'imatrix = "none"')
    assert load_profile(str(write(tmp_path, text, "off"))).imatrix == "none"
    for quant in ("Q4_0", "IQ4_XS", "Q3_K_S", "IQ3_M", "Q2_K", "IQ2_M", "IQ1_S"):
        text = MINIMAL.replace('"Q4_K_M"', f'"{quant}"')
        text = text.replace('runtime = "llama.cpp"', RUNTIME + 'imatrix = "auto"')
        assert load_profile(str(write(tmp_path, text, "low"))).imatrix == "auto", quant


def test_bits_class_is_in_the_quant_table():
    """formats.py says which types are 4 bits and lower; no string matching elsewhere."""
    from quantkit.formats.quants import GGUF_QUANTS

    low = {name for name, q in GGUF_QUANTS.items() if q.low_bit}
    prefixes = ("Q4_", "IQ4_", "Q3_", "IQ3_", "Q2_", "IQ2_", "IQ1_", "TQ")
    assert low == {name for name in GGUF_QUANTS if name.startswith(prefixes)}
    assert {"Q5_K_M", "Q6_K", "Q8_0", "BF16", "Q5_0"}.isdisjoint(low)


@pytest.mark.slow
def test_a_built_wheel_ships_every_profile(tmp_path):
    """`pip install .` (not editable) must carry profiles/: the package reaches them
    through quantkit/data/profiles, a symlink that the wheel build copies in."""
    import shutil
    import subprocess
    import sys
    import zipfile

    from quantkit.planning.profiles import profiles_dir

    repo = REPO_ROOT
    tree = tmp_path / "src"  # a copy: an in-tree build would leave build/ in the checkout
    tree.mkdir()
    for name in ("pyproject.toml", "README.md", "profiles"):
        copy = shutil.copytree if (repo / name).is_dir() else shutil.copy2
        copy(repo / name, tree / name)
    shutil.copytree(repo / "quantkit", tree / "quantkit", symlinks=True,
                    ignore=shutil.ignore_patterns("__pycache__"))  # fmt: skip
    assert (tree / "quantkit" / "data" / "profiles").is_symlink()
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
         "-w", str(tmp_path / "dist"), str(tree)],
        check=True, capture_output=True,
    )  # fmt: skip
    (wheel,) = (tmp_path / "dist").glob("quantkit-*.whl")
    with zipfile.ZipFile(wheel) as zf:
        shipped = {
            Path(name).name: zf.read(name)
            for name in zf.namelist()
            if name.startswith("quantkit/data/profiles/") and name.endswith(".toml")
        }
    expected = {p.name: p.read_bytes() for p in profiles_dir().glob("*.toml")}
    assert len(expected) >= 15
    assert shipped == expected
