"""The safetensors conversion paths: plain BF16/FP16 folders (our streaming writer), FP8
and GPTQ W4A16 in the compressed-tensors format (llmcompressor), optionally the classic
GPTQ layout beside it; then the tokenizer/template files.

Everything that can be refused is refused by `preflight` before any weight is read:
format/scheme pairs, missing calibration data, a group size that does not divide every
quantized layer, an already-quantized source, bad GPTQ options.
"""

from __future__ import annotations

import logging
import re
from collections import Counter
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ...artifact.manifest import file_record
from ...errors import ConversionError, QuantkitError
from ...formats import schemes
from ...formats.schemes import SAFETENSORS_QUANTS, SAFETENSORS_SCHEMES
from ...source.model import SourceModel
from ..base import BackendResult, BuildOptions
from .export import DEFAULT_MAX_SHARD_SIZE, INDEX_NAME

if TYPE_CHECKING:
    from ...calibration.sets import CalibrationSet
    from ...planning.profiles import HardwareProfile
    from ...planning.target import Target

log = logging.getLogger(__name__)

QUANTS: dict[str, tuple[str, ...]] = SAFETENSORS_QUANTS  # formats.schemes' table
_NEEDS_DATA = {s.name for s in SAFETENSORS_SCHEMES.values() if s.needs_data}
GPTQ_FORMATS = ("compressed-tensors", "gptq")
# The group sizes vLLM's Marlin kernels take (besides per-channel); exllama and
# transformers take any divisor.
CANDIDATE_GROUP_SIZES = (32, 64, 128)


class GroupSizeError(ConversionError):
    """The GPTQ group size does not divide the input columns of some layers."""


def needs_calibration(quant: str) -> bool:
    """Whether a scheme needs calibration data (static FP8 scales, GPTQ Hessians)."""
    return quant.upper() in _NEEDS_DATA


def quantized_linears(source: SourceModel) -> list[tuple[str, int]]:
    """(module name, input columns) of every Linear the FP8/GPTQ schemes quantize: 2-D
    weights except the embeddings and lm_head (formats.schemes.is_quantized_linear)."""
    return schemes.quantized_linears(source.tensors)


def check_group_size(source: SourceModel, group_size: int) -> None:
    """Refuse a group size that does not divide the input columns of every quantized
    layer, naming the layers and the group sizes that would work. Pure: headers only."""
    if group_size <= 0:
        raise GroupSizeError(
            f"Group size must be a positive number of columns, not {group_size}.",
            hint="Use 128 (the usual GPTQ group) or 64.",
        )
    layers = quantized_linears(source)
    bad = [(name, cols) for name, cols in layers if cols % group_size]
    if not bad:
        if group_size not in CANDIDATE_GROUP_SIZES:
            log.warning("Group size %d: vLLM's Marlin kernels take 32, 64 or 128 only", group_size)
        return
    columns = sorted({cols for _, cols in layers})
    valid = [g for g in CANDIDATE_GROUP_SIZES if all(c % g == 0 for c in columns)]
    raise GroupSizeError(
        f"Group size {group_size} does not divide the input columns of {len(bad)} layers: "
        f"{_describe_layers(bad)}.",
        hint=f"Group sizes that divide every layer: {', '.join(map(str, valid))}."
        if valid
        else "No usual group size divides every layer; use FP8 or GGUF for this model.",
    )


def _describe_layers(bad: list[tuple[str, int]]) -> str:
    """`mlp.up_proj, self_attn.q_proj (576 columns) in layers 0-29, e.g. model.layers...`"""
    groups: dict[int, tuple[set[str], set[int]]] = {}
    for name, cols in bad:
        match = re.match(r"(?:.*\.)?layers\.(\d+)\.(.+)$", name)
        kinds, layers = groups.setdefault(cols, (set(), set()))
        kinds.add(match.group(2) if match else name)
        if match:
            layers.add(int(match.group(1)))
    parts = []
    for cols, (kinds, layers) in sorted(groups.items()):
        where = f" in layers {min(layers)}-{max(layers)}" if layers else ""
        parts.append(f"{', '.join(sorted(kinds))} ({cols} columns){where}")
    return "; ".join(parts) + f", e.g. {bad[0][0]}"


def preflight(
    source: SourceModel,
    fmt: str,
    quant: str,
    *,
    calibration=None,
    group_size: int = 128,
    dampening: float = 0.01,
    gptq_format: str = "compressed-tensors",
) -> tuple[str, str]:
    """Every check that needs no weights; returns the normalised (format, quant)."""
    fmt, quant = fmt.lower(), quant.upper()
    if quant == "F16":
        quant = "FP16"
    if fmt not in QUANTS:
        raise ConversionError(
            f"{fmt!r} is not a safetensors format.", hint="Use safetensors, fp8 or gptq."
        )
    if quant not in QUANTS[fmt]:
        raise ConversionError(
            f"{fmt} artifacts are made as {' or '.join(QUANTS[fmt])}, not {quant}.",
            hint=f"Pass --quant {QUANTS[fmt][0]}.",
        )
    if source.config.get("quantization_config"):
        method = source.config["quantization_config"].get("quant_method", "unknown")
        raise ConversionError(
            f"{source.name} is already quantized ({method}).",
            hint="Start from the BF16/FP16 original model.",
        )
    if needs_calibration(quant) and calibration is None:
        raise ConversionError(
            f"{quant} needs calibration data.",
            hint="Pass a calibration set (the built-in mix is used by default in convert).",
        )
    if fmt == "gptq":
        check_group_size(source, group_size)
        if gptq_format not in GPTQ_FORMATS:
            raise ConversionError(
                f"Unknown GPTQ layout {gptq_format!r}.", hint="Use compressed-tensors or gptq."
            )
        if not 0 < dampening < 1:
            raise ConversionError(
                f"GPTQ dampening must lie between 0 and 1, not {dampening}.",
                hint="0.01 is the usual value; 0.05-0.1 if Hessians fail to invert.",
            )
    return fmt, quant


class SafetensorsBackend:
    """The safetensors, FP8 and GPTQ paths behind the registry: calibration data is read
    and every refusal made in `prepare`, before any weight is read."""

    def __init__(self, target: Target, hardware: HardwareProfile | None, options: BuildOptions):
        from ..gguf.imatrix.request import resolve_imatrix

        resolve_imatrix(options.gguf.imatrix, target.format, target.quant, hardware)  # refuses
        self.fmt, self.quant = target.format, target.quant
        self.options = options
        self.calibration: CalibrationSet | None = None

    def prepare(self, source: SourceModel) -> None:
        """Calibration data (read and tokenized now, so a bad file fails in seconds), the
        format/quant pair, the group size."""
        if needs_calibration(self.quant):
            from ...calibration.sets import load_calibration

            if source.tokenizer is None:
                raise QuantkitError(f"{source.path} has no tokenizer; calibration needs one.")
            calib = self.options.calibration
            self.calibration = load_calibration(
                calib.source,
                source.tokenizer,
                samples=256 if calib.samples is None else calib.samples,
                seq_len=2048 if calib.seq_len is None else calib.seq_len,
                seed=calib.seed,
                think_share=calib.think_share,
                tool_share=calib.tool_share,
            )
        gptq = self.options.gptq
        preflight(
            source, self.fmt, self.quant, calibration=self.calibration,
            group_size=gptq.group_size, dampening=gptq.dampening, gptq_format=gptq.layout,
        )  # fmt: skip

    def estimate_bytes(self, source: SourceModel) -> int:
        gptq, folder = self.options.gptq, self.options.safetensors
        return estimate_bytes(
            source, self.fmt, self.quant, gptq.group_size, gptq.layout,
            quantize_lm_head=folder.quantize_lm_head,
        )  # fmt: skip

    def build(self, source: SourceModel, work: Path, progress=None) -> BackendResult:
        gptq, folder = self.options.gptq, self.options.safetensors
        result = make_safetensors(
            source, self.fmt, self.quant, work, calibration=self.calibration,
            group_size=gptq.group_size, actorder=gptq.actorder, dampening=gptq.dampening,
            gptq_format=gptq.layout, max_shard_size=folder.max_shard_size,
            force=self.options.force, quantize_lm_head=folder.quantize_lm_head,
            verify=self.options.verify, progress=progress,
        )  # fmt: skip
        if self.calibration is not None:
            result.manifest["calibration"] = self.calibration.describe()
        return result


def make_safetensors(
    source: SourceModel,
    fmt: str,
    quant: str,
    work: Path,
    *,
    calibration=None,
    group_size: int = 128,
    actorder: bool = False,
    dampening: float = 0.01,
    gptq_format: str = "compressed-tensors",
    max_shard_size: int = DEFAULT_MAX_SHARD_SIZE,
    force: bool = False,
    quantize_lm_head: bool = False,
    verify: bool = True,
    progress=None,
) -> BackendResult:
    """Write a safetensors artifact folder into `work`. With `verify`, the classic GPTQ
    layout (when written) is checked to decode to the same weights as the compressed one."""
    from ...artifact.tokenizer_files import write_model_config, write_tokenizer_files

    fmt, quant = preflight(
        source, fmt, quant, calibration=calibration, group_size=group_size,
        dampening=dampening, gptq_format=gptq_format,
    )  # fmt: skip
    if fmt == "safetensors":
        from .export import export_safetensors, torch_dtype_name

        def on_tensor(done: int, total: int) -> None:
            if progress is not None:
                progress(f"writing {quant} safetensors", done, total)

        export_safetensors(
            source, work, quant, max_shard_size=max_shard_size, force=force, progress=on_tensor
        )
        write_model_config(source, work, torch_dtype_name(quant))
    else:
        from .compressed import quantize_model

        quantize_model(
            source, quant, work, calibration=calibration, group_size=group_size,
            actorder=actorder, dampening=dampening, max_shard_size=max_shard_size,
            quantize_lm_head=quantize_lm_head, progress=progress,
        )  # fmt: skip
    write_tokenizer_files(source, work)
    checks = []
    if fmt == "gptq" and gptq_format == "gptq":
        classic = _write_classic(source, work, dampening, progress)
        if verify:
            from .gptq_classic import layouts_match_check

            checks.append(layouts_match_check(work, classic))
    return BackendResult(work, folder_records(work, fmt, quant), checks=checks)


def _write_classic(source: SourceModel, work: Path, dampening: float, progress) -> Path:
    from ...artifact.tokenizer_files import write_tokenizer_files
    from .gptq_classic import CLASSIC_DIR, write_classic

    if progress is not None:
        progress("repacking to the classic GPTQ layout", 0, 1)
    out = work / CLASSIC_DIR
    write_classic(work, out, dampening=dampening)
    write_tokenizer_files(source, out)
    if progress is not None:
        progress("repacking to the classic GPTQ layout", 1, 1)
    return out


def folder_records(work: Path, fmt: str, quant: str) -> list[dict[str, Any]]:
    """One manifest record per file of the folder (relative names), weights first, with
    the tensor dtype counts of every safetensors file."""
    from ...formats.safetensors_index import read_header

    records = []
    paths = sorted(
        (p for p in work.rglob("*") if p.is_file() and p.name != "manifest.json"),
        key=lambda p: (_classic(p, work), p.suffix != ".safetensors", str(p.relative_to(work))),
    )
    for path in paths:
        role = f"classic-gptq {_role(path)}" if _classic(path, work) else _role(path)
        extra: dict[str, Any] = {"format": fmt, "quant": quant, "role": role}
        if path.suffix == ".safetensors":
            header, _ = read_header(path)
            types = Counter(v["dtype"] for k, v in header.items() if k != "__metadata__")
            extra["tensor_types"] = dict(sorted(types.items()))
        record = file_record(path, **extra)
        record["name"] = str(path.relative_to(work))
        records.append(record)
    return records


def _classic(path: Path, work: Path) -> bool:
    return path.relative_to(work).parts[0] == "classic-gptq"


def _role(path: Path) -> str:
    if path.suffix == ".safetensors":
        return "artifact"
    if path.name == INDEX_NAME:
        return "index"
    return "metadata"


def estimate_bytes(source: SourceModel, fmt: str, quant: str, group_size: int = 128,
                   gptq_format: str = "compressed-tensors", *,
                   quantize_lm_head: bool = False) -> int:  # fmt: skip
    """Size of the weight files, from the tensor inventory (no weights read)."""
    # The planner's count (planning.memory.safetensors_weights_bytes) over every tensor.
    total = schemes.safetensors_bytes(
        source.tensors, quant, group_size, quantize_lm_head=quantize_lm_head
    )
    return total * 2 if fmt == "gptq" and gptq_format == "gptq" else total
