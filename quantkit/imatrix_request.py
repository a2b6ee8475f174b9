"""`--imatrix auto|FILE|none` for a GGUF convert: decide, check early, then apply.

- `resolve_imatrix` (no I/O): the flag, else the profile's `imatrix` key, else `auto` for
  the types llama.cpp refuses to make without one and off for the rest. Refused: `none` for
  such a type, and an imatrix for an artifact llama.cpp's quantizer does not make.
- `prepare_imatrix` (before any weight is read): `auto` draws and tokenizes the calibration
  chunks; `FILE` is read and matched against the model's tensor names and column counts.
- `apply_imatrix` (in the GGUF backend, after the BF16 file exists): `auto` computes the
  matrix in llama.cpp and saves `<Model>.imatrix.gguf` into the artifact folder.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .errors import ImatrixError
from .formats import gguf_quant

if TYPE_CHECKING:
    from .imatrix import Imatrix
    from .imatrix_compute import ImatrixData
    from .source import SourceModel

log = logging.getLogger(__name__)

AUTO, NONE = "auto", "none"
DEFAULT_SAMPLES = 8  # samples joined for `auto`: ~4 chunks of 512 tokens (docs/calibration.md)
IMATRIX_SUFFIX = ".imatrix.gguf"


@dataclass(frozen=True)
class ImatrixRequest:
    mode: str  # AUTO or "file"
    origin: str  # why: "--imatrix", "profile NAME", "IQ2_XS needs one"
    data: ImatrixData | None = None  # AUTO: the calibration chunks
    imatrix: Imatrix | None = None  # file: the matrix read
    file: Path | None = None


def resolve_imatrix(
    setting: str | Path | None, fmt: str, quant: str, hardware: Any
) -> tuple[str | None, str]:
    """(AUTO, a file path or None for off; why)."""
    setting = None if setting is None else str(setting)  # a Path from the library API
    needs = fmt == "gguf" and gguf_quant(quant).needs_imatrix
    llama_made = fmt == "gguf" and not gguf_quant(quant).written_directly
    if setting is None:
        if needs:
            return AUTO, f"{quant} needs one"
        if llama_made and getattr(hardware, "imatrix", None) == AUTO:
            return AUTO, f"profile {hardware.name}"
        return None, "off by default"
    if setting.lower() == NONE:
        if needs:
            raise ImatrixError(
                f"{quant} needs an importance matrix: llama.cpp refuses to make it without one.",
                hint="Drop --imatrix none (auto computes one from the calibration set), pass "
                "--imatrix FILE, or choose a type such as Q4_K_M or IQ4_XS.",
            )
        return None, "--imatrix none"
    if not llama_made:
        made_by = "quantkit's own GGUF writer" if fmt == "gguf" else f"the {fmt} path"
        raise ImatrixError(
            f"--imatrix applies to GGUF types made by llama.cpp's quantizer; {quant} is made "
            f"by {made_by}.",
            hint="Drop --imatrix, or choose a llama.cpp type such as Q4_K_M.",
        )
    return (AUTO if setting.lower() == AUTO else setting), "--imatrix"


def prepare_imatrix(
    setting: str | None,
    source: SourceModel,
    quant: str,
    *,
    origin: str,
    calibration: str | None = None,
    samples: int | None = None,
    seq_len: int | None = None,
    seed: int = 0,
    think_share: float | None = None,
    tool_share: float | None = None,
) -> ImatrixRequest | None:
    """Everything that can fail before the heavy work: the calibration chunks for AUTO,
    the file and its fit to this model for FILE."""
    if setting is None:
        return None
    if setting == AUTO:
        from .imatrix_compute import CHUNK_SIZE, prepare_imatrix_data

        if source.tokenizer is None:
            raise ImatrixError(f"{source.path} has no tokenizer; --imatrix auto needs one.")
        data = prepare_imatrix_data(
            source.tokenizer,
            calibration=calibration,
            samples=DEFAULT_SAMPLES if samples is None else samples,
            chunk_size=CHUNK_SIZE if seq_len is None else seq_len,
            seed=seed,
            think_share=think_share,
            tool_share=tool_share,
        )
        log.info("imatrix: %d chunks of %d tokens (%s)", len(data.chunks), data.chunk_size, origin)
        return ImatrixRequest(AUTO, origin, data=data)
    from .imatrix import check_imatrix, load_imatrix, weight_columns

    path = Path(setting).expanduser()
    imatrix = load_imatrix(path)
    check_imatrix(
        imatrix, weight_columns(source), where=str(path), required=gguf_quant(quant).needs_imatrix
    )
    return ImatrixRequest("file", origin, imatrix=imatrix, file=path)


def apply_imatrix(
    request: ImatrixRequest, bf16: Path, work: Path, stem: str, progress: Any = None
) -> tuple[Imatrix, str, list[dict[str, Any]], dict[str, Any]]:
    """The matrix to quantize with, its name for `quantize.imatrix.file`, the file records
    to add to the manifest and the description of what was used."""
    from .manifest import file_record, sha256_file

    if request.mode == AUTO:
        from .imatrix import save_imatrix
        from .imatrix_compute import compute_imatrix

        assert request.data is not None

        def on_chunk(done: int, total: int) -> None:
            if progress is not None:
                progress("importance matrix (llama.cpp)", done, total)

        imatrix = compute_imatrix(bf16, request.data, progress=on_chunk)
        path = save_imatrix(imatrix, work / f"{stem}{IMATRIX_SUFFIX}")
        records = [file_record(path, format="gguf", quant="imatrix", role="imatrix")]
        label = path.name
        described: dict[str, Any] = {"source": "computed", "file": path.name,
                                     "calibration": request.data.calibration}  # fmt: skip
    else:
        assert request.imatrix is not None and request.file is not None
        imatrix, label, records = request.imatrix, str(request.file), []
        described = {"source": "file", "file": str(request.file),
                     "sha256": sha256_file(request.file)}  # fmt: skip
    described.update(
        origin=request.origin,
        method="llama.cpp cb_eval on the BF16 GGUF (as llama-imatrix)"
        if request.mode == AUTO
        else "given",
        **imatrix.describe(),
    )
    return imatrix, label, records, described
