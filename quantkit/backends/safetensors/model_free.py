"""FP8_DYNAMIC tensor by tensor: the files llmcompressor's `model_free_ptq` writes, with
one tensor in memory instead of one shard.

`model_free_ptq` loads a whole source shard, quantizes it and saves it with safetensors'
`save_file`, so its memory grows with the shard: 5 GB for the Hub's usual shards, whatever
the model. Its FP8_DYNAMIC scheme has no tensor that depends on another (one scale per
output channel of each weight), so the same converter (`ModelFreePtqConverter`) gives the
same values one tensor at a time. What this module adds is the file around them:

- each output shard's layout comes first, from the converter run on meta tensors (names,
  dtypes and shapes it will produce, no weight read), in the order `save_file` writes
  (tensors sorted by dtype as the safetensors library ranks them, then by name);
- the header is written, then each quantized tensor at its offset as it is made, so the
  order of reading does not have to be the order of the file.

A large tensor is read and quantized a block of rows at a time (`FP8_BLOCK_BYTES` of
source, runtime/memory.py): the scheme's scales are per output channel, one per row, so the
converter gives a block's rows the values it gives them in the whole tensor. Which
tensors may be split is asked of the converter itself, on meta tensors: those whose every
output has one row per input row.
Memory is then one block, whatever the model: Llama 3.1 405B's largest weight (0.87 G
values) would otherwise take 7 GB in the converter's float32 work.

The shards, index and config.json are byte-identical to `model_free_ptq`'s
(tests/backends/safetensors/test_model_free.py). NaN and infinity are counted on each
source tensor as it is read; any found, or any failure, removes what was written.
"""

from __future__ import annotations

import functools
import json
import os
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from ...errors import ConversionError
from ...formats.nonfinite import NonFiniteTally
from ...runtime import memory
from ...source.model import SourceModel
from .export import SourceReader, count_nonfinite_tensor

STAGE = "FP8_DYNAMIC tensor by tensor"


@dataclass(frozen=True)
class Slot:
    dtype: str  # safetensors dtype name
    shape: tuple[int, ...]
    offset: int  # from the start of the file
    nbytes: int


class ShardLayout:
    """Where every tensor of one output shard lies, as safetensors' `save_file` lays them
    out: a little-endian u64 header length, the JSON header padded with spaces to 8
    bytes, then the data in the header's order."""

    def __init__(self, planned: dict) -> None:
        ranks = _library_dtypes()
        order = sorted(planned, key=lambda n: (ranks[planned[n].dtype][0], n.encode()))
        header: dict[str, dict] = {}
        offset = 0
        for name in order:
            t = planned[name]
            nbytes = t.numel() * t.element_size()
            header[name] = {"dtype": _st_dtype(t.dtype), "shape": list(t.shape),
                            "data_offsets": [offset, offset + nbytes]}  # fmt: skip
            offset += nbytes
        raw = json.dumps(header, separators=(",", ":")).encode()
        raw += b" " * (-len(raw) % 8)
        self.header = len(raw).to_bytes(8, "little") + raw
        self.size = len(self.header) + offset
        self.data_bytes = offset
        self.slots = {
            name: Slot(h["dtype"], tuple(h["shape"]), len(self.header) + h["data_offsets"][0],
                       h["data_offsets"][1] - h["data_offsets"][0])  # fmt: skip
            for name, h in header.items()
        }
        self._pending = set(self.slots)
        self._rows: dict[str, int] = {}  # rows written so far, of tensors written in blocks

    def write(self, fd: int, name: str, tensor, rows: slice | None = None) -> None:
        """Write `tensor` at its slot, or as the block `rows` of it, after checking it is
        what the layout expects there."""
        slot = self.slots.get(name)
        if slot is None or name not in self._pending:
            raise ConversionError(f"The FP8 converter made {name!r}, which the planned layout "
                                  "does not hold (or holds once already).")  # fmt: skip
        total = slot.shape[0] if slot.shape else 1  # a scalar: one row
        start, stop = (0, total) if rows is None else (rows.start, rows.stop)
        expected = (slot.dtype, (stop - start, *slot.shape[1:]) if slot.shape else ())
        if (_st_dtype(tensor.dtype), tuple(tensor.shape)) != expected:
            raise ConversionError(
                f"The FP8 converter made {name!r} rows {start}-{stop} as "
                f"{_st_dtype(tensor.dtype)} {tuple(tensor.shape)}, planned as "
                f"{expected[0]} {expected[1]}."
            )
        import torch

        data = tensor.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy()
        row_bytes = slot.nbytes // total if total else 0
        if os.pwrite(fd, memoryview(data), slot.offset + start * row_bytes) != data.nbytes:
            raise OSError(f"short write of {name} to the FP8 shard")
        self._rows[name] = self._rows.get(name, 0) + (stop - start)
        if self._rows[name] == total:
            self._pending.discard(name)

    def missing(self) -> list[str]:
        return sorted(self._pending)


def quantize_tensor_by_tensor(
    source: SourceModel,
    config,
    work: Path,
    *,
    progress: Callable[[str, int, int], None] | None = None,
) -> None:
    """Write `source`'s weights quantized by `config` (an llmcompressor QuantizationConfig
    without microscale groups, as `model_free_ptq` validates it) into `work`: one output
    shard per source shard, the index and config.json with its quantization_config.
    Raises NonFiniteWeightsError when the source holds NaN or infinity; removes every
    shard written on any failure."""
    from llmcompressor.entrypoints.model_free.converter import ModelFreePtqConverter
    from llmcompressor.entrypoints.model_free.microscale import has_microscale_scheme

    if has_microscale_scheme(config):
        raise ConversionError("Microscale schemes (NVFP4, MXFP4) share scales between "
                              "tensors and are not made tensor by tensor.")  # fmt: skip
    converter = ModelFreePtqConverter(config)
    device = _device()
    made_work = not work.exists()
    work.mkdir(parents=True, exist_ok=True)  # as model_free_ptq makes its save_directory
    files = _files_in_order(source)
    written: list[Path] = []
    tally = NonFiniteTally()
    weight_map: dict[str, str] = {}
    total_size, done = 0, 0
    try:
        with SourceReader(source.path) as reader:
            for file, infos in files.items():
                layout = ShardLayout(converter.validate(_meta_tensors(infos)))
                path = work / file
                written.append(path)
                with path.open("wb") as fh:
                    fh.write(layout.header)
                    fh.truncate(layout.size)
                    for info in infos:
                        for rows in _row_blocks(converter, info):
                            tensor = reader.get(info, rows)
                            count_nonfinite_tensor(tally, info.name, tensor)
                            if not tally:  # once damaged, the shards go: only count
                                outputs = converter.process({info.name: tensor.to(device)})
                                for name, made in outputs.items():
                                    layout.write(fh.fileno(), name, made, rows)
                            del tensor
                        done += 1
                        if progress is not None:
                            progress(STAGE, done, len(source.tensors))
                if not tally and layout.missing():
                    raise ConversionError(f"{file}: the FP8 converter did not make "
                                          f"{', '.join(layout.missing())}.")  # fmt: skip
                total_size += layout.data_bytes
                weight_map.update(dict.fromkeys(layout.slots, file))
        tally.raise_if_any()
        _write_config_and_index(source, config, work, total_size, weight_map)
    except BaseException:
        for path in written:
            path.unlink(missing_ok=True)
        if made_work and not any(work.iterdir()):
            work.rmdir()
        raise


def _write_config_and_index(source: SourceModel, config, work: Path, total_size: int,
                            weight_map: dict[str, str]) -> None:  # fmt: skip
    """config.json with the quantization_config and the index, written by the functions
    `model_free_ptq` ends with (so both files are its, byte for byte)."""
    from compressed_tensors.utils.safetensors_load import update_safetensors_index
    from llmcompressor.entrypoints.model_free.save_utils import update_config

    shutil.copyfile(source.path / "config.json", work / "config.json")
    update_config(work, config)
    update_safetensors_index(work, total_size, weight_map)


def _files_in_order(source: SourceModel) -> dict[str, list]:
    """The source's tensors grouped by shard file, in the source's order."""
    files: dict[str, list] = {}
    for info in source.tensors:
        files.setdefault(info.file, []).append(info)
    return files


def _row_blocks(converter, info) -> list[slice | None]:
    """The blocks of rows `info` is read and quantized in: [None] (whole) for a tensor of
    one block, or one the converter does not quantize row by row."""
    if len(info.shape) < 2 or info.nbytes <= memory.FP8_BLOCK_BYTES:
        return [None]
    rows = info.shape[0]
    step = max(1, memory.FP8_BLOCK_BYTES // (info.nbytes // rows))
    if not _row_separable(converter, info, step):
        return [None]
    return [slice(start, min(start + step, rows)) for start in range(0, rows, step)]


def _row_separable(converter, info, step: int) -> bool:
    """Whether every tensor the converter makes of `info` has one row per input row, asked
    of the converter on meta tensors of the whole and of `step` rows (a per-tensor scale,
    say, has one row whatever the input, and is not split)."""
    import torch

    dtype = _torch_dtypes()[info.dtype]

    def made(rows: int) -> dict:
        meta = torch.empty((rows, *info.shape[1:]), dtype=dtype, device="meta")
        return converter.validate({info.name: meta})

    whole, part = made(info.shape[0]), made(step)
    return whole.keys() == part.keys() and all(
        whole[n].shape[:1] == (info.shape[0],) and part[n].shape == (step, *whole[n].shape[1:])
        for n in whole
    )


def _meta_tensors(infos: list) -> dict:
    import torch

    dtypes = _torch_dtypes()
    for info in infos:
        if info.dtype not in dtypes:
            raise ConversionError(f"{info.name} is {info.dtype}, which FP8 quantization does "
                                  "not read.")  # fmt: skip
    return {i.name: torch.empty(i.shape, dtype=dtypes[i.dtype], device="meta") for i in infos}


def _device():
    """Where model_free_ptq quantizes when given no device: the first GPU, else the CPU."""
    import torch

    return torch.device("cuda:0" if torch.cuda.is_available() else "cpu")


@functools.cache
def _library_dtypes() -> dict:
    """{torch dtype: (rank, safetensors name)} as the installed safetensors library has
    them: asked of the library itself (an empty tensor of each, serialized), since it lays
    tensors out by its own ranking of dtypes, which its versions have changed."""
    import struct

    import torch
    from safetensors.torch import save

    kinds = ("float64", "float32", "float16", "bfloat16", "int64", "int32", "int16", "int8",
             "uint8", "bool", "float8_e4m3fn", "float8_e5m2")  # fmt: skip
    probe = {f"t{i}": torch.empty(0, dtype=getattr(torch, k)) for i, k in enumerate(kinds)}
    raw = save(probe)
    (length,) = struct.unpack("<Q", raw[:8])
    header = json.loads(raw[8 : 8 + length])
    return {probe[n].dtype: (rank, header[n]["dtype"]) for rank, n in enumerate(header)}


def _torch_dtypes() -> dict:
    """{safetensors dtype name: torch dtype}, the inverse of _library_dtypes."""
    return {name: dtype for dtype, (_, name) in _library_dtypes().items()}


def _st_dtype(dtype) -> str:
    return _library_dtypes()[dtype][1]
