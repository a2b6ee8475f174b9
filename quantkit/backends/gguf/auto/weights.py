"""The BF16 model that `--quant auto` measures, probes and quantizes, in one of two forms:

    BF16Shards  the source shards read as our BF16 GGUF would hold them, a block of rows at
                a time (the default: no BF16 file of the whole model is written)
    BF16File    that BF16 GGUF itself, memory-mapped (--keep-intermediate writes it)

Both give the same tensors in the same order, each row the same float32 values (BF16
widens exactly), so the relative errors, the probe shards and the final file come out the
same from either (tests/backends/gguf/test_auto.py compares them). The shards' form reads
each tensor whole, block by block, to sample its rows: a read of the model where the file
reads only the sampled rows, which also finds NaN and infinity before anything is probed.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from math import prod
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

import numpy as np
from gguf import GGMLQuantizationType as Q

from ....formats.gguf_split import SetHeader, set_header
from ....formats.nonfinite import NonFiniteTally
from ....formats.quants import gguf_quant
from ....planning.mix import FileLayout
from ..export import job_blocks, metadata_writer, plan_export
from ..tensors import BLOCK_BYTES, to_float32

if TYPE_CHECKING:
    from ....formats.tokens import TokenTypePolicy
    from ....source.model import SourceModel
    from ..imatrix.matrix import Imatrix

TensorProgress = Callable[[int, int], None]  # (done, total)


@dataclass(frozen=True)
class WeightTensor:
    """A tensor as the BF16 file stores it; rows are ggml's (the last dimension)."""

    name: str
    shape: tuple[int, ...]  # torch order: the row length last
    ggml_type: Q  # BF16, or F32/F16 where the BF16 file keeps those
    nbytes: int

    @property
    def row(self) -> int:
        return self.shape[-1]

    @property
    def n_rows(self) -> int:
        return prod(self.shape) // self.row

    @property
    def row_bytes(self) -> int:
        return self.nbytes // self.n_rows


class BF16Weights(Protocol):
    tensors: tuple[WeightTensor, ...]  # in the BF16 file's order

    def sample(self, tensor: WeightTensor, picked: np.ndarray) -> np.ndarray:
        """The rows at the sorted indices `picked`, as float32 [len(picked), row]."""
        ...

    def float_rows(self, tensor: WeightTensor) -> Iterator[np.ndarray]:
        """Every row in order, as float32 blocks [n, row] of about BLOCK_BYTES."""
        ...

    def stored(self, tensor: WeightTensor) -> Iterator[bytes | np.ndarray]:
        """The tensor's bytes as the BF16 file stores them, in blocks."""
        ...

    def set_header(self) -> SetHeader:
        """The BF16 file's metadata, for probe shards of it (formats.gguf_split)."""
        ...

    def layout(self, work: Path) -> FileLayout:
        """The BF16 file's header and tensor table (`work`: where a scratch file may go)."""
        ...

    def quantize(self, out: Path, file_type: str, tensor_types: Mapping[str, str],
                 imatrix: Imatrix | None, imatrix_file: str,
                 progress: TensorProgress | None) -> None:  # fmt: skip
        """`out` as llama.cpp's quantizer writes it from the BF16 file with the per-tensor
        `tensor_types`."""
        ...


def widen(raw: np.ndarray, ggml_type: Q) -> np.ndarray:
    """Rows of raw BF16/F16/F32 bytes (uint8 [n, row bytes]) as float32 [n, row]: BF16 and
    F16 widen exactly, as ggml reads them."""
    if ggml_type == Q.BF16:
        return to_float32(raw.view(np.uint16), "BF16")
    if ggml_type == Q.F16:
        return raw.view(np.float16).astype(np.float32)
    if ggml_type == Q.F32:
        return np.ascontiguousarray(raw.view(np.float32))
    raise ValueError(f"--quant auto reads BF16, F16 or F32 tensors, not {ggml_type.name}")


class BF16File:
    """A BF16 (or F16/F32) GGUF on disk, read through gguf-py's memory map: only the rows
    asked for are read."""

    def __init__(self, path: Path) -> None:
        from gguf import GGUFReader

        self.path = Path(path)
        self._reader = GGUFReader(self.path)
        self._data = {t.name: t.data for t in self._reader.tensors}
        self.tensors = tuple(
            WeightTensor(t.name, tuple(int(d) for d in reversed(t.shape.tolist())),
                         t.tensor_type, int(t.n_bytes))
            for t in self._reader.tensors
        )  # fmt: skip

    def _raw(self, tensor: WeightTensor) -> np.ndarray:
        data = self._data[tensor.name]
        return data.reshape(-1).view(np.uint8).reshape(tensor.n_rows, tensor.row_bytes)

    def sample(self, tensor: WeightTensor, picked: np.ndarray) -> np.ndarray:
        return widen(self._raw(tensor)[picked], tensor.ggml_type)

    def float_rows(self, tensor: WeightTensor) -> Iterator[np.ndarray]:
        raw = self._raw(tensor)
        step = max(1, BLOCK_BYTES // (4 * tensor.row))
        for start in range(0, tensor.n_rows, step):
            yield widen(raw[start : start + step], tensor.ggml_type)

    def stored(self, tensor: WeightTensor) -> Iterator[np.ndarray]:
        raw = self._raw(tensor)
        step = max(1, BLOCK_BYTES // tensor.row_bytes)
        for start in range(0, tensor.n_rows, step):
            yield raw[start : start + step]

    def set_header(self) -> SetHeader:
        return set_header(self._reader)

    def layout(self, work: Path) -> FileLayout:
        return FileLayout.read(self.path)

    def quantize(self, out: Path, file_type: str, tensor_types: Mapping[str, str],
                 imatrix: Imatrix | None, imatrix_file: str,
                 progress: TensorProgress | None) -> None:  # fmt: skip
        from ..quantize import quantize_gguf

        if progress is not None:
            progress(0, 1)
        quantize_gguf(self.path, out, file_type, imatrix=imatrix, imatrix_file=imatrix_file,
                      tensor_types=tensor_types)  # fmt: skip
        if progress is not None:
            progress(1, 1)


class BF16Shards:
    """The source shards as the BF16 GGUF of `source` would hold them (export.plan_export's
    tensors, converted a block at a time as export.job_blocks writes them). A tensor with
    NaN or infinity raises NonFiniteWeightsError once it has been read."""

    def __init__(
        self,
        source: SourceModel,
        *,
        token_policy: TokenTypePolicy | None = None,
        pre_tokenizer: str | None = None,
    ) -> None:
        self.source = source
        self.token_policy = token_policy
        self.pre_tokenizer = pre_tokenizer
        self._plan = plan_export(source, "BF16", token_policy=token_policy,
                                 pre_tokenizer=pre_tokenizer)  # fmt: skip
        self._jobs = {job.gguf_name: job for job in self._plan.jobs}
        self.tensors = tuple(WeightTensor(job.gguf_name, tuple(job.shape), job.qtype, job.nbytes)
                             for job in self._plan.jobs)  # fmt: skip
        self._tally = NonFiniteTally()

    def stored(self, tensor: WeightTensor) -> Iterator[bytes]:
        yield from job_blocks(self._jobs[tensor.name], self._tally)
        self._tally.raise_if_any()

    def _stored_rows(self, tensor: WeightTensor) -> Iterator[np.ndarray]:
        for chunk in self.stored(tensor):
            yield np.frombuffer(chunk, np.uint8).reshape(-1, tensor.row_bytes)

    def sample(self, tensor: WeightTensor, picked: np.ndarray) -> np.ndarray:
        parts, first = [], 0
        for block in self._stored_rows(tensor):
            lo, hi = np.searchsorted(picked, [first, first + len(block)])
            parts.append(block[picked[lo:hi] - first])
            first += len(block)
        return widen(np.concatenate(parts), tensor.ggml_type)

    def float_rows(self, tensor: WeightTensor) -> Iterator[np.ndarray]:
        for block in self._stored_rows(tensor):
            yield widen(block, tensor.ggml_type)

    def set_header(self) -> SetHeader:
        # the metadata the BF16 file would open with, typed, as its writer holds it
        writer = metadata_writer(self.source, self._plan, None, gguf_quant("BF16").ftype)
        metadata = dict(writer.kv_data[0])
        architecture = metadata.pop("general.architecture").value
        return SetHeader(architecture, writer.data_alignment, metadata, len(self.tensors))

    def layout(self, work: Path) -> FileLayout:
        """From a sparse BF16 file: its header and tensor table, a hole for the weights."""
        from ..stream_quantize import write_sparse_bf16

        sparse = work / ".quantkit-layout-BF16.gguf"
        try:
            write_sparse_bf16(self.source, self._plan, sparse)
            return FileLayout.read(sparse)
        finally:
            sparse.unlink(missing_ok=True)

    def quantize(self, out: Path, file_type: str, tensor_types: Mapping[str, str],
                 imatrix: Imatrix | None, imatrix_file: str,
                 progress: TensorProgress | None) -> None:  # fmt: skip
        from ..stream_quantize import quantize_from_shards

        quantize_from_shards(self.source, out, file_type, token_policy=self.token_policy,
                             pre_tokenizer=self.pre_tokenizer, imatrix=imatrix,
                             imatrix_file=imatrix_file, tensor_types=tensor_types,
                             progress=progress)  # fmt: skip
