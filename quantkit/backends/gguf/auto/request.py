"""`--quant auto`'s settings resolved before any weight is read: the budget (or the recipe to
apply), checked against the model's tensor inventory so a budget below the smallest mix or
a recipe for another model fails in one line at the start."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from ....errors import QuantkitError
from ....planning.budget import Budget, budget_for_profile, budget_from_bpw, budget_from_size
from .recipe import Recipe, check_recipe, read_recipe

if TYPE_CHECKING:
    from ....planning.model_spec import ModelSpec
    from ....planning.profiles import HardwareProfile
    from ...base import BuildOptions


@dataclass(frozen=True)
class AutoRequest:
    budget: Budget | None  # None when a recipe is applied
    recipe: Recipe | None  # --recipe: the types to apply, already checked
    probe_chunks: int


def check_auto_flags(quant: str, options: BuildOptions, hardware: HardwareProfile | None) -> None:
    """The flags that belong to --quant auto, and a budget for it, before anything is read."""
    gguf = options.gguf
    given = [flag for flag, value in (("--max-size", gguf.max_size), ("--bpw", gguf.bpw),
                                      ("--recipe", gguf.recipe)) if value is not None]  # fmt: skip
    if quant != "AUTO":
        if given:
            raise QuantkitError(
                f"{given[0]} applies to --quant auto, not {quant}.",
                hint=f"Add --quant auto, or drop {given[0]}.",
            )
        return
    if len([f for f in given if f != "--recipe"]) > 1:
        raise QuantkitError("Give one budget: --max-size or --bpw, not both.")
    if not given and hardware is None:
        raise QuantkitError(
            "--quant auto needs a budget to fill.",
            hint="Pass --profile NAME (what its devices hold), --max-size 20GB, --bpw 4.5, "
            "or --recipe FILE.",
        )
    if gguf.auto_probe_chunks < 0:
        raise QuantkitError(f"--auto-probe-chunks must be 0 or more, got {gguf.auto_probe_chunks}.")


def resolve_auto(
    spec: ModelSpec, options: BuildOptions, hardware: HardwareProfile | None
) -> AutoRequest:
    """The budget (or recipe), checked against `spec`'s tensors: no weight is read."""
    from ....planning.planner import DEFAULT_CONTEXT
    from . import gguf_architecture, preview_recipe

    gguf = options.gguf
    if gguf.recipe is not None:
        recipe = read_recipe(gguf.recipe)
        check_recipe(recipe, gguf_architecture(spec), _quantizable_shapes(spec))
        return AutoRequest(None, recipe, gguf.auto_probe_chunks)
    if gguf.max_size is not None:
        budget = budget_from_size(gguf.max_size)
    elif gguf.bpw is not None:
        budget = budget_from_bpw(spec, gguf.bpw)
    else:
        assert hardware is not None  # check_auto_flags
        context = min(options.context or DEFAULT_CONTEXT, spec.geometry.max_position_embeddings)
        budget = budget_for_profile(spec, hardware, context)
    preview_recipe(spec, budget)  # BudgetTooSmallError now, not after the BF16 file
    return AutoRequest(budget, None, gguf.auto_probe_chunks)


def _quantizable_shapes(spec: ModelSpec) -> dict[str, tuple[int, ...]]:
    from ....planning.memory import gguf_tensors
    from .sensitivity import quantizable

    return {t.name: t.shape for t in gguf_tensors(spec, "BF16") if quantizable(t.name, t.shape)}
