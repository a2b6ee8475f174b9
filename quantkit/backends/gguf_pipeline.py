"""The GGUF conversion path: our BF16 (or F16/F32/Q8_0) writer, then llama.cpp's quantizer
for the other types, then the checks in llama.cpp itself."""

from __future__ import annotations

import logging
import re
from collections import Counter
from pathlib import Path
from typing import Any

from ..formats import gguf_quant
from ..imatrix_request import ImatrixRequest, apply_imatrix
from ..manifest import file_record
from ..source import SourceModel
from .gguf.quantize import quantize_gguf
from .gguf.vocab import TokenTypePolicy
from .gguf_export import export_gguf

log = logging.getLogger(__name__)


def artifact_name(source: SourceModel, quant: str) -> str:
    """`<ModelName>-<QUANT>.gguf`, with characters that trouble shells and URLs replaced."""
    safe = re.sub(r"[^A-Za-z0-9._-]+", "-", source.name).strip("-") or "model"
    return f"{safe}-{quant}.gguf"


def make_gguf(
    source: SourceModel,
    quant: str,
    work: Path,
    *,
    verify: bool = True,
    keep_intermediate: bool = False,
    token_types: dict[str, str] | None = None,
    pre_tokenizer: str | None = None,
    imatrix: ImatrixRequest | None = None,
    progress=None,
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
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
    if not spec.written_directly:
        matrix, label = None, ""
        if imatrix is not None:
            stem = artifact_name(source, spec.name).removesuffix(f"-{spec.name}.gguf")
            matrix, label, extra_files, imatrix_info = apply_imatrix(
                imatrix, direct_path, work, stem, progress
            )
        if progress is not None:
            progress(f"llama.cpp quantize to {spec.name}", 0, 1)
        final_path = work / artifact_name(source, spec.name)
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
    checks: list[dict[str, Any]] = []
    if verify:
        from ..verify import check_gguf

        checks = [c.to_dict() for c in check_gguf(final_path, source, policy=policy)]
    return files, checks


def tensor_type_counts(path: Path) -> dict[str, int]:
    from ..gguf_header import tensor_types

    return dict(Counter(tensor_types(path).values()))


def _gguf_record(path: Path, quant: str, *, role: str) -> dict[str, Any]:
    return file_record(
        path, format="gguf", quant=quant, role=role, tensor_types=tensor_type_counts(path)
    )
