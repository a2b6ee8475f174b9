"""BF16/FP16 safetensors, streamed tensor by tensor into Hub-style shards.

The shard plan is made from the source's tensor inventory before any weight is read: each
tensor's size in the output dtype is known, so every shard's header (names, shapes,
offsets) is written first and the tensors follow one at a time, read with safetensors'
`safe_open` and dropped once written. Peak memory is one tensor, whatever the model size.

FP16 cannot hold values beyond +-65504 (BF16 and FP32 can): weights outside that range are
refused with their names and max |w| unless forced, and then clamped, never turned into inf.

NaN and infinity are counted on each source tensor as it is read (formats.nonfinite, on its
bits: about 10 GB/s on one core); after the first damaged tensor the rest are only counted, then
the shards are removed and NonFiniteWeightsError names the tensors, forced or not.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ...errors import ConversionError
from ...formats.nonfinite import NonFiniteTally
from ...formats.safetensors_index import TensorInfo
from ...source.model import SourceModel

log = logging.getLogger(__name__)

DEFAULT_MAX_SHARD_SIZE = 5 * 10**9  # the Hub's usual 5 GB shards
FP16_MAX = 65504.0
INDEX_NAME = "model.safetensors.index.json"
_FLOAT_DTYPES = {"F64", "F32", "F16", "BF16"}
_OUT_DTYPES = {"BF16": "bfloat16", "FP16": "float16"}
_ST_DTYPE = {"BF16": "BF16", "FP16": "F16"}


class FP16RangeError(ConversionError):
    """Weights lie outside FP16's range; writing them as FP16 would make them inf."""


@dataclass(frozen=True)
class PlannedTensor:
    name: str
    source: TensorInfo
    dtype: str  # safetensors dtype written
    nbytes: int


@dataclass
class Shard:
    file: str
    tensors: list[PlannedTensor] = field(default_factory=list)

    @property
    def nbytes(self) -> int:
        return sum(t.nbytes for t in self.tensors)


@dataclass(frozen=True)
class Overflow:
    name: str
    max_abs: float


def output_dtype(quant: str) -> str:
    key = {"BF16": "BF16", "FP16": "FP16", "F16": "FP16"}.get(quant.upper())
    if key is None:
        raise ConversionError(
            f"Unknown safetensors dtype {quant!r}.", hint="Use BF16 (default) or FP16."
        )
    return key


def torch_dtype_name(quant: str) -> str:
    """config.json's torch_dtype for BF16/FP16."""
    return _OUT_DTYPES[output_dtype(quant)]


def natural_key(name: str) -> tuple:
    """Hub order: embeddings, then layers numerically (`layers.10` after `layers.9`), then
    the rest, lm_head last."""
    rank = 0 if "embed_tokens" in name else 2 if name.startswith("lm_head") else 1
    return (rank, *(int(p) if p.isdigit() else p for p in re.split(r"(\d+)", name)))


def plan_shards(
    tensors: Iterable[TensorInfo], quant: str, max_shard_size: int = DEFAULT_MAX_SHARD_SIZE
) -> list[Shard]:
    """Greedy Hub-style sharding in natural tensor order; a tensor larger than
    max_shard_size gets a shard of its own."""
    if max_shard_size <= 0:
        raise ConversionError(f"max_shard_size must be positive, not {max_shard_size}.")
    out = _ST_DTYPE[output_dtype(quant)]
    shards: list[Shard] = [Shard("")]
    for info in sorted(tensors, key=lambda t: natural_key(t.name)):
        dtype = out if info.dtype in _FLOAT_DTYPES else info.dtype
        nbytes = info.numel * 2 if dtype == out else info.nbytes
        planned = PlannedTensor(info.name, info, dtype, nbytes)
        current = shards[-1]
        if current.tensors and current.nbytes + nbytes > max_shard_size:
            shards.append(Shard(""))
        shards[-1].tensors.append(planned)
    total = len(shards)
    for i, shard in enumerate(shards, start=1):
        shard.file = (
            "model.safetensors" if total == 1 else f"model-{i:05d}-of-{total:05d}.safetensors"
        )
    return shards


def shard_header(shard: Shard) -> bytes:
    """The safetensors header of a shard: JSON padded with spaces to 8 bytes, preceded by
    its little-endian u64 length."""
    header: dict[str, Any] = {"__metadata__": {"format": "pt"}}
    offset = 0
    for t in shard.tensors:
        header[t.name] = {
            "dtype": t.dtype,
            "shape": list(t.source.shape),
            "data_offsets": [offset, offset + t.nbytes],
        }
        offset += t.nbytes
    raw = json.dumps(header, separators=(",", ":")).encode()
    raw += b" " * (-len(raw) % 8)
    return len(raw).to_bytes(8, "little") + raw


def export_safetensors(
    source: SourceModel,
    work: Path,
    quant: str = "BF16",
    *,
    max_shard_size: int = DEFAULT_MAX_SHARD_SIZE,
    force: bool = False,
    progress: Callable[[int, int], None] | None = None,
) -> list[Path]:
    """Write the weights of `source` into `work` as BF16/FP16 shards (+ index when
    sharded). Returns the shard paths. Raises NonFiniteWeightsError when the source holds
    NaN or infinity, and FP16RangeError when FP16 would overflow and `force` is False,
    after removing the partial shards."""
    key = output_dtype(quant)
    shards = plan_shards(source.tensors, key, max_shard_size)
    total = sum(len(s.tensors) for s in shards)
    overflows: list[Overflow] = []
    tally = NonFiniteTally()
    done = 0
    paths: list[Path] = []
    with SourceReader(source.path) as reader:
        for shard in shards:
            path = work / shard.file
            paths.append(path)
            with path.open("wb") as fh:
                fh.write(shard_header(shard))
                for planned in shard.tensors:
                    tensor = reader.get(planned.source)
                    count_nonfinite_tensor(tally, planned.name, tensor)
                    if not tally:  # once damaged, the shards will be removed: only count
                        data, overflow = _convert(tensor, planned, key, force)
                        if overflow is not None:
                            overflows.append(overflow)
                        fh.write(data)
                    done += 1
                    if progress is not None:
                        progress(done, total)
    if tally or (overflows and not force):
        for path in paths:
            path.unlink(missing_ok=True)
        tally.raise_if_any()
        raise _fp16_error(overflows)
    for overflow in overflows:
        log.warning("%s clamped to FP16 range (max |w| %.6g)", overflow.name, overflow.max_abs)
    if len(shards) > 1:
        write_index(work, shards)
    return paths


def write_index(work: Path, shards: list[Shard]) -> Path:
    index = {
        "metadata": {"total_size": sum(s.nbytes for s in shards)},
        "weight_map": {t.name: s.file for s in shards for t in s.tensors},
    }
    path = work / INDEX_NAME
    path.write_text(json.dumps(index, indent=2) + "\n", encoding="utf-8")
    return path


def count_nonfinite_tensor(tally: NonFiniteTally, name: str, tensor) -> None:
    """Count a torch tensor's NaN and infinity into `tally`: on its bits in numpy on the
    CPU (no copy), with torch where it lives elsewhere; integer tensors are skipped."""
    import torch

    if not tensor.is_floating_point() or tensor.numel() == 0:
        return
    if tensor.device.type != "cpu":
        if not bool(torch.isfinite(tensor).all()):
            tally.record(name, int(torch.isnan(tensor).sum()), int(torch.isinf(tensor).sum()))
        return
    dtypes = {torch.bfloat16: "BF16", torch.float16: "F16", torch.float32: "F32"}
    dtype = dtypes.get(tensor.dtype, "F64" if tensor.dtype == torch.float64 else None)
    if dtype is None:  # FP8 and other exotic sources: torch counts them
        tensor = tensor.float()
        dtype = "F32"
    bits = tensor.view(torch.int16) if dtype == "BF16" else tensor
    tally.add(name, bits.detach().numpy(), dtype)


def _convert(tensor, planned: PlannedTensor, key: str, force: bool):
    """The tensor in the output dtype, as a uint8 numpy view to write without a copy, and
    its FP16 overflow (if any). Peak: the source tensor plus its converted copy."""
    import torch

    overflow = None
    if planned.source.dtype in _FLOAT_DTYPES:
        if key == "FP16" and planned.source.dtype != "F16" and tensor.numel():
            low, high = torch.aminmax(tensor)
            max_abs = max(-float(low), float(high))
            if max_abs > FP16_MAX:
                overflow = Overflow(planned.name, max_abs)
                tensor = tensor.clamp(-FP16_MAX, FP16_MAX)
        tensor = tensor.to(torch.bfloat16 if key == "BF16" else torch.float16)
    data = tensor.contiguous().reshape(-1).view(torch.uint8).numpy()
    if data.nbytes != planned.nbytes:  # pragma: no cover - a plan/inventory mismatch
        raise ConversionError(f"{planned.name}: {data.nbytes} bytes, planned {planned.nbytes}.")
    return data, overflow


def _fp16_error(overflows: list[Overflow]) -> FP16RangeError:
    worst = sorted(overflows, key=lambda o: -o.max_abs)
    listed = ", ".join(f"{o.name} (max |w| {o.max_abs:.6g})" for o in worst[:8])
    more = f" and {len(worst) - 8} more" if len(worst) > 8 else ""
    return FP16RangeError(
        f"{len(worst)} tensor(s) have weights outside FP16's range (+-{FP16_MAX:g}): "
        f"{listed}{more}.",
        hint="Write BF16 instead (--quant BF16), or pass --force to clamp them to +-65504.",
    )


class SourceReader:
    """safe_open handles of the source shards, opened lazily and closed together."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self._handles: dict[str, Any] = {}
        self._contexts: list[Any] = []

    def __enter__(self) -> SourceReader:
        return self

    def __exit__(self, *exc: object) -> None:
        for ctx in reversed(self._contexts):
            ctx.__exit__(None, None, None)
        self._handles.clear()

    def get(self, info: TensorInfo, rows: slice | None = None):
        """`info`'s tensor, or the block `rows` of its first dimension (read alone)."""
        from safetensors import safe_open

        handle = self._handles.get(info.file)
        if handle is None:
            ctx = safe_open(str(self.folder / info.file), framework="pt")
            handle = ctx.__enter__()
            self._contexts.append(ctx)
            self._handles[info.file] = handle
        if rows is None:
            return handle.get_tensor(info.name)
        return handle.get_slice(info.name)[rows]
