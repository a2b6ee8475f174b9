"""Importance matrices in llama.cpp's own file formats.

An importance matrix holds, for each weight matrix of a model (keyed by its GGUF name, e.g.
`blk.0.attn_q.weight`), the sum over calibration tokens of the squared input activation of
each input column, and how many tokens were summed. llama.cpp's quantizer weighs rounding
errors by the mean (sum / count) per column.

The GGUF format is the one `llama-imatrix` writes (tools/imatrix/imatrix.cpp) and
`llama-quantize` reads (common/imatrix-loader.cpp):

- key-values, in this order: `general.type = "imatrix"`, `imatrix.datasets` (array of
  strings), `imatrix.chunk_count` (u32), `imatrix.chunk_size` (u32); no architecture key;
- per entry, sorted by name: `<name>.in_sum2`, F32 with ggml shape [n_cols, n_mat], the raw
  sums; `<name>.counts`, F32 with ggml shape [1, n_mat], the raw token counts (n_mat is 1
  for a dense matrix, the expert count for a merged MoE tensor). Trailing dimensions of 1
  are not stored (gguf_add_tensor writes ggml_n_dims), so a dense entry is [n_cols] and [1].

The legacy `.dat` format (before GGUF) is read too: there each value is already
`sum / count * ncall` and the count is `ncall`, so mean = value / ncall either way.
"""

from __future__ import annotations

import logging
import struct
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from gguf import GGUFType, Keys

from ....errors import ImatrixError

if TYPE_CHECKING:
    import numpy as np

    from ....source.model import SourceModel

log = logging.getLogger(__name__)

SUMS_SUFFIX = ".in_sum2"
COUNTS_SUFFIX = ".counts"
GENERAL_TYPE = GGUFType.IMATRIX  # the general.type of an importance matrix
KEY_DATASETS = Keys.IMatrix.DATASETS
KEY_CHUNK_COUNT = Keys.IMatrix.CHUNK_COUNT
KEY_CHUNK_SIZE = Keys.IMatrix.CHUNK_SIZE
_GGUF_MAGIC = b"GGUF"


@dataclass
class ImatrixEntry:
    """The statistics of one weight matrix (n_mat = 1 unless it holds MoE experts)."""

    sums: np.ndarray  # float32, (n_mat, n_cols): sum of x^2 per input column
    counts: np.ndarray  # float64, (n_mat,): tokens summed

    @property
    def n_cols(self) -> int:
        return int(self.sums.shape[1])

    def mean(self) -> np.ndarray:
        """What llama-quantize hands the quantizer: sum / count per column, flattened over
        the matrices; a matrix that saw no token gets 1 everywhere (quantize.cpp)."""
        import numpy as np

        out = np.ones(self.sums.shape, dtype=np.float32)
        seen = self.counts > 0
        out[seen] = (self.sums[seen] / self.counts[seen, None]).astype(np.float32)
        return out.reshape(-1)


@dataclass(frozen=True)
class Imatrix:
    entries: dict[str, ImatrixEntry]
    datasets: tuple[str, ...] = ()
    chunk_count: int = 0
    chunk_size: int = 0
    legacy: bool = False
    extra: dict[str, Any] = field(default_factory=dict, compare=False)

    def describe(self) -> dict[str, Any]:
        return {
            "entries": len(self.entries),
            "datasets": list(self.datasets),
            "chunk_count": self.chunk_count,
            "chunk_size": self.chunk_size,
            "format": "legacy .dat" if self.legacy else "gguf",
        }


# --- writing ------------------------------------------------------------------------------


def save_imatrix(imatrix: Imatrix, path: Path) -> Path:
    """Write `imatrix` as llama-imatrix writes it (see the module docstring)."""
    import gguf
    import numpy as np

    writer = gguf.GGUFWriter(path, arch=GENERAL_TYPE)
    # GGUFWriter always starts with general.architecture; llama-imatrix writes none.
    writer.kv_data[0].pop(gguf.Keys.General.ARCHITECTURE, None)
    writer.add_type(gguf.GGUFType.IMATRIX)
    writer.add_array(KEY_DATASETS, list(imatrix.datasets))
    writer.add_uint32(KEY_CHUNK_COUNT, int(imatrix.chunk_count))
    writer.add_uint32(KEY_CHUNK_SIZE, int(imatrix.chunk_size))
    for name in sorted(imatrix.entries):
        entry = imatrix.entries[name]
        sums = np.ascontiguousarray(entry.sums, dtype=np.float32)
        counts = np.asarray(entry.counts, dtype=np.float32).reshape(-1, 1)
        if sums.ndim != 2 or sums.shape[0] != counts.shape[0]:
            raise ImatrixError(f"{name}: {sums.shape} sums do not match {counts.shape[0]} counts.")
        # numpy (n_mat, n_cols) is ggml's [n_cols, n_mat], counts [1, n_mat]; gguf_add_tensor
        # stores ggml_n_dims dimensions, so a dense entry (n_mat 1) is 1-D: [n_cols], [1].
        if sums.shape[0] == 1:
            sums, counts = sums.reshape(-1), counts.reshape(-1)
        writer.add_tensor(name + SUMS_SUFFIX, sums)
        writer.add_tensor(name + COUNTS_SUFFIX, counts)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


# --- reading ------------------------------------------------------------------------------


def load_imatrix(path: str | Path) -> Imatrix:
    """Read a GGUF imatrix (or a legacy .dat one); every problem is an ImatrixError."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise ImatrixError(
            f"Importance matrix {path} does not exist.",
            hint="Pass the path of a file llama-imatrix or quantkit wrote, or --imatrix auto.",
        )
    with path.open("rb") as fh:
        magic = fh.read(4)
    try:
        imatrix = _read_gguf(path) if magic == _GGUF_MAGIC else _read_legacy(path)
    except ImatrixError:
        raise
    except Exception as exc:  # a truncated or foreign file: say so, with the cause
        raise ImatrixError(
            f"{path} is not a readable importance matrix ({type(exc).__name__}: {exc}).",
            hint="Pass a GGUF imatrix written by llama-imatrix or quantkit.",
        ) from exc
    if not imatrix.entries:
        raise ImatrixError(f"{path} holds no importance-matrix entries.")
    return imatrix


def _read_gguf(path: Path) -> Imatrix:
    """GGUFReader memory-maps the file; every value is copied out, then the map is closed
    (not left to the garbage collector: an open map keeps the file busy, on Windows locked)."""
    import gguf

    reader = gguf.GGUFReader(path)
    try:
        return _read_fields(reader, path)
    finally:
        close_reader(reader)


def close_reader(reader: Any) -> None:
    """Close a GGUFReader's memory map: drop the arrays that view it, then the map."""
    data = getattr(reader, "data", None)
    mapping = getattr(data, "_mmap", None)
    reader.fields = {}
    reader.tensors = []
    reader.data = None
    del data
    if mapping is not None:
        try:
            mapping.close()
        except BufferError:  # a view is still alive (an exception's frame): gc closes it
            log.debug("GGUF memory map still in use; left to the garbage collector")


def _read_fields(reader: Any, path: Path) -> Imatrix:
    import gguf
    import numpy as np

    fields = reader.fields
    kind = fields.get(gguf.Keys.General.TYPE)
    if kind is None or kind.contents() != GENERAL_TYPE:
        found = kind.contents() if kind is not None else f"no {Keys.General.TYPE}"
        raise ImatrixError(
            f"{path} is a GGUF file but not an importance matrix ({found}).",
            hint="A model file is not an imatrix; pass the file llama-imatrix or quantkit wrote.",
        )
    missing = [k for k in (KEY_DATASETS, KEY_CHUNK_COUNT, KEY_CHUNK_SIZE) if k not in fields]
    if missing:  # llama-quantize refuses these too ("missing imatrix metadata")
        raise ImatrixError(f"{path} lacks the imatrix metadata {', '.join(missing)}.")
    sums: dict[str, np.ndarray] = {}
    counts: dict[str, np.ndarray] = {}
    for tensor in reader.tensors:
        if tensor.tensor_type != gguf.GGMLQuantizationType.F32:
            raise ImatrixError(f"{path}: {tensor.name} is {tensor.tensor_type.name}, not F32.")
        ne = [int(n) for n in tensor.shape]  # ggml order: ne[0] first
        data = np.array(tensor.data, dtype=np.float32).reshape(-1)
        if tensor.name.endswith(SUMS_SUFFIX):
            n_mat = int(np.prod(ne[1:])) if len(ne) > 1 else 1
            sums[tensor.name[: -len(SUMS_SUFFIX)]] = data.reshape(n_mat, ne[0])
        elif tensor.name.endswith(COUNTS_SUFFIX):
            counts[tensor.name[: -len(COUNTS_SUFFIX)]] = np.rint(data).astype(np.float64)
    unpaired = sorted(set(sums) ^ set(counts))
    if unpaired:
        raise ImatrixError(f"{path}: sums and counts do not pair up for {', '.join(unpaired)}.")
    entries = {}
    for name, value in sums.items():
        if counts[name].shape[0] != value.shape[0]:
            raise ImatrixError(f"{path}: {name} has {value.shape[0]} matrices but "
                               f"{counts[name].shape[0]} counts.")  # fmt: skip
        entries[name] = ImatrixEntry(value, counts[name])
    return Imatrix(
        entries,
        tuple(str(d) for d in fields[KEY_DATASETS].contents()),
        int(fields[KEY_CHUNK_COUNT].contents()),
        int(fields[KEY_CHUNK_SIZE].contents()),
    )


def _read_legacy(path: Path) -> Imatrix:
    """The pre-GGUF format: int32 n_entries; per entry int32 len, name, int32 ncall,
    int32 nval, nval float32; then optionally int32 chunk count, int32 len, dataset."""
    import numpy as np

    data = path.read_bytes()
    pos = 0

    def take(fmt: str) -> tuple:
        nonlocal pos
        size = struct.calcsize(fmt)
        if pos + size > len(data):
            raise ImatrixError(f"{path} ends early: not an imatrix (GGUF or legacy .dat).")
        values = struct.unpack_from(fmt, data, pos)
        pos += size
        return values

    (n_entries,) = take("<i")
    if n_entries < 1 or n_entries > 1_000_000:
        raise ImatrixError(f"{path} is neither a GGUF nor a legacy .dat importance matrix.")
    entries = {}
    for _ in range(n_entries):
        (length,) = take("<i")
        if not 0 < length < 4096:
            raise ImatrixError(f"{path}: corrupt entry name length {length}.")
        name = bytes(take(f"<{length}s")[0]).decode("utf-8", errors="replace")
        ncall, nval = take("<ii")
        if nval < 1:
            raise ImatrixError(f"{path}: entry {name} has {nval} values.")
        values = np.array(take(f"<{nval}f"), dtype=np.float32).reshape(1, nval)
        # quantize.cpp divides by ncall, or uses the values as they are when it is 0
        entries[name] = ImatrixEntry(values, np.array([float(ncall if ncall > 0 else 1)]))
    chunks, datasets = 0, ()
    if pos + 4 <= len(data):
        (chunks,) = take("<i")
        if pos + 4 <= len(data):
            (length,) = take("<i")
            if 0 < length <= len(data) - pos:
                datasets = (data[pos : pos + length].decode("utf-8", errors="replace"),)
    return Imatrix(entries, datasets, chunks, 0, legacy=True)


# --- checking against a model -------------------------------------------------------------


def weight_columns(source: SourceModel) -> dict[str, int]:
    """GGUF name -> input columns of every 2-D weight the GGUF writer will emit, read from
    the safetensors headers alone (no weight is loaded). HF stores [out, in]."""
    import gguf

    from ....formats.safetensors_index import shard_files
    from ..arch import ARCHITECTURES
    from ..tensors import index_source_tensors

    spec = ARCHITECTURES.get(source.geometry.architecture)
    if spec is None:
        return {}
    name_map = gguf.get_tensor_name_map(spec.gguf_arch, source.geometry.num_layers)
    columns: dict[str, int] = {}
    for hf_name, tensor in index_source_tensors(shard_files(source.path)).items():
        gguf_name = name_map.get_name(hf_name, try_suffixes=(".weight", ".bias"))
        if gguf_name and gguf_name.endswith(".weight") and len(tensor.shape) == 2:
            columns[gguf_name] = int(tensor.shape[1])
    if source.geometry.tie_word_embeddings and "token_embd.weight" in columns:
        columns.setdefault("output.weight", columns["token_embd.weight"])
    return columns


def check_imatrix(
    imatrix: Imatrix, columns: Mapping[str, int], *, where: str, required: bool
) -> list[str]:
    """Refuse an imatrix made for another model: every entry must name a weight of this
    model with the same number of input columns (llama.cpp aborts on a size mismatch).
    Returns the model's block weights it does not cover; when `required` (a type llama.cpp
    refuses to make without one) a gap is an error too."""
    unknown = sorted(n for n in imatrix.entries if n not in columns)
    if unknown:
        shown = ", ".join(unknown[:3]) + (" ..." if len(unknown) > 3 else "")
        raise ImatrixError(
            f"{where} has entries for tensors this model does not have ({len(unknown)}: "
            f"{shown}); it was computed for another model.",
            hint="Compute one for this model with --imatrix auto.",
        )
    wrong = [
        f"{name} ({entry.n_cols} columns, the model has {columns[name]})"
        for name, entry in sorted(imatrix.entries.items())
        if entry.n_cols != columns[name]
    ]
    if wrong:
        raise ImatrixError(
            f"{where} does not fit this model: {', '.join(wrong[:3])}"
            + (" ..." if len(wrong) > 3 else "")
            + ".",
            hint="Compute one for this model with --imatrix auto.",
        )
    blocks = [n for n in columns if n.startswith("blk.")]
    missing = sorted(n for n in blocks if n not in imatrix.entries)
    if missing and required:
        raise ImatrixError(
            f"{where} lacks {len(missing)} of this model's weights ({', '.join(missing[:3])}"
            f"{' ...' if len(missing) > 3 else ''}), and the type asked for needs every one.",
            hint="Compute a complete one with --imatrix auto.",
        )
    if missing:
        log.warning("%s covers %d block weights of %d; the others are quantized without it",
                    where, len(blocks) - len(missing), len(blocks))  # fmt: skip
    return missing
