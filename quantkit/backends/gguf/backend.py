"""The GGUF conversion path: our BF16 (or F16/F32/Q8_0) writer, then llama.cpp's quantizer
for the other types, with an importance matrix where one is asked for or needed."""

from __future__ import annotations

import logging
from collections import Counter
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ...artifact import naming
from ...artifact.manifest import file_record
from ...formats.quants import AUTO_QUANT, gguf_quant
from ...formats.tokens import TokenTypePolicy
from ...planning.cost import quantize_stage
from ...source.model import SourceModel
from ..base import BackendResult, BuildOptions
from .auto.build import quantize_auto, recipe_section
from .auto.request import AutoRequest, check_auto_flags, resolve_auto
from .auto.weights import BF16File, BF16Shards
from .export import export_gguf
from .imatrix.request import AUTO as IMATRIX_AUTO
from .imatrix.request import ImatrixRequest, apply_imatrix, prepare_imatrix, resolve_imatrix
from .quantize import quantize_gguf
from .stream_quantize import quantize_from_shards

if TYPE_CHECKING:
    from ...planning.profiles import HardwareProfile
    from ...planning.target import Target

log = logging.getLogger(__name__)


def artifact_name(source: SourceModel, quant: str) -> str:
    """`<ModelName>-<QUANT>.gguf`, with characters that trouble shells and URLs replaced
    (artifact.naming, which the planner's run command uses too)."""
    return naming.artifact_name(source.name, "gguf", quant)


class GGUFBackend:
    """The GGUF path behind the registry: the importance-matrix setting is resolved from
    the options alone, then read or drawn in `prepare`, then applied in `build`."""

    def __init__(self, target: Target, hardware: HardwareProfile | None, options: BuildOptions):
        self.quant = target.quant
        self.options = options
        self.hardware = hardware
        check_auto_flags(target.quant, options, hardware)
        self._imatrix_setting, self._imatrix_origin = resolve_imatrix(
            options.gguf.imatrix, target.format, target.quant, hardware
        )
        self._imatrix: ImatrixRequest | None = None
        self._auto: AutoRequest | None = None

    def prepare(self, source: SourceModel) -> None:
        if self.quant == AUTO_QUANT.name:
            from ...planning.model_spec import spec_from_source

            self._auto = resolve_auto(spec_from_source(source), self.options, self.hardware)
        calib = self.options.calibration
        self._imatrix = prepare_imatrix(
            self._imatrix_setting, source, self.quant, origin=self._imatrix_origin,
            calibration=calib.source, samples=calib.samples, seq_len=calib.seq_len,
            seed=calib.seed, think_share=calib.think_share, tool_share=calib.tool_share,
        )  # fmt: skip

    @property
    def computes_imatrix(self) -> bool:
        """An importance matrix is computed during the build (not read from a file)."""
        return self._imatrix_setting == IMATRIX_AUTO

    def estimate_bytes(self, source: SourceModel) -> int:
        """Peak disk use, from the tensor inventory (planning.cost.gguf_disk_peak)."""
        from ...planning.cost import gguf_disk_peak
        from ...planning.model_spec import spec_from_source

        auto = self._auto
        return gguf_disk_peak(
            spec_from_source(source), self.quant,
            via_bf16=self.options.gguf.keep_intermediate,
            probes=auto is not None and auto.recipe is None and auto.probe_chunks > 0,
        )  # fmt: skip

    def build(self, source: SourceModel, work: Path, progress=None) -> BackendResult:
        gguf = self.options.gguf
        return make_gguf(
            source, self.quant, work, keep_intermediate=gguf.keep_intermediate,
            token_types=dict(gguf.token_types), pre_tokenizer=gguf.pre_tokenizer,
            imatrix=self._imatrix, auto=self._auto, progress=progress,
        )  # fmt: skip


def make_gguf(
    source: SourceModel,
    quant: str,
    work: Path,
    *,
    keep_intermediate: bool = False,
    token_types: dict[str, str] | None = None,
    pre_tokenizer: str | None = None,
    imatrix: ImatrixRequest | None = None,
    auto: AutoRequest | None = None,
    progress=None,
) -> BackendResult:
    """Write `<Model>-<QUANT>.gguf` (and the importance matrix it used) into `work`; for
    --quant auto also the recipe (`auto`: its budget, or the recipe to apply).

    F32/F16/BF16/Q8_0 are written directly. The llama.cpp types, and --quant auto's
    measurements, probes and file, are made straight from the shards (stream_quantize,
    auto/weights.py), an importance matrix computed from them first;
    --keep-intermediate goes through a BF16 GGUF, kept, and llama.cpp's quantizer instead
    (the same bytes: the test suite proves it)."""
    spec = gguf_quant(quant)
    policy = TokenTypePolicy().with_overrides(token_types or {})
    if spec.written_directly:
        path = work / artifact_name(source, spec.name)
        _export(source, path, spec.name, policy, pre_tokenizer, progress)
        return BackendResult(path, [_gguf_record(path, spec.name, role="artifact")],
                             manifest={}, token_policy=policy)  # fmt: skip
    if not keep_intermediate:
        return _quantize_streamed(source, spec.name, work, policy, pre_tokenizer, imatrix, auto,
                                  progress)  # fmt: skip
    return _quantize_via_bf16(source, spec.name, work, policy, pre_tokenizer, imatrix, auto,
                              progress)  # fmt: skip


def _export(source, path: Path, out_type: str, policy, pre_tokenizer, progress) -> None:
    def on_tensor(done: int, total: int) -> None:
        if progress is not None:
            progress(f"writing {out_type} GGUF", done, total)

    export_gguf(source, path, out_type=out_type, token_policy=policy,
                pre_tokenizer=pre_tokenizer, progress=on_tensor)  # fmt: skip


def _stem(source: SourceModel, quant: str) -> str:
    return artifact_name(source, quant).removesuffix(f"-{quant}.gguf")


def _quantize_streamed(
    source, quant: str, work: Path, policy, pre_tokenizer, imatrix, auto, progress
) -> BackendResult:
    """The shards quantized tensor by tensor (--quant auto: measured and probed from them
    first), with an importance matrix computed from the shards first (nothing but the
    matrix is written for it) or given."""
    matrix, label, extra_files, imatrix_info = None, "", [], None
    if imatrix is not None:
        matrix, label, extra_files, imatrix_info = apply_imatrix(
            imatrix, source, work, _stem(source, quant), progress
        )
    final_path = work / artifact_name(source, quant)
    if auto is not None:
        weights = BF16Shards(source, token_policy=policy, pre_tokenizer=pre_tokenizer)
        return _quantize_auto(source, auto, weights, final_path, work, matrix, label,
                              extra_files, imatrix_info, policy, progress)  # fmt: skip

    def on_tensor(done: int, total: int) -> None:
        if progress is not None:
            progress(quantize_stage(quant), done, total)

    quantize_from_shards(source, final_path, quant, token_policy=policy,
                         pre_tokenizer=pre_tokenizer, imatrix=matrix, imatrix_file=label,
                         progress=on_tensor)  # fmt: skip
    return _result(final_path, quant, extra_files, imatrix_info, {}, policy)


def _quantize_via_bf16(
    source, quant: str, work: Path, policy, pre_tokenizer, imatrix, auto, progress
) -> BackendResult:
    """A BF16 GGUF, kept beside the result (--keep-intermediate), then llama.cpp's
    quantizer on it (or --quant auto's measurements, probes and build)."""
    bf16_path = work / artifact_name(source, "BF16")
    _export(source, bf16_path, "BF16", policy, pre_tokenizer, progress)
    matrix, label, extra_files, imatrix_info = None, "", [], None
    if imatrix is not None:
        matrix, label, extra_files, imatrix_info = apply_imatrix(
            imatrix, source, work, _stem(source, quant), progress
        )
    final_path = work / artifact_name(source, quant)
    if auto is not None:
        result = _quantize_auto(source, auto, BF16File(bf16_path), final_path, work, matrix,
                                label, extra_files, imatrix_info, policy, progress)  # fmt: skip
    else:
        stage = quantize_stage(quant, llama_quantize=True)
        if progress is not None:
            progress(stage, 0, 1)
        quantize_gguf(bf16_path, final_path, quant, imatrix=matrix, imatrix_file=label)
        if progress is not None:
            progress(stage, 1, 1)
        result = _result(final_path, quant, extra_files, imatrix_info, {}, policy)
    result.files.append(_gguf_record(bf16_path, "BF16", role="intermediate"))
    return result


def _quantize_auto(
    source,
    auto: AutoRequest,
    weights,
    final_path: Path,
    work: Path,
    matrix,
    label: str,
    extra_files: list[dict[str, Any]],
    imatrix_info,
    policy,
    progress,
) -> BackendResult:
    """--quant auto from the BF16 model `weights` (auto/weights.py): the recipe chosen or
    given, the file, and the recipe files beside it."""
    recipe, recipe_files = quantize_auto(source, auto, weights, final_path, work,
                                         _stem(source, AUTO_QUANT.name), matrix, label,
                                         progress)  # fmt: skip
    sections = {"recipe": recipe_section(recipe, recipe_files, label)}
    return _result(final_path, AUTO_QUANT.name, [*extra_files, *recipe_files], imatrix_info,
                   sections, policy, gate_quant=recipe.file_type)  # fmt: skip


def _result(
    final_path: Path,
    quant: str,
    extra_files: list[dict[str, Any]],
    imatrix_info,
    sections: dict[str, Any],
    policy,
    gate_quant: str | None = None,
) -> BackendResult:
    """The artifact's record first (with the importance matrix it was made with), then the
    other files; the imatrix section beside the backend's other manifest sections."""
    files = [_gguf_record(final_path, quant, role="artifact"), *extra_files]
    if imatrix_info:
        files[0]["imatrix"] = sections["imatrix"] = imatrix_info
    return BackendResult(final_path, files, manifest=sections, token_policy=policy,
                         gate_quant=gate_quant)  # fmt: skip


def tensor_type_counts(path: Path) -> dict[str, int]:
    from ...formats.gguf_read import tensor_types

    return dict(Counter(tensor_types(path).values()))


def _gguf_record(path: Path, quant: str, *, role: str) -> dict[str, Any]:
    return file_record(
        path, format="gguf", quant=quant, role=role, tensor_types=tensor_type_counts(path)
    )
