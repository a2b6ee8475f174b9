"""K-quants and the other llama.cpp types straight from the safetensors shards: no BF16
file of the whole model on the way.

The artifact is byte for byte what `llama_model_quantize` makes from our BF16 GGUF
(tests/backends/gguf/test_stream_quantize.py), built from llama.cpp's own parts:

- each tensor's type is llama.cpp's choice, from a quantizer dry run over a sparse BF16
  file that holds the metadata and tensor table and no weight bytes on disk;
- each tensor's rows are the BF16 values that file would hold, as float32, quantized by
  `ggml_quantize_chunk` with the importance matrix and checked by `ggml_validate_row_data`,
  as llama.cpp's quantizer does, a block of rows at a time;
- the header is the BF16 file's metadata changed as llama.cpp changes it (the quantization
  version and file type moved to the end, the `quantize.imatrix.*` keys added) and the
  tensors in llama.cpp's order (by layer, then by name).

Memory holds one block of rows, disk the artifact and, for a moment, the sparse header.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import TYPE_CHECKING

import gguf
import numpy as np

from ...errors import ConversionError, ImatrixError
from ...formats.nonfinite import NonFiniteTally
from ...formats.quants import gguf_quant
from ...runtime import cpu, ggml_quant
from ...runtime.prefetch import Prefetched
from ...source.model import SourceModel
from .export import ExportPlan, ProgressFn, TensorJob, job_blocks, metadata_writer, plan_export
from .export import write_tensors as write_gguf_tensors
from .quantize import imatrix_metadata, llama_tensor_types, require_imatrix_if_needed
from .tensors import converted_blocks, output_nbytes, to_float32

if TYPE_CHECKING:
    from ...formats.tokens import TokenTypePolicy
    from .imatrix.matrix import Imatrix

Q = gguf.GGMLQuantizationType
ALIGNMENT = gguf.GGUF_DEFAULT_ALIGNMENT  # llama.cpp's quantizer always writes this one
_LAYER = re.compile(r"blk\.(\d+)\.")


def quantize_from_shards(
    source: SourceModel,
    out_file: Path,
    quant: str,
    *,
    token_policy: TokenTypePolicy | None = None,
    pre_tokenizer: str | None = None,
    imatrix: Imatrix | None = None,
    imatrix_file: str = "",
    tensor_types: Mapping[str, str] | None = None,
    threads: int | None = None,
    progress: ProgressFn | None = None,
) -> None:
    """Write `source` quantized to `quant` at `out_file`, as llama.cpp's quantizer would
    from its BF16 GGUF with the same importance matrix (`imatrix_file` names it in the
    metadata) and per-tensor overrides `tensor_types`. NonFiniteWeightsError, leaving no
    file, when the source holds NaN or infinity."""
    spec = gguf_quant(quant)
    require_imatrix_if_needed(spec, imatrix)
    plan = plan_export(source, "BF16", token_policy=token_policy, pre_tokenizer=pre_tokenizer)
    types = _llama_types(source, plan, out_file, spec.name, imatrix, tensor_types)
    writer = metadata_writer(source, plan, out_file, spec.ftype)
    _as_llama_quantizer_writes(writer.kv_data[0], spec.ftype, imatrix, imatrix_file)
    jobs = sorted(plan.jobs, key=loader_order)
    for job in jobs:
        qtype = Q[types[job.gguf_name]]
        nbytes = output_nbytes(job.shape, qtype)
        writer.add_tensor_info(job.gguf_name, job.shape, np.dtype(np.float32), nbytes,
                               raw_dtype=qtype)  # fmt: skip
    tally = NonFiniteTally()
    threads = threads or cpu.threads()
    # The next block is read and widened while the cores quantize this one.
    inputs = Prefetched(_source_blocks(jobs, types, tally))
    try:
        write_gguf_tensors(
            writer, out_file, jobs,
            lambda job: _tensor_blocks(job, types[job.gguf_name], inputs, imatrix, threads),
            progress,
        )  # fmt: skip
    except BaseException:
        out_file.unlink(missing_ok=True)
        raise
    finally:
        inputs.close()
    if tally:
        out_file.unlink(missing_ok=True)
        tally.raise_if_any()


def loader_order(job: TensorJob) -> tuple[int, str]:
    """llama.cpp's model loader keeps tensors sorted by layer (none first), then by name;
    its quantizer writes them in that order."""
    layer = _LAYER.match(job.gguf_name)
    return (int(layer.group(1)) if layer else -1, job.gguf_name)


def _llama_types(
    source: SourceModel,
    plan: ExportPlan,
    out_file: Path,
    quant: str,
    imatrix: Imatrix | None,
    tensor_types: Mapping[str, str] | None,
) -> dict[str, str]:
    """llama.cpp's type for every tensor, from a dry run over a sparse BF16 file beside
    `out_file` (removed afterwards)."""
    sparse = out_file.with_name(f".quantkit-types-{out_file.name}")
    try:
        write_sparse_bf16(source, plan, sparse)
        types = llama_tensor_types(sparse, quant, imatrix=imatrix, tensor_types=tensor_types)
    finally:
        sparse.unlink(missing_ok=True)
    missing = [job.gguf_name for job in plan.jobs if job.gguf_name not in types]
    if missing:
        raise ConversionError(
            f"llama.cpp's dry run named no type for {len(missing)} tensor(s): {missing[0]}, ..."
        )
    return types


def write_sparse_bf16(source: SourceModel, plan: ExportPlan, path: Path) -> None:
    """The BF16 GGUF's metadata and tensor table, then a hole as long as its data: the
    loader checks every tensor lies within the file, the dry run reads none of them."""
    writer = metadata_writer(source, plan, path, gguf_quant("BF16").ftype)
    for job in plan.jobs:
        writer.add_tensor_info(job.gguf_name, job.shape, np.dtype(np.float32), job.nbytes,
                               raw_dtype=job.qtype)  # fmt: skip
    writer.write_header_to_file(path)
    writer.write_kv_data_to_file()
    writer.write_ti_data_to_file()
    assert writer.fout is not None
    data_start = writer.ggml_pad(writer.fout[0].tell(), ALIGNMENT)
    data = sum(writer.ggml_pad(job.nbytes, ALIGNMENT) for job in plan.jobs)
    writer.close()
    os.truncate(path, data_start + data)


def _as_llama_quantizer_writes(
    kv: dict[str, gguf.GGUFValue], ftype: int, imatrix: Imatrix | None, imatrix_file: str
) -> None:
    """The BF16 file's metadata changed in place as llama_model_quantize changes it: each
    key it sets is removed and appended (gguf_set_val_*), in its order."""
    settings: list[tuple[str, gguf.GGUFValue]] = [
        (gguf.Keys.General.QUANTIZATION_VERSION,
         gguf.GGUFValue(gguf.GGML_QUANT_VERSION, gguf.GGUFValueType.UINT32)),
        (gguf.Keys.General.FILE_TYPE, gguf.GGUFValue(ftype, gguf.GGUFValueType.UINT32)),
    ]  # fmt: skip
    if imatrix is not None:
        for key, value in imatrix_metadata(imatrix, imatrix_file):
            if isinstance(value, bytes):
                settings.append((key, gguf.GGUFValue(value.decode(), gguf.GGUFValueType.STRING)))
            else:
                settings.append((key, gguf.GGUFValue(abs(value), gguf.GGUFValueType.UINT32)))
    for key, value in settings:
        kv.pop(key, None)
        kv[key] = value


def _source_blocks(
    jobs: list[TensorJob], types: Mapping[str, str], tally: NonFiniteTally
) -> Iterator[tuple[str, bytes | np.ndarray | None]]:
    """(tensor, block) for every job in turn, then (tensor, None) at its end: the BF16
    file's bytes where llama.cpp keeps its type, else its values as float32 rows."""
    for job in jobs:
        copied = types[job.gguf_name] == job.qtype.name
        for block in job_blocks(job, tally) if copied else _float_rows(job, tally):
            yield job.gguf_name, block
        yield job.gguf_name, None


def _tensor_blocks(
    job: TensorJob,
    target: str,
    inputs: Iterator[tuple[str, bytes | np.ndarray | None]],
    imatrix: Imatrix | None,
    threads: int,
) -> Iterator[bytes]:
    """The job's data in llama.cpp's type `target`, from its blocks in `inputs`: copied
    where llama.cpp keeps the BF16 file's type, else quantized a block of rows at a time."""
    copied = target == job.qtype.name
    row = job.shape[-1]
    importance = None if copied else _importance(job, row, imatrix)
    for name, block in inputs:
        if name != job.gguf_name:
            raise AssertionError(f"blocks of {name} where {job.gguf_name}'s were expected")
        if block is None:
            return
        if copied:
            yield block  # type: ignore[misc]
            continue
        packed = _quantize(target, block.reshape(-1, row), importance, threads)
        if not ggml_quant.valid_rows(target, packed):
            raise ConversionError(f"{job.gguf_name}: ggml rejected its own {target} rows.")
        yield packed.tobytes()


def _quantize(
    target: str, rows: np.ndarray, importance: np.ndarray | None, threads: int
) -> np.ndarray:
    try:
        return ggml_quant.quantize_rows(target, rows, importance, threads=threads)
    except ValueError as exc:  # a type that needs importance weights, given none
        raise ImatrixError(
            f"{target} needs an importance matrix entry for every tensor it quantizes ({exc})",
            hint="Pass --imatrix auto or a matrix computed for this model.",
        ) from exc


def _float_rows(job: TensorJob, tally: NonFiniteTally) -> Iterator[np.ndarray]:
    """The values the BF16 file holds for the job, as float32 blocks (BF16 widens exactly,
    as llama.cpp's quantizer reads it)."""
    if job.generated is not None:
        yield job.generated.astype(np.float32)
        return
    assert job.source is not None
    for chunk in converted_blocks(job.source, job.qtype, job.heads, tally):
        if job.qtype == Q.BF16:
            yield to_float32(np.frombuffer(chunk, dtype=np.uint16), "BF16")
        else:  # an F32 tensor that llama.cpp quantizes anyway
            yield np.frombuffer(chunk, dtype=np.float32)


def _importance(job: TensorJob, row: int, imatrix: Imatrix | None) -> np.ndarray | None:
    """The tensor's importance weights as llama.cpp picks them: none without a matrix or an
    entry; an entry of the wrong length is an error, except for the token embeddings,
    which llama.cpp then quantizes without one."""
    if imatrix is None or job.gguf_name not in imatrix.entries:
        return None
    values = imatrix.entries[job.gguf_name].mean()
    if values.size == row:
        return values
    if job.gguf_name.startswith("token_embd."):
        return None
    raise ImatrixError(
        f"The importance matrix has {values.size} values for {job.gguf_name}, which has "
        f"rows of {row}.",
        hint="It was computed for another model; pass a matching file or --imatrix auto.",
    )
