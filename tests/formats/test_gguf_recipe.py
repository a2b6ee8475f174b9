"""The --quant auto recipe file: written, read back, checked against a model."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from quantkit.errors import RecipeError
from quantkit.formats.gguf_recipe import (
    Recipe,
    check_recipe,
    read_recipe,
    tensor_type_lines,
    write_recipe,
)

SHAPES = {"token_embd.weight": (1000, 576), "blk.0.attn_q.weight": (576, 576),
          "blk.0.ffn_down.weight": (576, 1536), "blk.10.attn_q.weight": (576, 576)}  # fmt: skip
TYPES = {"token_embd.weight": "Q8_0", "blk.0.attn_q.weight": "Q5_0",
         "blk.0.ffn_down.weight": "Q4_K", "blk.10.attn_q.weight": "IQ4_NL"}  # fmt: skip


def _recipe(**changes) -> Recipe:
    fields = {"architecture": "llama", "file_type": "Q4_K_M", "types": dict(TYPES),
              "shapes": dict(SHAPES), "budget": {"bytes": 1, "scope": "file", "origin": "t"}}
    fields.update(changes)
    return Recipe(**fields)


def test_a_written_recipe_reads_back(tmp_path: Path) -> None:
    json_path, text_path = write_recipe(_recipe(), tmp_path, "demo")
    assert json_path.name == "demo.recipe.json" and text_path.name == "demo.tensor-types.txt"
    back = read_recipe(json_path)
    assert back.types == TYPES and back.shapes == SHAPES and back.file_type == "Q4_K_M"
    assert text_path.read_text().splitlines() == tensor_type_lines(TYPES)


def test_each_line_matches_its_own_tensor_only() -> None:
    # llama.cpp applies the first pattern that regex_search finds in a name: no line may
    # catch another tensor (blk.1 must not match blk.10).
    for line in tensor_type_lines(TYPES):
        pattern, _, ggml_type = line.partition("=")
        hits = [n for n in SHAPES if re.search(pattern, n)]
        assert len(hits) == 1 and ggml_type == TYPES[hits[0]].lower()


def test_the_recipe_fits_its_model() -> None:
    check_recipe(_recipe(), "llama", SHAPES)


@pytest.mark.parametrize(
    ("recipe_changes", "arch", "shapes", "message"),
    [
        ({}, "qwen3", SHAPES, "for llama models; this model is qwen3"),
        ({}, "llama", {**SHAPES, "blk.1.attn_q.weight": (576, 576)}, "lacks 1 of the model"),
        ({}, "llama", {k: v for k, v in SHAPES.items() if "blk.10" not in k},
         "names 1 tensors the model lacks"),
        ({"types": {**TYPES, "blk.0.attn_q.weight": "Q9_9"}}, "llama", SHAPES, "unknown type"),
        ({"types": {**TYPES, "blk.0.attn_q.weight": "Q4_K"}}, "llama", SHAPES,
         "blocks of 256 do not split its rows of 576"),
    ],
)  # fmt: skip
def test_a_recipe_that_does_not_fit_is_refused_in_one_line(
    recipe_changes, arch: str, shapes, message: str
) -> None:
    with pytest.raises(RecipeError, match=message) as err:
        check_recipe(_recipe(**recipe_changes), arch, shapes)
    assert "\n" not in str(err.value)


@pytest.mark.parametrize(
    ("content", "message"),
    [("{", "not a readable recipe"), ('{"format": "other"}', "not a quantkit recipe"),
     ('{"format": "quantkit-gguf-recipe", "version": 9}', "recipe version 9"),
     ('{"format": "quantkit-gguf-recipe", "version": 1}', "damaged recipe")],
)  # fmt: skip
def test_what_is_not_a_recipe_is_refused(tmp_path: Path, content: str, message: str) -> None:
    path = tmp_path / "x.recipe.json"
    path.write_text(content)
    with pytest.raises(RecipeError, match=message):
        read_recipe(path)
    with pytest.raises(RecipeError, match="No recipe file"):
        read_recipe(tmp_path / "missing.json")


def test_the_file_lists_every_tensor_with_its_errors(tmp_path: Path) -> None:
    errors = {n: {"Q8_0": 1e-5, "Q4_0": 1e-2} for n in TYPES}
    json_path, _ = write_recipe(_recipe(errors=errors), tmp_path, "demo")
    data = json.loads(json_path.read_text())
    assert {t["name"] for t in data["tensors"]} == set(TYPES)
    assert all(t["relative_error"] == {"Q8_0": 1e-5, "Q4_0": 1e-2} for t in data["tensors"])
