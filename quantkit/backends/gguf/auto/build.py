"""`--quant auto` inside the GGUF path: choose (or take) the recipe, quantize with it,
prove the file kept to the budget, write the recipe files beside it."""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ....artifact.manifest import file_record
from ....errors import ConversionError, RecipeError
from ....formats.gguf_recipe import Recipe, write_recipe
from ....formats.gguf_types import IMATRIX_REQUIRED
from ....formats.quants import AUTO_QUANT
from ....planning.budget import FILE
from ....planning.cost import quantize_stage
from ....planning.mix import types_by_role
from . import choose_recipe

if TYPE_CHECKING:
    from ....source.model import SourceModel
    from ..imatrix.matrix import Imatrix
    from .request import AutoRequest
    from .weights import BF16Weights

ProgressFn = Callable[[str, int, int], None]
log = logging.getLogger(__name__)


def quantize_auto(
    source: SourceModel,
    auto: AutoRequest,
    weights: BF16Weights,
    final: Path,
    work: Path,
    stem: str,
    imatrix: Imatrix | None,
    imatrix_label: str,
    progress: ProgressFn | None,
) -> tuple[Recipe, list[dict[str, Any]]]:
    """Write `final` from the BF16 model `weights` with a type per tensor; return the recipe
    and its files' records."""
    recipe = auto.recipe
    if recipe is None:
        assert auto.budget is not None
        recipe = choose_recipe(weights, source, auto.budget, imatrix=imatrix, work=work,
                               probe_chunks=auto.probe_chunks, evaluation=auto.evaluation,
                               progress=progress)  # fmt: skip
    check_imatrix_coverage(recipe, imatrix)
    stage = quantize_stage(AUTO_QUANT.name)  # the estimate's label: its rate is recorded
    log.info("quantizing, a type per tensor (%s-sized)", recipe.file_type)

    def on_tensor(done: int, total: int) -> None:
        if progress is not None:
            progress(stage, done, total)

    weights.quantize(final, recipe.file_type, recipe.types, imatrix, imatrix_label, on_tensor)
    _check_budget(recipe, final)
    paths = write_recipe(recipe, work, stem)
    return recipe, [file_record(p, role="recipe") for p in paths]


def check_imatrix_coverage(recipe: Recipe, imatrix: Imatrix | None) -> None:
    """llama.cpp refuses the lowest-bit types for a tensor the importance matrix has no data
    for; a recipe (--recipe, or one made with another matrix) that asks for them is refused
    here, before any weight is quantized."""
    entries = imatrix.entries if imatrix is not None else {}
    missing = sorted(
        n for n, t in recipe.types.items() if t in IMATRIX_REQUIRED and n not in entries
    )
    if missing:
        more = f" and {len(missing) - 1} more" if len(missing) > 1 else ""
        raise RecipeError(
            f"The recipe gives {recipe.types[missing[0]]} to {missing[0]}{more}, which llama.cpp "
            "makes only from importance-matrix data for that tensor, and the matrix has none.",
            hint="Give those tensors Q2_K or a larger type in the recipe, or pass an "
            "--imatrix file that covers them.",
        )


def _check_budget(recipe: Recipe, final: Path) -> None:
    """The file's own bytes against a file budget: the solver counted the header from the
    BF16 file plus a margin, so going over would be a bug, refused rather than shipped."""
    budget = recipe.budget or {}
    if budget.get("scope") == FILE and final.stat().st_size > int(budget["bytes"]):
        raise ConversionError(
            f"{final.name} came out at {final.stat().st_size} bytes, over the budget of "
            f"{budget['bytes']} ({budget['origin']}).",
            hint="This is a quantkit bug; please report it. Meanwhile give a slightly "
            "smaller budget.",
        )


def recipe_section(
    recipe: Recipe, files: list[dict[str, Any]], imatrix_label: str
) -> dict[str, Any]:
    """The manifest's `recipe` section (the card's table and command are made from it)."""
    names = {Path(f["name"]).suffixes[-1]: f["name"] for f in files}
    return {
        "file": names.get(".json"),
        "tensor_type_file": names.get(".txt"),
        "file_type": recipe.file_type,
        "budget": recipe.budget,
        "expected_bytes": recipe.expected_bytes,
        "types": recipe.type_counts(),
        "imatrix_file": imatrix_label,
        "gains": {role: m["gain"] for role, m in recipe.method.get("roles", {}).items()},
        "types_by_role": types_by_role(recipe.types),
    }
