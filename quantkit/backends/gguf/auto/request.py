"""`--quant auto`'s settings resolved before any weight is read: the budget (or the recipe to
apply), checked against the model's tensor inventory so a budget below the smallest mix or
a recipe for another model fails in one line at the start."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from ....errors import QuantkitError
from ....formats.gguf_recipe import Recipe, check_recipe, read_recipe
from ....formats.quants import AUTO_QUANT
from ....planning.budget import Budget, check_budget_flags, choose_budget, parse_size

if TYPE_CHECKING:
    from ....evaluation.options import EvalOptions
    from ....planning.model_spec import ModelSpec
    from ....planning.profiles import HardwareProfile
    from ...base import BuildOptions


@dataclass(frozen=True)
class AutoRequest:
    budget: Budget | None  # None when a recipe is applied
    recipe: Recipe | None  # --recipe: the types to apply, already checked
    probe_chunks: int
    # the convert's own evaluation afterwards (None: --no-eval): the probes evaluate on its
    # corpus and context, and the reference they compute is the one it will reuse
    evaluation: EvalOptions | None = None


def check_auto_flags(quant: str, options: BuildOptions, hardware: HardwareProfile | None) -> None:
    """The flags that belong to --quant auto, and a budget for it, before anything is read."""
    gguf = options.gguf
    given = [flag for flag, value in (("--max-size", gguf.max_size), ("--bpw", gguf.bpw),
                                      ("--recipe", gguf.recipe)) if value is not None]  # fmt: skip
    if quant != AUTO_QUANT.name:
        if given:
            raise QuantkitError(
                f"{given[0]} applies to --quant auto, not {quant}.",
                hint=f"Add --quant auto, or drop {given[0]}.",
            )
        return
    if gguf.recipe is not None and len(given) > 1:
        raise QuantkitError(
            f"--recipe brings its own types; {given[0]} would be ignored.",
            hint=f"Drop {given[0]}, or drop --recipe to choose again for the new budget.",
        )
    if gguf.recipe is None:
        check_budget_flags(gguf.max_size, gguf.bpw, hardware is not None)
    if gguf.max_size is not None:
        parse_size(gguf.max_size)  # a size that cannot be read fails before the source loads
    if gguf.auto_probe_chunks < 0:
        raise QuantkitError(f"--auto-probe-chunks must be 0 or more, got {gguf.auto_probe_chunks}.")


def resolve_auto(
    spec: ModelSpec, options: BuildOptions, hardware: HardwareProfile | None
) -> AutoRequest:
    """The budget (or recipe), checked against `spec`'s tensors: no weight is read."""
    from ....planning.mix import preview_recipe
    from ....planning.planner import DEFAULT_CONTEXT
    from . import gguf_architecture

    gguf = options.gguf
    if gguf.recipe is not None:
        recipe = read_recipe(gguf.recipe)
        check_recipe(recipe, gguf_architecture(spec), _quantizable_shapes(spec))
        return AutoRequest(None, recipe, gguf.auto_probe_chunks, options.evaluation)
    context = min(options.context or DEFAULT_CONTEXT, spec.geometry.max_position_embeddings)
    budget = choose_budget(spec, hardware, context, max_size=gguf.max_size, bpw=gguf.bpw)
    preview_recipe(spec, budget)  # BudgetTooSmallError now, not after reading the weights
    return AutoRequest(budget, None, gguf.auto_probe_chunks, options.evaluation)


def _quantizable_shapes(spec: ModelSpec) -> dict[str, tuple[int, ...]]:
    from ....planning.memory import gguf_tensors
    from ....planning.mix import quantizable

    return {t.name: t.shape for t in gguf_tensors(spec, "BF16") if quantizable(t.name, t.shape)}
