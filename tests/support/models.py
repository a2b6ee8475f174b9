"""The fixture models as session fixtures (built by fixtures/models.py into the fixture
cache; a test whose fixture cannot be built offline is skipped with the reason)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from fixtures.models import (
    FixtureUnavailable,
    ensure_demo_first_layers,
    ensure_llama31_model,
    ensure_llama31_special_tags_model,
    ensure_llama31_tf4_model,
    ensure_llama31_tokenizer,
    ensure_qwen3_model,
    ensure_reference_converter,
)


def _or_skip(build: Callable[[Path], Any], cache: Path) -> Any:
    try:
        return build(cache)
    except FixtureUnavailable as exc:
        pytest.skip(f"fixture unavailable: {exc}")


@pytest.fixture(scope="session")
def llama31_tokenizer_files(fixture_cache: Path) -> Path:
    """Folder with Llama 3.1's tokenizer.json + tokenizer_config.json, the Hermes tags as
    added tokens and the Hermes (Llama-3 header) chat templates `default` and `tool_use`."""
    return _or_skip(ensure_llama31_tokenizer, fixture_cache)


@pytest.fixture(scope="session")
def llama31_model(fixture_cache: Path) -> Path:
    """Llama-3.1-shaped LlamaForCausalLM, random weights, 2 shards, transformers-5 config."""
    return _or_skip(ensure_llama31_model, fixture_cache)


@pytest.fixture(scope="session")
def llama31_model_tf4_config(fixture_cache: Path) -> Path:
    """The same weights as llama31_model with a transformers-4 config.json."""
    return _or_skip(ensure_llama31_tf4_model, fixture_cache)


@pytest.fixture(scope="session")
def llama31_model_special_tags(fixture_cache: Path) -> Path:
    """llama31_model with the Hermes tags marked special=True in the tokenizer files."""
    return _or_skip(ensure_llama31_special_tags_model, fixture_cache)


@pytest.fixture(scope="session")
def qwen3_model(fixture_cache: Path) -> Path:
    """Qwen3-shaped Qwen3ForCausalLM, random weights, ChatML templates (jinja files)."""
    return _or_skip(ensure_qwen3_model, fixture_cache)


@pytest.fixture(scope="session")
def reference_converter(fixture_cache: Path) -> Any:
    """llama.cpp's convert_hf_to_gguf.py (from the llama-cpp-python 0.3.36 sdist)."""
    return _or_skip(ensure_reference_converter, fixture_cache)


@pytest.fixture(scope="session")
def demo_model_8_layers(fixture_cache: Path, demo_model: Path) -> Path:
    """The demo model's first 8 of its 30 layers (embeddings, norms, tokenizer and templates
    as they are): for claims that hold tensor by tensor, at about a quarter of the work."""
    return ensure_demo_first_layers(fixture_cache, demo_model, 8)


@pytest.fixture(scope="session")
def reference_gguf(reference_converter: Any, fixture_cache: Path) -> Callable[[Path, str], Path]:
    """reference_gguf(model, outtype): llama.cpp's converter's GGUF of a model folder, made
    once per set of inputs and kept in the fixture cache (read-only: copy it to change it).
    Several tests compare against the same conversion, and it takes seconds each time."""

    def converted(model: Path, outtype: str) -> Path:
        return reference_converter.converted(Path(model), outtype, fixture_cache)

    return converted


@pytest.fixture(scope="session")
def demo_q8(demo_model: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The demo model as a Q8_0 GGUF, made once per session (read-only: tests that break it
    work on copies)."""
    from quantkit.backends.gguf.export import export_gguf
    from quantkit.source.model import load_source

    out = tmp_path_factory.mktemp("demo-q8") / "demo-Q8_0.gguf"
    return export_gguf(load_source(demo_model), out, out_type="Q8_0").path


def _exports(tmp_path_factory: pytest.TempPathFactory, out_type: str) -> Callable[[Path], Path]:
    """export_gguf's `out_type` file of a model folder (default token policy), made on first
    use and then handed out again for the rest of the session."""
    from quantkit.backends.gguf.export import export_gguf
    from quantkit.source.model import load_source

    made: dict[Path, Path] = {}

    def exported(model: Path) -> Path:
        key = Path(model).resolve()
        if key not in made:
            folder = tmp_path_factory.mktemp(f"{key.name}-{out_type.lower()}")
            made[key] = export_gguf(load_source(model), folder / f"{key.name}-{out_type}.gguf",
                                    out_type=out_type).path  # fmt: skip
        return made[key]

    return exported


@pytest.fixture(scope="session")
def q8_gguf(request: pytest.FixtureRequest, demo_model: Path,
            tmp_path_factory: pytest.TempPathFactory) -> Callable[[Path], Path]:  # fmt: skip
    """q8_gguf(model): a model folder as a Q8_0 GGUF (export_gguf's default token policy),
    made once per session (read-only: tests that change it work on copies). Several tests
    only read such a file, and each export of a 128k-token vocabulary takes seconds. The
    demo's is demo_q8."""
    others = _exports(tmp_path_factory, "Q8_0")

    def q8(model: Path) -> Path:
        if Path(model).resolve() == Path(demo_model).resolve():
            return request.getfixturevalue("demo_q8")
        return others(model)

    return q8


@pytest.fixture(scope="session")
def bf16_gguf(tmp_path_factory: pytest.TempPathFactory) -> Callable[[Path], Path]:
    """bf16_gguf(model): a model folder as a BF16 GGUF (export_gguf's defaults), made once
    per session (read-only: it is what llama.cpp's quantizer and the importance matrix
    read in several modules; a test that changes it works on a copy)."""
    return _exports(tmp_path_factory, "BF16")


@pytest.fixture(scope="session")
def demo_bf16_imatrix(demo_model: Path, bf16_gguf, tmp_path_factory: pytest.TempPathFactory):
    """The demo model's BF16 GGUF (bf16_gguf's) and an importance matrix computed on it (4
    chunks of 512 tokens of the built-in calibration mix), made once per session
    (read-only)."""
    from quantkit.backends.gguf.imatrix.compute import compute_imatrix, prepare_imatrix_data
    from quantkit.backends.gguf.imatrix.matrix import save_imatrix
    from quantkit.source.model import load_source

    source = load_source(demo_model)
    folder = tmp_path_factory.mktemp("demo-imatrix")
    bf16 = bf16_gguf(demo_model)
    data = prepare_imatrix_data(source.tokenizer, calibration=None, samples=4, chunk_size=512,
                                seed=0)  # fmt: skip
    return bf16, save_imatrix(compute_imatrix(bf16, data), folder / "demo.imatrix.gguf")
