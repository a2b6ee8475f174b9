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
from ...source.model import SourceModel
from ..base import BackendResult, BuildOptions
from .auto.build import quantize_auto, recipe_section
from .auto.request import AutoRequest, check_auto_flags, resolve_auto
from .export import export_gguf
from .imatrix.request import ImatrixRequest, apply_imatrix, prepare_imatrix, resolve_imatrix
from .quantize import quantize_gguf

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

    def estimate_bytes(self, source: SourceModel) -> int:
        """Peak disk use: the final file plus, for llama.cpp types, the BF16 intermediate
        that exists until quantization ends; sizes from the tensor inventory."""
        from ...planning.memory import gguf_file_bytes
        from ...planning.model_spec import spec_from_source

        spec = spec_from_source(source)
        if self._auto is not None:
            # Q8_0 is auto's largest type: a bound on the file, on the probes' all-Q8_0
            # shards and on their probe-type shards (every other layer, so about half of
            # it: 2 x Q8_0 keeps a margin; probes.py). All are deleted before the artifact
            # is written.
            probing = self._auto.recipe is None and self._auto.probe_chunks > 0
            q8 = gguf_file_bytes(spec, "Q8_0")
            return gguf_file_bytes(spec, "BF16") + (2 * q8 if probing else q8)
        final = gguf_file_bytes(spec, self.quant)
        if gguf_quant(self.quant).written_directly:
            return final
        return gguf_file_bytes(spec, "BF16") + final

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
    --quant auto also the recipe (`auto`: its budget, or the recipe to apply)."""
    spec = gguf_quant(quant)
    policy = TokenTypePolicy().with_overrides(token_types or {})
    direct_type = spec.name if spec.written_directly else "BF16"
    direct_path = work / artifact_name(source, direct_type)

    def on_tensor(done: int, total: int) -> None:
        if progress is not None:
            progress(f"writing {direct_type} GGUF", done, total)

    export_gguf(
        source,
        direct_path,
        out_type=direct_type,
        token_policy=policy,
        pre_tokenizer=pre_tokenizer,
        progress=on_tensor,
    )
    final_path = direct_path
    extra_files: list[dict[str, Any]] = []
    imatrix_info = None
    sections: dict[str, Any] = {}
    gate_quant = None
    if not spec.written_directly:
        matrix, label = None, ""
        stem = artifact_name(source, spec.name).removesuffix(f"-{spec.name}.gguf")
        if imatrix is not None:
            matrix, label, extra_files, imatrix_info = apply_imatrix(
                imatrix, direct_path, work, stem, progress
            )
        final_path = work / artifact_name(source, spec.name)
        if auto is not None:
            recipe, recipe_files = quantize_auto(source, auto, direct_path, final_path, work,
                                                 stem, matrix, label, progress)  # fmt: skip
            extra_files += recipe_files
            sections["recipe"] = recipe_section(recipe, recipe_files, label)
            gate_quant = recipe.file_type
        else:
            if progress is not None:
                progress(f"llama.cpp quantize to {spec.name}", 0, 1)
            quantize_gguf(direct_path, final_path, spec.name, imatrix=matrix, imatrix_file=label)
            if progress is not None:
                progress(f"llama.cpp quantize to {spec.name}", 1, 1)
    files = [_gguf_record(final_path, spec.name, role="artifact"), *extra_files]
    if imatrix_info is not None:
        files[0]["imatrix"] = imatrix_info
    if final_path != direct_path:
        if keep_intermediate:
            files.append(_gguf_record(direct_path, direct_type, role="intermediate"))
        else:
            direct_path.unlink()
    if imatrix_info:
        sections["imatrix"] = imatrix_info
    return BackendResult(final_path, files, manifest=sections, token_policy=policy,
                         gate_quant=gate_quant)  # fmt: skip


def tensor_type_counts(path: Path) -> dict[str, int]:
    from ...formats.gguf_read import tensor_types

    return dict(Counter(tensor_types(path).values()))


def _gguf_record(path: Path, quant: str, *, role: str) -> dict[str, Any]:
    return file_record(
        path, format="gguf", quant=quant, role=role, tensor_types=tensor_type_counts(path)
    )
