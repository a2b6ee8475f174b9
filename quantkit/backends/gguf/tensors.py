"""Stream tensors out of safetensors shards in row blocks, converted to a GGUF type.

Nothing here holds a whole tensor, let alone the model: each block is read with a plain
file read (not a memory map, whose touched pages would count as resident memory), converted,
written, and dropped. Blocks are whole heads for Q/K tensors, which are regrouped per head.
Each raw block's NaN and infinity are counted on the way (formats.nonfinite): the same read,
one mask and one max over the block's bits.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, replace
from math import prod
from pathlib import Path

import gguf
import numpy as np

from ...errors import ConversionError
from ...formats.nonfinite import NonFiniteTally
from ...formats.safetensors_index import read_header
from ...runtime import cpu, ggml_quant
from .arch import permute_rows

BLOCK_BYTES = 32 * 1024 * 1024  # float32 bytes per block; bounds peak memory
_NUMPY_DTYPES = {"F32": np.float32, "F16": np.float16, "BF16": np.uint16}
Q = gguf.GGMLQuantizationType


@dataclass(frozen=True)
class SourceTensor:
    name: str
    path: Path
    offset: int  # absolute byte offset of the data in the file
    dtype: str
    shape: tuple[int, ...]

    @property
    def rows(self) -> int:
        return self.shape[0] if len(self.shape) > 1 else 1  # a vector is one row

    @property
    def row_elements(self) -> int:
        return prod(self.shape[1:]) if len(self.shape) > 1 else prod(self.shape)


def index_source_tensors(shards: list[Path]) -> dict[str, SourceTensor]:
    index: dict[str, SourceTensor] = {}
    for shard in shards:
        header, data_start = read_header(shard)
        for name, meta in header.items():
            if name == "__metadata__":
                continue
            if meta["dtype"] not in _NUMPY_DTYPES:
                raise ConversionError(
                    f"{name} in {shard.name} has dtype {meta['dtype']}; quantkit reads F32, "
                    "F16 and BF16 weights.",
                    hint="Convert an already-quantized checkpoint from its unquantized source.",
                )
            start = data_start + meta["data_offsets"][0]
            index[name] = SourceTensor(name, shard, start, meta["dtype"], tuple(meta["shape"]))
    return index


def output_nbytes(shape: tuple[int, ...], qtype: Q) -> int:
    """Bytes of a tensor of `shape` in GGUF type `qtype`."""
    block, type_size = gguf.GGML_QUANT_SIZES[qtype]
    return prod(shape) // block * type_size


def converted_blocks(
    tensor: SourceTensor, qtype: Q, heads: int | None, tally: NonFiniteTally | None = None
) -> Iterator[bytes]:
    """The tensor's data in GGUF type `qtype`, block by block, rows regrouped if `heads`;
    its NaN and infinity counted into `tally`. Once `tally` holds any, the source is
    damaged and the file will be dropped: blocks are still read and counted, not converted
    or yielded."""
    if heads and len(tensor.shape) == 1:
        # A Q/K bias: one value per output row, regrouped like the weight's rows.
        tensor = replace(tensor, shape=(tensor.shape[0], 1))
    for raw in _row_blocks(tensor, heads):
        if tally is not None:
            tally.add(tensor.name, raw, tensor.dtype)
            if tally:
                continue
        block = permute_rows(raw, raw.shape[0] // (tensor.rows // heads)) if heads else raw
        yield _convert(block, tensor.dtype, qtype)


def _row_blocks(tensor: SourceTensor, heads: int | None) -> Iterator[np.ndarray]:
    dtype = np.dtype(_NUMPY_DTYPES[tensor.dtype])
    row_bytes = tensor.row_elements * dtype.itemsize
    unit = tensor.rows // heads if heads else 1  # rows that must stay together
    if heads and tensor.rows % heads:
        raise ConversionError(f"{tensor.name}: {tensor.rows} rows do not split into {heads} heads.")
    units_per_block = max(1, BLOCK_BYTES // (tensor.row_elements * 4 * unit))
    rows_per_block = unit * units_per_block
    with tensor.path.open("rb") as fh:
        for first in range(0, tensor.rows, rows_per_block):
            count = min(rows_per_block, tensor.rows - first)
            fh.seek(tensor.offset + first * row_bytes)
            buf = fh.read(count * row_bytes)
            if len(buf) != count * row_bytes:
                raise ConversionError(f"{tensor.path.name} ended inside tensor {tensor.name}.")
            arr = np.frombuffer(buf, dtype=dtype)
            yield arr.reshape((count, *tensor.shape[1:])) if len(tensor.shape) > 1 else arr


def _convert(block: np.ndarray, src_dtype: str, qtype: Q) -> bytes:
    if qtype == Q.BF16 and src_dtype == "BF16":
        return block.tobytes()  # already the right bits: copy, no rounding
    if qtype == Q.F16 and src_dtype == "F16":
        return block.tobytes()
    as_f32 = to_float32(block, src_dtype)
    if qtype == Q.F32:
        return as_f32.tobytes()
    if qtype == Q.F16:
        return as_f32.astype(np.float16).tobytes()
    if qtype == Q.Q8_0:
        # ggml's Q8_0 with the rows split between the cores: the bytes of gguf-py's numpy
        # quantizer (one core), which llama.cpp's converter uses (test_reference_parity).
        rows = as_f32.reshape(-1, as_f32.shape[-1])
        return ggml_quant.quantize_rows("Q8_0", rows, None, threads=cpu.threads()).tobytes()
    # gguf-py's reference rounding to BF16, identical to llama.cpp's converter
    return np.ascontiguousarray(gguf.quants.quantize(as_f32, qtype)).tobytes()


def to_float32(block: np.ndarray, src_dtype: str) -> np.ndarray:
    """The block's values as float32, exactly (BF16 is the top half of an F32: one widening
    shift, which numpy does in a single pass when the ufunc is told the output type)."""
    if src_dtype == "BF16":
        return np.left_shift(block, 16, dtype=np.uint32).view(np.float32)
    return block.astype(np.float32)
