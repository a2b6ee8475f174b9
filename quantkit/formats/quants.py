"""Format facts as typed tables: artifact formats and llama.cpp quantization types.

Nothing here imports a heavy library, so the planner and `--help` stay instant. The
llama.cpp file-type ids are llama.h's `LLAMA_FTYPE_MOSTLY_*`; a test checks them against
gguf-py's `LlamaFileType`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any


class ArtifactFormat(StrEnum):
    GGUF = "gguf"
    SAFETENSORS = "safetensors"  # plain BF16/FP16
    FP8 = "fp8"
    GPTQ = "gptq"
    MLX = "mlx"  # Apple's MLX folders (mlx-lm, LM Studio's MLX engine): formats/mlx_quants.py


@dataclass(frozen=True)
class GGUFQuant:
    """One llama.cpp output type, as `llama_model_quantize` and our writer know it."""

    name: str
    ftype: int  # llama.h LLAMA_FTYPE_MOSTLY_*
    written_directly: bool  # our gguf-py writer makes it; otherwise llama.cpp quantizes
    needs_imatrix: bool = False  # llama.cpp refuses these without an importance matrix
    bits: int = field(kw_only=True)  # bits class of its main tensors: Q4_K_M 4, IQ3_M 3, Q6_K 6

    @property
    def low_bit(self) -> bool:
        """4 bits and lower (Q4_*, IQ4_*, Q3_*, IQ3_*, Q2_*, IQ2_*, IQ1_*): the types a
        profile's `imatrix = "auto"` applies to (docs/profiles.md)."""
        return self.bits <= 4

    def computes_imatrix(self, profile_setting: str | None) -> bool:
        """Whether a convert to this type computes an importance matrix when the user says
        nothing: when llama.cpp needs one, or when a profile's `imatrix = "auto"` applies
        (a type llama.cpp quantizes, of 4 bits or lower)."""
        if self.needs_imatrix:
            return True
        return not self.written_directly and profile_setting == "auto" and self.low_bit


_GGUF_QUANTS = (
    GGUFQuant("F32", 0, written_directly=True, bits=32),
    GGUFQuant("F16", 1, written_directly=True, bits=16),
    GGUFQuant("BF16", 32, written_directly=True, bits=16),
    GGUFQuant("Q8_0", 7, written_directly=True, bits=8),
    GGUFQuant("Q4_0", 2, written_directly=False, bits=4),
    GGUFQuant("Q4_1", 3, written_directly=False, bits=4),
    GGUFQuant("Q5_0", 8, written_directly=False, bits=5),
    GGUFQuant("Q5_1", 9, written_directly=False, bits=5),
    GGUFQuant("Q2_K", 10, written_directly=False, bits=2),
    # Q2_K_S: llama.cpp refuses its Q2_K tensors without a matrix
    GGUFQuant("Q2_K_S", 21, written_directly=False, needs_imatrix=True, bits=2),
    GGUFQuant("Q3_K_S", 11, written_directly=False, bits=3),
    GGUFQuant("Q3_K_M", 12, written_directly=False, bits=3),
    GGUFQuant("Q3_K_L", 13, written_directly=False, bits=3),
    GGUFQuant("Q4_K_S", 14, written_directly=False, bits=4),
    GGUFQuant("Q4_K_M", 15, written_directly=False, bits=4),
    GGUFQuant("Q5_K_S", 16, written_directly=False, bits=5),
    GGUFQuant("Q5_K_M", 17, written_directly=False, bits=5),
    GGUFQuant("Q6_K", 18, written_directly=False, bits=6),
    GGUFQuant("IQ4_NL", 25, written_directly=False, bits=4),
    GGUFQuant("IQ4_XS", 30, written_directly=False, bits=4),
    GGUFQuant("IQ3_M", 27, written_directly=False, bits=3),
    GGUFQuant("IQ3_XXS", 23, written_directly=False, needs_imatrix=True, bits=3),
    GGUFQuant("IQ2_M", 29, written_directly=False, needs_imatrix=True, bits=2),
    GGUFQuant("IQ2_S", 28, written_directly=False, needs_imatrix=True, bits=2),
    GGUFQuant("IQ2_XS", 20, written_directly=False, needs_imatrix=True, bits=2),
    GGUFQuant("IQ2_XXS", 19, written_directly=False, needs_imatrix=True, bits=2),
    GGUFQuant("IQ1_M", 31, written_directly=False, needs_imatrix=True, bits=1),
    GGUFQuant("IQ1_S", 24, written_directly=False, needs_imatrix=True, bits=1),
)


def index_by_name(rows: tuple[Any, ...], what: str) -> dict[str, Any]:
    """A table's rows by their `name`; a name twice is a bug in the table, refused at import."""
    table: dict[str, Any] = {}
    for row in rows:
        if row.name in table:
            raise RuntimeError(f"duplicate {what} {row.name}")
        table[row.name] = row
    return table


GGUF_QUANTS: dict[str, GGUFQuant] = index_by_name(_GGUF_QUANTS, "GGUF quant type")

# `--quant auto`: a llama.cpp type per tensor, chosen for a byte budget
# (quantkit.backends.gguf.auto). It has no file type of its own: the file records the stock
# type its size matches (the recipe's `file_type`), so it is kept out of GGUF_QUANTS, whose
# rows are llama.h's LLAMA_FTYPE_MOSTLY_* ids. It always uses an importance matrix.
AUTO_QUANT = GGUFQuant("AUTO", -1, written_directly=False, needs_imatrix=True, bits=4)


def gguf_quant(name: str) -> GGUFQuant:
    """Look a quant type up by name (case-insensitive); unknown names fail loudly."""
    from ..errors import QuantkitError

    key = name.upper()
    if key == AUTO_QUANT.name:
        return AUTO_QUANT
    if key not in GGUF_QUANTS:
        known = ", ".join([*GGUF_QUANTS, "auto"])
        raise QuantkitError(f"Unknown GGUF quant type {name!r}.", hint=f"Choose one of: {known}.")
    return GGUF_QUANTS[key]
