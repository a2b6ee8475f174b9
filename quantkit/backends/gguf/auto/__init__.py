"""`--quant auto`: a llama.cpp type for every tensor, chosen for a byte budget.

    relative_errors  each candidate type on a sample of each tensor's rows (sensitivity.py)
    measure_gains    one KL-divergence gain per tensor role, from probe quantizations
    solve            the multiple-choice knapsack under the budget (solve.py)
    Recipe           the result, written beside the GGUF and read back by --recipe

choose_recipe runs them in that order on the BF16 GGUF the GGUF path writes anyway; the
quantization itself is llama.cpp's, through its tensor-type overrides (quantize.py).
preview_recipe is the plan's weight-free version: every tensor gets the error the type has
on Gaussian weights, every role the same gain. docs/quantization.md has the method.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ....formats.gguf_types import (
    AUTO_TYPES,
    GAUSSIAN_RELATIVE_ERROR,
    auto_candidates,
    ggml_nbytes,
)
from ....planning.budget import Budget
from .calibrate import REFERENCE_TYPE, measure_gains, tensor_role
from .recipe import Recipe
from .sensitivity import SAMPLE_ELEMENTS, quantizable, relative_errors
from .solve import Item, Option, solve

if TYPE_CHECKING:
    from ....planning.model_spec import ModelSpec
    from ....source.model import SourceModel
    from ..imatrix.matrix import Imatrix

# The stock mixes an auto file can be named after (general.file_type), smallest first: the
# largest one no bigger than the auto file gives its type and its quality gate.
STOCK_FILE_TYPES = ("Q2_K", "Q3_K_S", "Q3_K_M", "Q3_K_L", "IQ4_XS", "Q4_K_S", "Q4_K_M",
                    "Q5_K_S", "Q5_K_M", "Q6_K", "Q8_0")  # fmt: skip
HEADER_SLACK = 4096  # the keys llama-quantize adds to the BF16 header (imatrix, file type)
ALIGNMENT = 32  # GGUF's default tensor-data alignment
PROBE_CHUNKS = 4  # evaluation chunks per probe quantization in measure_gains
ProgressFn = Callable[[str, int, int], None]


def choose_recipe(
    bf16: Path,
    source: SourceModel,
    budget: Budget,
    *,
    imatrix: Imatrix | None,
    work: Path,
    probe_chunks: int = PROBE_CHUNKS,
    types: tuple[str, ...] = AUTO_TYPES,
    progress: ProgressFn | None = None,
) -> Recipe:
    """Measure, calibrate and solve on the BF16 GGUF `bf16` of `source`."""
    from ....planning.model_spec import spec_from_source

    layout = _FileLayout.read(bf16)
    errors = {
        name: {t: e for t, e in per_type.items() if t in types}
        for name, per_type in relative_errors(bf16, imatrix, progress=progress).items()
    }
    room = layout.room(budget)
    probe = _probe_types(errors, layout, room)
    method: dict[str, Any] = {"sample_elements": SAMPLE_ELEMENTS, "types": list(types),
                              "probe_chunks": probe_chunks}  # fmt: skip
    gains: dict[str, float] = {}
    if probe_chunks > 0 and any(t != REFERENCE_TYPE for t in probe.values()):
        measured = measure_gains(bf16, source, probe, errors, work, imatrix=imatrix,
                                 chunks=probe_chunks, progress=progress)  # fmt: skip
        gains = {role: m["gain"] for role, m in measured.items()}
        method["roles"] = measured
    items = _items(errors, layout.shapes, gains, budget, layout.tied_head)
    chosen = solve(items, room)
    expected = layout.file_bytes(chosen)
    return Recipe(
        architecture=layout.architecture,
        file_type=stock_file_type(spec_from_source(source), expected),
        types=chosen, shapes=layout.shapes, budget=budget.to_dict(),
        expected_bytes=expected, method=method, errors=errors,
    )  # fmt: skip


def preview_recipe(spec: ModelSpec, budget: Budget) -> Recipe:
    """The plan's version: no weights read, Gaussian errors, one gain for every role."""
    from ....planning import memory as mem

    tensors = [t for t in mem.gguf_tensors(spec, "BF16") if quantizable(t.name, t.shape)]
    shapes = {t.name: t.shape for t in tensors}
    errors = {n: {t: GAUSSIAN_RELATIVE_ERROR[t] for t in auto_candidates(s)}
              for n, s in shapes.items()}  # fmt: skip
    header = mem.gguf_file_bytes(spec, "BF16") - mem.gguf_weights_bytes(spec, "BF16")
    fixed = sum(_aligned(t.nbytes) for t in mem.gguf_tensors(spec, "BF16") if t.name not in shapes)
    layout = _FileLayout(gguf_architecture(spec), header + HEADER_SLACK, fixed, shapes)
    chosen = solve(_items(errors, shapes, {}, budget, layout.tied_head), layout.room(budget))
    expected = layout.file_bytes(chosen)
    return Recipe(layout.architecture, stock_file_type(spec, expected), chosen, shapes,
                  budget.to_dict(), expected, {"preview": "gaussian"}, errors)  # fmt: skip


def gguf_architecture(spec: ModelSpec) -> str:
    """general.architecture of the GGUF this model converts to (llama, qwen3)."""
    from ..arch import ARCHITECTURES, arch_name

    known = ARCHITECTURES.get(spec.geometry.architecture)
    return arch_name(known) if known else spec.geometry.model_type


def stock_file_type(spec: ModelSpec, nbytes: int) -> str:
    """The largest stock mix whose file is no bigger than `nbytes` (else the smallest)."""
    from ....planning.memory import gguf_file_bytes

    fitting = [t for t in STOCK_FILE_TYPES if gguf_file_bytes(spec, t) <= nbytes]
    return fitting[-1] if fitting else STOCK_FILE_TYPES[0]


class _FileLayout:
    """What a quantized file holds besides the chosen tensors: the header and the tensors
    that stay F32 (norms, rope factors)."""

    def __init__(self, architecture: str, header: int, fixed: int,
                 shapes: dict[str, tuple[int, ...]]) -> None:  # fmt: skip
        self.architecture, self.header, self.fixed, self.shapes = (
            architecture,
            header,
            fixed,
            shapes,
        )
        self.tied_head = "output.weight" not in shapes

    @classmethod
    def read(cls, path: Path) -> _FileLayout:
        from gguf import GGUFReader

        reader = GGUFReader(str(path))
        arch = str(bytes(reader.fields["general.architecture"].parts[-1]), "utf-8")
        shapes, fixed = {}, 0
        for t in reader.tensors:
            shape = tuple(int(d) for d in reversed(t.shape))
            if quantizable(t.name, shape):
                shapes[t.name] = shape
            else:
                fixed += _aligned(int(t.n_bytes))
        return cls(arch, _aligned(reader.data_offset + HEADER_SLACK), fixed, shapes)

    def room(self, budget: Budget) -> int:
        """Bytes the chosen tensors may take."""
        overhead = self.fixed + (self.header if budget.scope == "file" else 0)
        return budget.bytes - overhead

    def file_bytes(self, types: dict[str, str]) -> int:
        return (
            self.header
            + self.fixed
            + sum(_aligned(ggml_nbytes(t, self.shapes[n])) for n, t in types.items())
        )


def _items(
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


def _probe_types(
    errors: dict[str, dict[str, float]], layout: _FileLayout, room: int
) -> dict[str, str]:
    """Per tensor, the type nearest below the budget's mean bits per weight: gains are
    measured where the solver will work (KL divergence is quadratic only near zero)."""
    from ....formats.gguf_types import bits_per_weight

    elements = sum(_numel(s) for s in layout.shapes.values())
    target = room * 8 / max(elements, 1)
    probe = {}
    for name, per_type in errors.items():
        below = [t for t in per_type if bits_per_weight(t) <= target]
        pool = below or list(per_type)
        probe[name] = max(pool, key=bits_per_weight) if below else min(pool, key=bits_per_weight)
    return probe


def _aligned(n: int) -> int:
    return -(-n // ALIGNMENT) * ALIGNMENT


def _numel(shape: tuple[int, ...]) -> int:
    n = 1
    for d in shape:
        n *= d
    return n
