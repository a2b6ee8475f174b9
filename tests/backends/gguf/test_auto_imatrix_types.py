"""The lowest-bit types (IQ2_XS among auto's candidates) need importance-matrix data for the
tensor: ggml aborts the process without it and llama.cpp's quantizer refuses it. quantkit's
matrix covers the blk.* weights only, so token_embd and output never get those types (found
at the Llama-3.1-8B shape, whose rows of 4096 take IQ2_XS blocks; the demo's rows of 576 do
not), and a recipe that asks for them is refused before any weight is quantized."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from quantkit.backends.gguf.auto.build import check_imatrix_coverage
from quantkit.backends.gguf.auto.sensitivity import relative_errors
from quantkit.backends.gguf.auto.weights import BF16File
from quantkit.backends.gguf.imatrix.matrix import Imatrix, ImatrixEntry
from quantkit.errors import RecipeError
from quantkit.formats.gguf_recipe import Recipe
from quantkit.formats.gguf_types import GGML_TYPES, IMATRIX_REQUIRED
from quantkit.runtime.ggml_quant import round_trip, type_id

ROW = 256
SHAPES = {"token_embd.weight": (64, ROW), "blk.0.attn_q.weight": (ROW, ROW),
          "output.weight": (64, ROW)}  # fmt: skip


@pytest.fixture(scope="module")
def tiny_gguf(tmp_path_factory) -> Path:
    import gguf

    path = tmp_path_factory.mktemp("tiny") / "tiny-F32.gguf"
    writer = gguf.GGUFWriter(path, "llama")
    rng = np.random.default_rng(0)
    for name, shape in SHAPES.items():
        writer.add_tensor(name, rng.standard_normal(shape).astype(np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


def _blk_only_imatrix() -> Imatrix:
    entry = ImatrixEntry(sums=np.ones((1, ROW), np.float32), counts=np.array([8.0]))
    return Imatrix({"blk.0.attn_q.weight": entry})


def test_only_tensors_with_imatrix_data_are_offered_iq2_xs(tiny_gguf: Path) -> None:
    weights = BF16File(tiny_gguf)
    errors = relative_errors(weights, _blk_only_imatrix(), sample_elements=4 * ROW, threads=1)
    assert "IQ2_XS" in errors["blk.0.attn_q.weight"]
    for name in ("token_embd.weight", "output.weight"):
        assert "Q2_K" in errors[name] and not IMATRIX_REQUIRED & set(errors[name])
    without = relative_errors(weights, None, sample_elements=4 * ROW, threads=1)
    assert all(not IMATRIX_REQUIRED & set(per_type) for per_type in without.values())


def test_round_trip_refuses_rather_than_aborting() -> None:
    rows = np.random.default_rng(1).standard_normal((2, ROW)).astype(np.float32)
    with pytest.raises(ValueError, match="IQ2_XS cannot be quantized without importance"):
        round_trip("IQ2_XS", rows, None)
    assert round_trip("IQ2_XS", rows, np.ones(ROW, np.float32)).shape == rows.shape


def test_imatrix_required_holds_every_type_ggml_asks_a_matrix_for() -> None:
    from quantkit.runtime.ggml_quant import _libggml

    lib = _libggml()
    asked = set()
    for name in GGML_TYPES:
        try:
            tid = type_id(name)
        except (KeyError, ValueError):
            continue
        if lib.ggml_quantize_requires_imatrix(tid):
            asked.add(name)
    assert asked and asked <= IMATRIX_REQUIRED


def test_a_recipe_asking_iq2_xs_where_the_matrix_has_no_data_is_refused() -> None:
    types = {"token_embd.weight": "IQ2_XS", "blk.0.attn_q.weight": "IQ2_XS",
             "output.weight": "Q6_K"}  # fmt: skip
    recipe = Recipe("llama", "Q2_K", types, SHAPES, None, 0, {}, {})
    with pytest.raises(RecipeError, match=r"IQ2_XS to token_embd\.weight, which llama\.cpp"):
        check_imatrix_coverage(recipe, _blk_only_imatrix())
    with pytest.raises(RecipeError, match="and 1 more"):
        check_imatrix_coverage(recipe, None)
    fine = Recipe("llama", "Q2_K", {**types, "token_embd.weight": "Q2_K"}, SHAPES, None, 0, {}, {})
    check_imatrix_coverage(fine, _blk_only_imatrix())
