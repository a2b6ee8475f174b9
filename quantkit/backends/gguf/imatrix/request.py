"""`--imatrix auto|FILE|none` for a GGUF convert: decide, check early, then apply.

- `resolve_imatrix` (no I/O): the flag, else `auto` for the types llama.cpp refuses to
  make without one, else the profile's `imatrix` key for types of 4 bits and lower, else
  off. Refused: `none` for a type that needs one, and an imatrix for an artifact
  llama.cpp's quantizer does not make.
- `prepare_imatrix` (before any weight is read): `auto` draws and tokenizes the calibration
  chunks; `FILE` is read and matched against the model's tensor names and column counts.
  When `auto` came from a profile and cannot be made (no tokenizer, too little text) the
  convert goes on without a matrix, with a warning and a manifest record; when the user
  asked for it, or the type needs one, it fails.
- `apply_imatrix` (in the GGUF backend, before the first weight is quantized): `auto`
  computes the matrix from the source's weights, layer by layer (source_pass.py), and
  saves `<Model>.imatrix.gguf` into the artifact folder; `FILE` is copied there. Only
  file names, never the user's paths, reach the GGUF and the manifest.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ....errors import CalibrationError, ImatrixError
from ....formats.quants import AUTO_QUANT, gguf_quant

if TYPE_CHECKING:
    from ....source.model import SourceModel
    from .compute import ImatrixData
    from .matrix import Imatrix

log = logging.getLogger(__name__)

AUTO, NONE = "auto", "none"
FILE, SKIPPED = "file", "skipped"
PROFILE_ORIGIN = "profile "  # origin of a profile's default: "profile rtx4090-4bit"
DEFAULT_SAMPLES = 8  # samples joined for `auto`: ~4 chunks of 512 tokens (docs/calibration.md)
IMATRIX_SUFFIX = ".imatrix.gguf"


@dataclass(frozen=True)
class ImatrixRequest:
    mode: str  # AUTO, FILE or SKIPPED (a profile's auto that could not be made)
    origin: str  # why: "--imatrix", "profile NAME", "IQ2_XS needs one"
    data: ImatrixData | None = None  # AUTO: the calibration chunks
    imatrix: Imatrix | None = None  # FILE: the matrix read
    file: Path | None = None
    reason: str = ""  # SKIPPED: why

    def skipped(self) -> dict[str, Any]:
        """The manifest's record of a profile default that was not applied."""
        return {"source": "none", "origin": self.origin, "skipped": self.reason}


def resolve_imatrix(
    setting: str | Path | None, fmt: str, quant: str, hardware: Any
) -> tuple[str | None, str]:
    """(AUTO, a file path or None for off; why). A profile's `imatrix = "auto"` is a default
    for types of 4 bits and lower (the bits class in formats.py); `--imatrix auto` works
    for every type llama.cpp's quantizer makes."""
    setting = None if setting is None else str(setting)  # a Path from the library API
    spec = gguf_quant(quant) if fmt == "gguf" else None
    needs = spec is not None and spec.needs_imatrix
    llama_made = spec is not None and not spec.written_directly
    if setting is None:
        if needs:
            return AUTO, ("--quant auto measures and quantizes with one"
                          if quant == AUTO_QUANT.name else f"{quant} needs one")  # fmt: skip
        if llama_made and getattr(hardware, "imatrix", None) == AUTO:
            if spec.computes_imatrix(AUTO):
                return AUTO, f"{PROFILE_ORIGIN}{hardware.name}"
            return None, (
                f"off: profile {hardware.name}'s imatrix = auto is for types of 4 bits and "
                f"lower, {quant} is {spec.bits}-bit"
            )
        return None, "off by default"
    if setting.lower() == NONE:
        if needs and quant == AUTO_QUANT.name:
            raise ImatrixError(
                "--quant auto needs an importance matrix: it weighs every type's error by it "
                "and quantizes with it.",
                hint="Drop --imatrix none, or pass --imatrix FILE.",
            )
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
        from .compute import CHUNK_SIZE, prepare_imatrix_data

        try:
            if source.tokenizer is None:
                raise ImatrixError(
                    f"{source.path} has no tokenizer to turn calibration text into tokens."
                )
            data = prepare_imatrix_data(
                source.tokenizer,
                calibration=calibration,
                samples=DEFAULT_SAMPLES if samples is None else samples,
                chunk_size=CHUNK_SIZE if seq_len is None else seq_len,
                seed=seed,
                think_share=think_share,
                tool_share=tool_share,
            )
        except (ImatrixError, CalibrationError) as exc:
            return _cannot_compute(exc, origin, quant)
        log.info("imatrix: %d chunks of %d tokens (%s)", len(data.chunks), data.chunk_size, origin)
        return ImatrixRequest(AUTO, origin, data=data)
    from .matrix import check_imatrix, load_imatrix, weight_columns

    path = Path(setting).expanduser()
    imatrix = load_imatrix(path)
    check_imatrix(
        imatrix, weight_columns(source), where=str(path), required=gguf_quant(quant).needs_imatrix
    )
    return ImatrixRequest(FILE, origin, imatrix=imatrix, file=path)


def _cannot_compute(
    exc: ImatrixError | CalibrationError, origin: str, quant: str
) -> ImatrixRequest:
    """A profile's default gives way (warned, recorded); the user's request fails, saying
    how to convert without one."""
    message = str(exc)
    if exc.hint and message.endswith(exc.hint):
        message = message[: -len(exc.hint)].rstrip()
    if origin.startswith(PROFILE_ORIGIN):
        log.warning(
            "No importance matrix: %s The %s default (imatrix = auto) is skipped; converting "
            "without one.", message, origin)  # fmt: skip
        return ImatrixRequest(SKIPPED, origin, reason=message)
    if gguf_quant(quant).needs_imatrix:
        hint = (f"{quant} cannot be made without one: pass --imatrix FILE (from "
                "llama-imatrix), or choose a type such as Q4_K_M with --imatrix none.")  # fmt: skip
    else:
        hint = "Pass --imatrix none to convert without one, or --imatrix FILE."
    if exc.hint:
        hint = f"{exc.hint} {hint}"
    raise type(exc)(f"The importance matrix (--imatrix auto) cannot be computed: {message}",
                    hint=hint) from exc  # fmt: skip


def apply_imatrix(
    request: ImatrixRequest,
    source: SourceModel | None,
    work: Path,
    stem: str,
    progress: Any = None,
) -> tuple[Imatrix | None, str, list[dict[str, Any]], dict[str, Any]]:
    """The matrix to quantize with, its name for `quantize.imatrix.file` (a file name in
    the artifact folder, never the user's path), the file records to add to the manifest
    and the description of what was used. `source` is run only to compute a matrix (AUTO)."""
    from ....artifact.manifest import file_record

    if request.mode == SKIPPED:
        return None, "", [], request.skipped()
    if request.mode == AUTO:
        from ....planning.cost import IMATRIX_STAGE
        from .matrix import save_imatrix
        from .source_pass import compute_imatrix_from_source, source_method

        assert request.data is not None and source is not None

        def on_layer(done: int, total: int) -> None:
            if progress is not None:
                progress(IMATRIX_STAGE, done, total)

        imatrix = compute_imatrix_from_source(source, request.data, progress=on_layer)
        path = save_imatrix(imatrix, work / f"{stem}{IMATRIX_SUFFIX}")
        records = [file_record(path, format="gguf", quant="imatrix", role="imatrix")]
        label = path.name
        described: dict[str, Any] = {"source": "computed", "file": path.name,
                                     "calibration": request.data.calibration}  # fmt: skip
        method = source_method(source)
    else:
        assert request.imatrix is not None and request.file is not None
        path = _copy_into(request.file, work, stem)
        record = file_record(path, format="dat" if request.imatrix.legacy else "gguf",
                             quant="imatrix", role="imatrix")  # fmt: skip
        imatrix, label, records = request.imatrix, path.name, [record]
        described = {"source": "file", "file": path.name, "sha256": record["sha256"]}
        method = "given"
    described.update(origin=request.origin, method=method, **imatrix.describe())
    return imatrix, label, records, described


def _copy_into(given: Path, work: Path, stem: str) -> Path:
    """The user's imatrix file, copied into the artifact folder under its own name (or
    `<Model>.imatrix.gguf` where that name is one quantkit writes itself)."""
    import shutil

    name = given.name
    taken = {p.name for p in work.iterdir()} | {"manifest.json", "README.md", "Modelfile"}
    if name in taken or not name.isprintable():
        name = f"{stem}{'.imatrix.dat' if given.suffix == '.dat' else IMATRIX_SUFFIX}"
    target = work / name
    shutil.copyfile(given, target)
    return target
