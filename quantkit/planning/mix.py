"""The multiple-choice knapsack behind `--quant auto`: one type per tensor, the lowest
total expected cost whose bytes fit the budget.

Also the pieces of `--quant auto` that read no weights: what a quantized file holds besides
the chosen tensors (FileLayout), the stock mix an auto file is named after, and the plan's
preview (preview_recipe). quantkit.backends.gguf.auto measures and calibrates the costs.

Greedy on the lower convex hull of each tensor's (bytes, cost) options: start every
tensor at its smallest type, then take upgrades in order of cost saved per byte spent
while they fit. On each hull the savings per byte fall from one step to the next, so this
is the solution of the Lagrangian relaxation (a price per byte that every tensor answers
alone) up to the last upgrade that did not fit; the leftover bytes then go to the best
single upgrades that still fit, hull or not. Pure Python, no weights: the plan uses it too.
"""

from __future__ import annotations

import heapq
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from ..errors import PlanError
from ..formats.gguf_recipe import Recipe
from ..formats.gguf_types import (
    GAUSSIAN_RELATIVE_ERROR,
    auto_candidates,
    covered_by_imatrix,
    ggml_nbytes,
)
from .budget import FILE, Budget

if TYPE_CHECKING:
    from .model_spec import ModelSpec

# The stock mixes an auto file can be named after (general.file_type), smallest first: the
# largest one no bigger than the auto file gives its type and its quality gate.
STOCK_FILE_TYPES = ("Q2_K", "Q3_K_S", "Q3_K_M", "Q3_K_L", "IQ4_XS", "Q4_K_S", "Q4_K_M",
                    "Q5_K_S", "Q5_K_M", "Q6_K", "Q8_0")  # fmt: skip
HEADER_SLACK = 4096  # the keys llama-quantize adds to the BF16 header (imatrix, file type)
ALIGNMENT = 32  # GGUF's default tensor-data alignment
_LAYER = re.compile(r"^blk\.\d+\.")


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


def solve(items: Sequence[Item], budget: int, overhead: int = 0) -> dict[str, str]:
    """name -> ggml type: the cheapest mix whose counted bytes are at most `budget`.
    `overhead` (what the budget held besides the items) only makes the error's figures
    those the user gave."""
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
            f"The budget of {(budget + overhead) / 1e9:.3f} GB is below the smallest mix, "
            f"{(smallest + overhead) / 1e9:.3f} GB (every tensor at its smallest type).",
            hint=f"Give at least {(smallest + overhead) / 1e9:.3f} GB (--max-size), a shorter "
            "--context, or a profile with more memory.",
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


def tensor_role(name: str) -> str:
    """`blk.7.attn_v.weight` -> `attn_v`; `token_embd.weight` -> `token_embd`."""
    return _LAYER.sub("", name).removesuffix(".weight")


def quantizable(name: str, shape: tuple[int, ...]) -> bool:
    """The tensors llama-quantize converts (2-D weights; norms and rope factors stay F32)."""
    return name.endswith(".weight") and len(shape) >= 2 and "norm" not in name


def preview_recipe(spec: ModelSpec, budget: Budget) -> Recipe:
    """The plan's mix: no weights read, every tensor at its type's error on Gaussian
    weights, every role the same gain (the convert measures both)."""
    from . import memory as mem

    tensors = [t for t in mem.gguf_tensors(spec, "BF16") if quantizable(t.name, t.shape)]
    shapes = {t.name: t.shape for t in tensors}
    errors = {n: {t: GAUSSIAN_RELATIVE_ERROR[t]
                  for t in auto_candidates(s, imatrix=covered_by_imatrix(n))}
              for n, s in shapes.items()}  # fmt: skip
    header = mem.gguf_file_bytes(spec, "BF16") - mem.gguf_weights_bytes(spec, "BF16")
    fixed = sum(_aligned(t.nbytes) for t in mem.gguf_tensors(spec, "BF16") if t.name not in shapes)
    layout = FileLayout(spec.geometry.model_type, header + HEADER_SLACK, fixed, shapes)
    chosen = layout.solve(mix_items(errors, shapes, {}, budget, layout.tied_head), budget)
    expected = layout.file_bytes(chosen)
    return Recipe(layout.architecture, stock_file_type(spec, expected), chosen, shapes,
                  budget.to_dict(), expected, {"preview": "gaussian"}, errors)  # fmt: skip


def stock_file_type(spec: ModelSpec, nbytes: int) -> str:
    """The largest stock mix whose file is no bigger than `nbytes` (else the smallest)."""
    from .memory import gguf_file_bytes

    fitting = [t for t in STOCK_FILE_TYPES if gguf_file_bytes(spec, t) <= nbytes]
    return fitting[-1] if fitting else STOCK_FILE_TYPES[0]


@dataclass(frozen=True)
class FileLayout:
    """What a quantized file holds besides the chosen tensors: the header and the tensors
    that stay F32 (norms, rope factors)."""

    architecture: str  # general.architecture
    header: int  # bytes before the tensor data, with HEADER_SLACK for llama-quantize's keys
    fixed: int  # bytes of the tensors that are never quantized
    shapes: dict[str, tuple[int, ...]]  # the quantizable tensors, torch order

    @property
    def tied_head(self) -> bool:
        return "output.weight" not in self.shapes

    @classmethod
    def read(cls, path: Path) -> FileLayout:
        """The layout of the BF16 GGUF at `path` (header read, no weights), with quantkit's
        header reader: gguf-py's GGUFReader decodes the whole vocabulary (seconds)."""
        from gguf import GGML_QUANT_SIZES, GGMLQuantizationType, Keys

        from ..formats.gguf_read import read_header

        header = read_header(path, {Keys.General.ARCHITECTURE})
        shapes, fixed = {}, 0
        for t in header.tensors.values():
            shape = tuple(reversed(t.dims))
            if quantizable(t.name, shape):
                shapes[t.name] = shape
            else:
                block, type_size = GGML_QUANT_SIZES[GGMLQuantizationType(t.ggml_type)]
                fixed += _aligned(t.elements * type_size // block)
        arch = str(header.values[Keys.General.ARCHITECTURE])
        return cls(arch, _aligned(header.data_start + HEADER_SLACK), fixed, shapes)

    def overhead(self, budget: Budget) -> int:
        """Bytes of `budget` the chosen tensors cannot take."""
        return self.fixed + (self.header if budget.scope == FILE else 0)

    def solve(self, items: Sequence[Item], budget: Budget) -> dict[str, str]:
        overhead = self.overhead(budget)
        return solve(items, budget.bytes - overhead, overhead)

    def file_bytes(self, types: dict[str, str]) -> int:
        return (
            self.header
            + self.fixed
            + sum(_aligned(ggml_nbytes(t, self.shapes[n])) for n, t in types.items())
        )


def mix_items(
    errors: dict[str, dict[str, float]],
    shapes: dict[str, tuple[int, ...]],
    gains: dict[str, float],
    budget: Budget,
    tied_head: bool,
) -> list[Item]:
    items = []
    for name, per_type in errors.items():
        gain = gains.get(tensor_role(name), 1.0)
        options = tuple(Option(t, _aligned(ggml_nbytes(t, shapes[name])), gain * e)
                        for t, e in per_type.items())  # fmt: skip
        items.append(Item(name, options, budget.counts(tensor_role(name), tied_head)))
    return items


def _aligned(n: int) -> int:
    return -(-n // ALIGNMENT) * ALIGNMENT


def types_by_role(types: dict[str, str]) -> dict[str, dict[str, int]]:
    """role -> {type -> tensors}: the card's table."""
    table: dict[str, dict[str, int]] = {}
    for name, ggml_type in types.items():
        row = table.setdefault(tensor_role(name), {})
        row[ggml_type] = row.get(ggml_type, 0) + 1
    return {role: dict(sorted(row.items())) for role, row in sorted(table.items())}


def auto_preview(spec: ModelSpec, budget: Budget) -> dict[str, object]:
    """`quantkit plan --quant auto`: the budget, the expected file and the types per role of
    preview_recipe's mix (the plan's JSON `auto` field)."""
    recipe = preview_recipe(spec, budget)
    return {
        "budget": budget.to_dict(),
        "expected_bytes": recipe.expected_bytes,
        "file_type": recipe.file_type,
        "types": recipe.type_counts(),
        "types_by_role": types_by_role(recipe.types),
        "measured": False,  # Gaussian errors and equal gains: convert measures both
    }
