"""The probe files of measure_gains, written from the BF16 model in one pass.

A probe is the model with some of one role's tensors at their probe type and every other
tensor at Q8_0. All the probes are made of two sets of shards in llama.cpp's split format,
written side by side while the BF16 model (weights.py: the source shards, or the BF16 file)
is read once:

    base/  every tensor at Q8_0. The first shard holds the metadata and the tensors of no
           probed role; then, per role, one shard of its probed tensors and one of the rest.
    low/   only the shards of probed tensors, at their probe types.

A probe is a folder of links to shards, the probed role's from `low`, the rest from `base`;
llama.cpp loads it as it loads any split set. Each tensor is quantized by ggml's
`ggml_quantize_chunk` with the importance matrix, the call llama.cpp's quantizer makes, and
it quantizes every row on its own: a probe's tensors are the bytes
`quantize_gguf(bf16, ..., tensor_types=<the probe's types>)` writes
(tests/backends/gguf/test_auto.py compares them). No whole quantized file is written and
cut, and no tensor is quantized twice.

The probed tensors of a role are those of every PROBE_LAYER_STEP-th layer (0, 2, 4, ...)
whose probe type is not Q8_0, and the role's tensors outside the layers (token_embd,
output). The gain is one per role, and measure_gains divides the KL divergence a probe adds
by the summed errors of exactly the tensors it changed, so half the layers measure it as
the additive model has all of them do, for half the probe-type quantization.
"""

from __future__ import annotations

import re
import shutil
from collections import deque
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ....formats.gguf_names import shard_name
from ....formats.gguf_split import ShardTensor, open_shard
from ....planning.mix import tensor_role
from ....runtime import cpu
from ....runtime.ggml_quant import quantize_rows
from ....runtime.interrupts import raise_if_interrupted

if TYPE_CHECKING:
    import numpy as np

    from ..imatrix.matrix import Imatrix
    from .weights import BF16Weights, WeightTensor

REFERENCE_TYPE = "Q8_0"  # every tensor not being probed; its own error is the baseline
STEM = "auto-probe"
PROBE_LAYER_STEP = 2  # a role's probe changes the tensors of layers 0, 2, 4, ...
_LAYER = re.compile(r"^blk\.(\d+)\.")


@dataclass(frozen=True)
class ProbeSet:
    folder: Path
    roles: tuple[str, ...]
    shards: tuple[str | None, ...]  # per shard, the role whose probed tensors it holds
    changed: Mapping[str, tuple[str, ...]]  # role -> the tensors its probe changes

    @property
    def count(self) -> int:
        """Probes to measure: the all-Q8_0 baseline and one per role."""
        return len(self.roles) + 1

    def probe(self, roles: set[str], name: str) -> Path:
        """A folder of links: `roles`' probed shards from `low`, the rest from `base`; its
        first shard."""
        folder = self.folder / name
        shutil.rmtree(folder, ignore_errors=True)
        folder.mkdir()
        total = len(self.shards)
        for index, owner in enumerate(self.shards, start=1):
            shard = shard_name(STEM, index, total)
            kind = "low" if owner in roles else "base"
            (folder / shard).symlink_to(self.folder / kind / shard)
        return folder / shard_name(STEM, 1, total)

    def remove(self) -> None:
        shutil.rmtree(self.folder, ignore_errors=True)


def build_probe_set(
    weights: BF16Weights,
    probe: dict[str, str],
    work: Path,
    imatrix: Imatrix | None,
    *,
    threads: int | None = None,
) -> ProbeSet:
    """Write the `base` and `low` shards of the BF16 model `weights` (`probe`: tensor ->
    probe type) under work/auto-probe."""
    names = [t.name for t in weights.tensors]
    roles = tuple(sorted({tensor_role(n) for n, t in probe.items() if t != REFERENCE_TYPE}))
    groups, owners = _groups(names, probe, roles)
    changed = {
        role: tuple(n for group, owner in zip(groups, owners, strict=True) if owner == role
                    for n in group)
        for role in roles
    }  # fmt: skip
    probes = ProbeSet(work / STEM, roles, tuple(owners), changed)
    probes.remove()
    try:
        for kind in ("base", "low"):
            (probes.folder / kind).mkdir(parents=True)
        _write_shards(weights, groups, owners, probe, probes.folder, imatrix, threads)
    except BaseException:
        probes.remove()
        raise
    return probes


def _groups(
    names: list[str], probe: dict[str, str], roles: tuple[str, ...]
) -> tuple[list[list[str]], list[str | None]]:
    """The shards' tensors in file order and, per shard, the role it probes (None: none).
    First the tensors of no probed role, then per role its probed tensors and the rest."""
    groups: list[list[str]] = [[n for n in names if tensor_role(n) not in roles]]
    owners: list[str | None] = [None]
    for role in roles:
        of_role = [n for n in names if tensor_role(n) == role]
        changeable = [n for n in of_role if probe.get(n, REFERENCE_TYPE) != REFERENCE_TYPE]
        sampled = [n for n in changeable if _layer(n) % PROBE_LAYER_STEP == 0]
        probed = sampled or changeable
        groups.append(probed)
        owners.append(role)
        rest = [n for n in of_role if n not in set(probed)]
        if rest:
            groups.append(rest)
            owners.append(None)
    return groups, owners


def _layer(name: str) -> int:
    """The layer of a `blk.N.` tensor; 0 for the others (token_embd, output)."""
    match = _LAYER.match(name)
    return int(match.group(1)) if match else 0


def _write_shards(
    weights: BF16Weights,
    groups: list[list[str]],
    owners: list[str | None],
    probe: dict[str, str],
    folder: Path,
    imatrix: Imatrix | None,
    threads: int | None,
) -> None:
    """One pass over the tensors: each shard of `base` and, for probed shards, of `low`,
    each tensor read once and quantized to each type it needs once."""
    by_name = {t.name: t for t in weights.tensors}
    header = weights.set_header()
    total = len(groups)
    workers = threads or cpu.threads()
    with ThreadPoolExecutor(max_workers=workers) as pool:
        for index, (names, owner) in enumerate(zip(groups, owners, strict=True)):
            kinds = {"base": {n: REFERENCE_TYPE if n in probe else None for n in names}}
            if owner is not None:
                kinds["low"] = {n: probe[n] for n in names}
            with ExitStack() as stack:
                outs = []
                for kind, types in kinds.items():
                    infos = [_info(by_name[n], types[n]) for n in names]
                    target = folder / kind / shard_name(STEM, index + 1, total)
                    writer, fout = open_shard(header, target, infos, index, total)
                    stack.callback(writer.close)
                    outs.append((types, writer, fout))
                for name in names:
                    targets = [(types[name], writer, fout) for types, writer, fout in outs]
                    _write_tensor(weights, by_name[name], targets, imatrix, pool, workers)
                    raise_if_interrupted()


def _info(tensor: WeightTensor, ggml_type: str | None) -> ShardTensor:
    from gguf import GGMLQuantizationType

    from ....runtime.ggml_quant import row_bytes

    if ggml_type is None:
        return ShardTensor(tensor.name, tensor.shape, tensor.ggml_type, tensor.nbytes)
    return ShardTensor(tensor.name, tensor.shape, GGMLQuantizationType[ggml_type],
                       tensor.n_rows * row_bytes(ggml_type, tensor.row))  # fmt: skip


def _write_tensor(
    weights: BF16Weights,
    tensor: WeightTensor,
    targets: list[tuple[str | None, Any, Any]],
    imatrix: Imatrix | None,
    pool,
    workers: int,
) -> None:
    """Write `tensor` to each (type, writer, file) of `targets`: copied as the BF16 file
    stores it where the type is None (a tensor no probe quantizes: every target's is),
    else quantized block by block of rows (2 x `workers` blocks in flight)."""
    types = sorted({t for t, _, _ in targets if t is not None})
    if not types:
        for chunk in weights.stored(tensor):
            for _, _, fout in targets:
                fout.write(chunk)
    else:
        _write_quantized(weights, tensor, types, targets, imatrix, pool, workers)
    for _, writer, fout in targets:
        writer.write_padding(fout, fout.tell())


def _write_quantized(
    weights: BF16Weights,
    tensor: WeightTensor,
    types: list[str],
    targets: list[tuple[str | None, Any, Any]],
    imatrix: Imatrix | None,
    pool,
    workers: int,
) -> None:
    per_matrix = _rows_per_matrix(tensor)
    importance = _importance(imatrix, tensor.name, tensor.row, tensor.n_rows // per_matrix)

    def job(first: int, rows: np.ndarray) -> dict[str, Any]:
        w = None if importance is None else importance[first // per_matrix]
        return {ggml_type: quantize_rows(ggml_type, rows, w) for ggml_type in types}

    pending: deque = deque()

    def flush_one() -> None:
        done = pending.popleft().result()
        for ggml_type, _, fout in targets:
            fout.write(memoryview(done[ggml_type]).cast("B"))

    first = 0
    for block in weights.float_rows(tensor):
        for start, rows in _within_matrices(first, block, per_matrix):
            pending.append(pool.submit(job, start, rows))
            if len(pending) >= 2 * workers:
                flush_one()
        first += len(block)
    while pending:
        flush_one()


def _within_matrices(first: int, block: np.ndarray, per_matrix: int):
    """(first row, rows) pieces of a block that starts at row `first`, cut where one matrix
    of a 3-D (experts) tensor ends: each matrix has its own importance values."""
    offset = 0
    while offset < len(block):
        row = first + offset
        end = min(len(block), offset + per_matrix - row % per_matrix)
        yield row, block[offset:end]
        offset = end


def _rows_per_matrix(tensor: WeightTensor) -> int:
    """Rows of one 2-D matrix: a 3-D (experts) tensor has one importance row per matrix."""
    return tensor.shape[-2] if len(tensor.shape) > 2 else tensor.n_rows


def _importance(imatrix: Imatrix | None, name: str, row: int, matrices: int):
    """Per matrix, the importance values llama.cpp hands the quantizer for `name`, or None."""
    if imatrix is None or name not in imatrix.entries:
        return None
    values = imatrix.entries[name].mean().reshape(-1)
    if values.size != row * matrices:
        raise ValueError(f"the importance matrix has {values.size} values for {name}, "
                         f"which has {matrices} matrices of rows of {row}")  # fmt: skip
    return values.reshape(matrices, row).astype("float32")
