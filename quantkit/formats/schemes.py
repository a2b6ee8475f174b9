"""The safetensors schemes as one typed table: which quant names each safetensors format
takes, what a scheme does to the Linear layers, whether it needs calibration data, the
llmcompressor preset that makes it, and how many bytes it writes.

Every other place derives from `SAFETENSORS_SCHEMES`: the backend's format/quant pairs and
calibration rule, the compressed-tensors recipes, the profile schema, the planner's weight
bytes and the disk preflight. Nothing here imports a heavy library.

Which layers a scheme quantizes (llmcompressor's `targets=["Linear"]`, `ignore=["lm_head"]`):
every 2-D `.weight` except the embeddings (not Linear) and lm_head (unless asked). Bytes per
quantized Linear (compressed-tensors, symmetric, no zero points):
- FP8_DYNAMIC: float8_e4m3 weights + one BF16 scale per output channel;
- FP8 (static): float8_e4m3 weights + one BF16 weight scale and one BF16 input scale;
- W4A16 (GPTQ, pack-quantized): int32-packed 4-bit weights + one BF16 scale per group of
  `group_size` input columns per output row + the int64[2] `weight_shape`.
Everything else stays 16-bit (or its own size when it is not a float tensor). Scales take
the model's dtype (compressed-tensors); these counts match a real artifact of the demo
model to the byte (FP8_DYNAMIC, FP8, W4A16; llmcompressor 0.14, compressed-tensors 0.19).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from enum import StrEnum

from .quants import ArtifactFormat, index_by_name
from .safetensors_index import TensorInfo


class Scales(StrEnum):
    """Where a quantized Linear keeps its scales."""

    NONE = "none"  # not quantized (BF16/FP16)
    CHANNEL = "channel"  # one BF16 scale per output row
    TENSOR = "tensor"  # one BF16 weight scale and one BF16 activation scale per tensor
    GROUP = "group"  # one BF16 scale per `group_size` input columns of each row


@dataclass(frozen=True)
class SafetensorsScheme:
    """One quant name of a safetensors artifact format."""

    name: str  # as profiles and `convert --quant` spell it
    format: ArtifactFormat
    weight_bits: int  # bits per weight of the quantized Linears (16: nothing quantized)
    scales: Scales
    needs_data: bool  # calibration data (static FP8 activation scales, GPTQ Hessians)
    llmcompressor: str | None  # llmcompressor's preset scheme; None: our own writer
    summary: str

    @property
    def quantized(self) -> bool:
        """Whether the scheme quantizes the Linear layers at all."""
        return self.weight_bits < 16

    @property
    def grouped(self) -> bool:
        """Whether `group_size` applies (one scale per group of input columns)."""
        return self.scales is Scales.GROUP

    def linear_bytes(self, out_features: int, in_features: int, group_size: int = 128) -> int:
        """Bytes of one quantized Linear (weights + scales + metadata tensors) on disk."""
        numel = out_features * in_features
        weights = numel * self.weight_bits // 8
        if self.scales is Scales.CHANNEL:
            return weights + out_features * 2
        if self.scales is Scales.TENSOR:
            return weights + 2 + 2
        if self.scales is Scales.GROUP:
            group = gptq_group(in_features, group_size)
            return weights + out_features * (in_features // group) * 2 + 16
        return numel * 2


_SCHEMES = (
    SafetensorsScheme("BF16", ArtifactFormat.SAFETENSORS, 16, Scales.NONE, False, None,
                      "plain BF16 weights"),
    SafetensorsScheme("FP16", ArtifactFormat.SAFETENSORS, 16, Scales.NONE, False, None,
                      "plain FP16 weights (refused beyond +-65504 unless forced)"),
    SafetensorsScheme("FP8_DYNAMIC", ArtifactFormat.FP8, 8, Scales.CHANNEL, False, "FP8_DYNAMIC",
                      "FP8 weights per channel, dynamic per-token FP8 activations"),
    SafetensorsScheme("FP8", ArtifactFormat.FP8, 8, Scales.TENSOR, True, "FP8",
                      "FP8 weights and activations, static per-tensor scales"),
    SafetensorsScheme("W4A16", ArtifactFormat.GPTQ, 4, Scales.GROUP, True, "W4A16",
                      "GPTQ int4 weights, one scale per group, 16-bit activations"),
)  # fmt: skip
# Other spellings `convert --quant` takes (llama.cpp's name for FP16).
ALIASES: dict[str, str] = {"F16": "FP16"}
# Names people may expect that quantkit does not make, with what to use instead.
NOT_MADE: dict[str, str] = {
    "W8A16": "quantkit makes GPTQ as W4A16 only; for 8 bits use format fp8 (FP8_DYNAMIC) "
    "or gguf Q8_0.",
}


SAFETENSORS_SCHEMES: dict[str, SafetensorsScheme] = index_by_name(_SCHEMES, "safetensors scheme")
# format -> its quant names, the default first (the order of the table).
SAFETENSORS_QUANTS: dict[str, tuple[str, ...]] = {
    fmt.value: tuple(s.name for s in _SCHEMES if s.format is fmt)
    for fmt in ArtifactFormat
    if fmt not in (ArtifactFormat.GGUF, ArtifactFormat.MLX)  # their own tables
}


def canonical_quant(name: str) -> str:
    """The table's spelling of a safetensors quant name: upper case, aliases resolved."""
    key = name.upper()
    return ALIASES.get(key, key)


def safetensors_scheme(name: str) -> SafetensorsScheme:
    """Look a scheme up by name (case-insensitive); unknown names fail loudly."""
    from ..errors import QuantkitError

    key = canonical_quant(name)
    if key not in SAFETENSORS_SCHEMES:
        raise QuantkitError(
            f"Unknown safetensors quant scheme {name!r}.",
            hint=NOT_MADE.get(key, f"Choose one of: {', '.join(SAFETENSORS_SCHEMES)}."),
        )
    return SAFETENSORS_SCHEMES[key]


def needs_calibration(quant: str) -> bool:
    scheme = SAFETENSORS_SCHEMES.get(canonical_quant(quant))
    return scheme is not None and scheme.needs_data


# --- which layers, how many bytes -----------------------------------------------------------
def is_quantized_linear(
    name: str, shape: tuple[int, ...], *, quantize_lm_head: bool = False
) -> bool:
    """Whether a scheme that quantizes Linears quantizes this tensor: every 2-D `.weight`
    but the embeddings (not Linear) and lm_head (llmcompressor's ignore list, unless
    `quantize_lm_head`)."""
    if len(shape) != 2 or not name.endswith(".weight"):
        return False
    module = name[: -len(".weight")]
    if module.endswith("embed_tokens"):
        return False
    return quantize_lm_head or not module.endswith("lm_head")


def quantized_linears(
    tensors: Iterable[TensorInfo], *, quantize_lm_head: bool = False
) -> list[tuple[str, int]]:
    """(module name, input columns) of every Linear the quantizing schemes quantize."""
    return [
        (t.name[: -len(".weight")], int(t.shape[1]))
        for t in tensors
        if is_quantized_linear(t.name, tuple(t.shape), quantize_lm_head=quantize_lm_head)
    ]


def gptq_group(in_features: int, group_size: int = 128) -> int:
    """`group_size` where it divides the row; else the largest of 64, 32 that does (the
    demo model's 576-wide rows take 64), else one group per row. The backend refuses a
    group size that does not divide every layer; the planner sizes with the fallback."""
    if in_features % group_size == 0:
        return group_size
    for group in (64, 32):
        if in_features % group == 0:
            return group
    return in_features


_FLOAT_DTYPES = {"F64", "F32", "F16", "BF16"}


def safetensors_bytes(
    tensors: Iterable[TensorInfo],
    quant: str,
    group_size: int = 128,
    *,
    quantize_lm_head: bool = False,
) -> int:
    """Bytes of a safetensors artifact's tensors for `quant`: the quantized Linears as the
    scheme writes them, every other float tensor in 16 bits, the rest as they are."""
    scheme = SAFETENSORS_SCHEMES.get(canonical_quant(quant))
    if scheme is None:
        raise ValueError(f"unknown safetensors quant {quant!r}")
    total = 0
    for t in tensors:
        shape = tuple(t.shape)
        if scheme.quantized and is_quantized_linear(
            t.name, shape, quantize_lm_head=quantize_lm_head
        ):
            total += scheme.linear_bytes(shape[0], shape[1], group_size)
        else:
            total += t.numel * 2 if t.dtype in _FLOAT_DTYPES else t.nbytes
    return total
