"""The multiple-choice knapsack behind `--quant auto`: one type per tensor, the lowest
total expected cost whose bytes fit the budget.

Greedy on the lower convex hull of each tensor's (bytes, cost) options: start every
tensor at its smallest type, then take upgrades in order of cost saved per byte spent
while they fit. On each hull the savings per byte fall from one step to the next, so this
is the solution of the Lagrangian relaxation (a price per byte that every tensor answers
alone) up to the last upgrade that did not fit; the leftover bytes then go to the best
single upgrades that still fit, hull or not. Pure Python, no weights: the plan uses it too.
"""

from __future__ import annotations

import heapq
from collections.abc import Sequence
from dataclasses import dataclass

from ....errors import PlanError


@dataclass(frozen=True)
class Option:
    ggml_type: str
    nbytes: int
    cost: float  # expected KL divergence the tensor adds at this type (any common unit)


@dataclass(frozen=True)
class Item:
    name: str
    options: tuple[Option, ...]
    counted: bool = True  # False: outside the budget (the input embeddings on a GPU budget)


class BudgetTooSmallError(PlanError):
    """No mix of the allowed types fits the budget."""


def solve(items: Sequence[Item], budget: int) -> dict[str, str]:
    """name -> ggml type: the cheapest mix whose counted bytes are at most `budget`."""
    chosen: dict[str, Option] = {}
    for item in items:
        if not item.options:
            raise PlanError(f"No quantization type fits tensor {item.name}.")
        # counted tensors start at their smallest type; the others take their best
        order = _by_size if item.counted else _by_cost
        chosen[item.name] = min(item.options, key=order)
    smallest = sum(chosen[i.name].nbytes for i in items if i.counted)
    if smallest > budget:
        raise BudgetTooSmallError(
            f"The budget of {budget / 1e9:.3f} GB is below the smallest mix, "
            f"{smallest / 1e9:.3f} GB (every tensor at its smallest type).",
            hint=f"Give at least {smallest / 1e9:.3f} GB (--max-size), a shorter --context, "
            "or a profile with more memory.",
        )
    left = budget - smallest
    left = _hull_upgrades([i for i in items if i.counted], chosen, left)
    _fill(items, chosen, left)
    return {name: option.ggml_type for name, option in chosen.items()}


def _by_size(option: Option) -> tuple[int, float]:
    return option.nbytes, option.cost


def _by_cost(option: Option) -> tuple[float, int]:
    return option.cost, option.nbytes


def lower_hull(options: Sequence[Option]) -> list[Option]:
    """The options on the lower convex hull of (bytes, cost), smallest first: the others
    cost more than a mix of their neighbours would, so no budget prefers them."""
    points = sorted(options, key=lambda o: (o.nbytes, o.cost))
    hull: list[Option] = []
    for option in points:
        if hull and option.cost >= hull[-1].cost:
            continue  # more bytes for no less cost
        while len(hull) >= 2 and _cross(hull[-2], hull[-1], option) <= 0:
            hull.pop()
        hull.append(option)
    return hull


def _cross(a: Option, b: Option, c: Option) -> float:
    # > 0 when b lies strictly below the segment a-c (a convex turn)
    return (b.nbytes - a.nbytes) * (c.cost - a.cost) - (b.cost - a.cost) * (c.nbytes - a.nbytes)


def _hull_upgrades(items: Sequence[Item], chosen: dict[str, Option], left: int) -> int:
    hulls = {item.name: lower_hull(item.options) for item in items}
    heap: list[tuple[float, str, int]] = []
    for name, hull in hulls.items():
        _push_step(heap, name, hull, 0)
    while heap:
        _, name, step = heapq.heappop(heap)
        hull = hulls[name]
        extra = hull[step + 1].nbytes - hull[step].nbytes
        if extra > left:
            continue  # this tensor stops here; smaller upgrades elsewhere may still fit
        left -= extra
        chosen[name] = hull[step + 1]
        _push_step(heap, name, hull, step + 1)
    return left


def _push_step(heap: list, name: str, hull: list[Option], step: int) -> None:
    if step + 1 < len(hull):
        saved = hull[step].cost - hull[step + 1].cost
        extra = hull[step + 1].nbytes - hull[step].nbytes
        heapq.heappush(heap, (-saved / max(extra, 1), name, step))


def _fill(items: Sequence[Item], chosen: dict[str, Option], left: int) -> None:
    """Spend what the hull walk left on the single best-value swaps that still fit."""
    while True:
        best: tuple[float, str, Option] | None = None
        for item in items:
            if not item.counted:
                continue
            current = chosen[item.name]
            for option in item.options:
                extra = option.nbytes - current.nbytes
                saved = current.cost - option.cost
                if saved > 0 and extra <= left:
                    value = saved / max(extra, 1)
                    if best is None or value > best[0]:
                        best = (value, item.name, option)
        if best is None:
            return
        _, name, option = best
        left -= option.nbytes - chosen[name].nbytes
        chosen[name] = option
