"""The recipe `--quant auto` writes beside the GGUF: a llama.cpp type for every tensor, the
budget it was chosen for and the measurements behind it.

Two files: `<stem>.recipe.json` (read back by `--recipe`), and `<stem>.tensor-types.txt`,
one `^name$=type` line per tensor, which llama-quantize reads with `--tensor-type-file`
(every line a regular expression anchored on one tensor name, so no line can catch another
tensor). A recipe is checked against the model before any weight is quantized: its
architecture, every tensor name, and every type against the row length it must split.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import RecipeError
from ..version import __version__
from .gguf_types import GGML_TYPES, fits_rows

RECIPE_FORMAT = "quantkit-gguf-recipe"
RECIPE_VERSION = 1
RECIPE_SUFFIX = ".recipe.json"
TENSOR_TYPES_SUFFIX = ".tensor-types.txt"


@dataclass(frozen=True)
class Recipe:
    architecture: str  # GGUF general.architecture: llama, qwen3
    file_type: str  # the stock type recorded as general.file_type (and whose gate applies)
    types: dict[str, str]  # GGUF tensor name -> ggml type
    shapes: dict[str, tuple[int, ...]] = field(default_factory=dict)  # torch order
    budget: dict[str, Any] | None = None  # planning.budget.Budget.to_dict()
    expected_bytes: int = 0  # the GGUF file, predicted before quantizing
    method: dict[str, Any] = field(default_factory=dict)  # how the types were chosen
    errors: dict[str, dict[str, float]] = field(default_factory=dict)  # name -> type -> error

    def to_dict(self) -> dict[str, Any]:
        tensors = [
            {"name": name, "type": t, "shape": list(self.shapes.get(name, ())),
             "relative_error": self.errors.get(name, {})}
            for name, t in self.types.items()
        ]  # fmt: skip
        return {
            "format": RECIPE_FORMAT, "version": RECIPE_VERSION, "quantkit": __version__,
            "architecture": self.architecture, "file_type": self.file_type,
            "budget": self.budget, "expected_bytes": self.expected_bytes,
            "method": self.method, "tensors": tensors,
        }  # fmt: skip

    def type_counts(self) -> dict[str, int]:
        counts: dict[str, int] = {}
        for t in self.types.values():
            counts[t] = counts.get(t, 0) + 1
        return dict(sorted(counts.items()))


def tensor_type_lines(types: dict[str, str]) -> list[str]:
    """llama-quantize's --tensor-type-file lines: `^blk\\.0\\.attn_q\\.weight$=q4_k`."""
    return [f"^{re.escape(name)}$={t.lower()}" for name, t in types.items()]


def tensor_type_patterns(types: dict[str, str]) -> list[tuple[str, str]]:
    """The same (pattern, type) pairs, as llama_model_quantize's tt_overrides takes them."""
    return [
        (line.split("=", 1)[0], t)
        for line, t in zip(tensor_type_lines(types), types.values(), strict=True)
    ]


def write_recipe(recipe: Recipe, folder: Path, stem: str) -> tuple[Path, Path]:
    json_path = folder / f"{stem}{RECIPE_SUFFIX}"
    text_path = folder / f"{stem}{TENSOR_TYPES_SUFFIX}"
    json_path.write_text(json.dumps(recipe.to_dict(), indent=1) + "\n", encoding="utf-8")
    text_path.write_text("\n".join(tensor_type_lines(recipe.types)) + "\n", encoding="utf-8")
    return json_path, text_path


def read_recipe(path: str | Path) -> Recipe:
    """A recipe file, with a one-line RecipeError for anything that is not one."""
    path = Path(path).expanduser()
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise RecipeError(f"No recipe file at {path}.") from None
    except (OSError, ValueError) as exc:
        raise RecipeError(f"{path} is not a readable recipe: {exc}.") from None
    if not isinstance(data, dict) or data.get("format") != RECIPE_FORMAT:
        raise RecipeError(
            f'{path} is not a quantkit recipe (no "format": "{RECIPE_FORMAT}").',
            hint=f"Pass the {RECIPE_SUFFIX} file a `--quant auto` convert wrote.",
        )
    if data.get("version") != RECIPE_VERSION:
        raise RecipeError(f"{path} is recipe version {data.get('version')}; this quantkit "
                          f"reads version {RECIPE_VERSION}.")  # fmt: skip
    try:
        rows = data["tensors"]
        types = {str(r["name"]): str(r["type"]).upper() for r in rows}
        shapes = {str(r["name"]): tuple(int(d) for d in r.get("shape", ())) for r in rows}
        return Recipe(
            architecture=str(data["architecture"]), file_type=str(data["file_type"]).upper(),
            types=types, shapes=shapes, budget=data.get("budget"),
            expected_bytes=int(data.get("expected_bytes") or 0), method=data.get("method") or {},
        )  # fmt: skip
    except (KeyError, TypeError, ValueError) as exc:
        raise RecipeError(f"{path} is a damaged recipe ({exc!r}).") from None


def check_recipe(recipe: Recipe, architecture: str, shapes: dict[str, tuple[int, ...]]) -> None:
    """`recipe` fits a model of `architecture` whose quantizable tensors have `shapes`."""
    if recipe.architecture != architecture:
        raise RecipeError(
            f"The recipe is for {recipe.architecture} models; this model is {architecture}.",
            hint="Make a recipe for this architecture with --quant auto.",
        )
    extra = [n for n in recipe.types if n not in shapes]
    missing = [n for n in shapes if n not in recipe.types]
    if extra or missing:
        what = (f"names {len(extra)} tensors the model lacks ({extra[0]}" if extra
                else f"lacks {len(missing)} of the model's tensors ({missing[0]}")  # fmt: skip
        raise RecipeError(
            f"The recipe {what}, ...): it was made for another model shape.",
            hint="Apply a recipe to a model with the same layers, or make one with --quant auto.",
        )
    for name, ggml_type in recipe.types.items():
        if ggml_type not in GGML_TYPES:
            raise RecipeError(f"The recipe gives {name} the unknown type {ggml_type}.")
        row = shapes[name][-1]
        if not fits_rows(ggml_type, row):
            block = GGML_TYPES[ggml_type][0]
            raise RecipeError(
                f"The recipe gives {name} {ggml_type}, whose blocks of {block} do not split "
                f"its rows of {row}.",
                hint="Choose a type with 32-wide blocks (Q4_0, IQ4_NL, Q5_0, Q8_0) for it.",
            )
