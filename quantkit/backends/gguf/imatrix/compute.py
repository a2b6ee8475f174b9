"""The calibration chunks of an importance matrix, and the matrix computed the way
llama-imatrix computes it: inside llama.cpp.

`--imatrix auto` computes the matrix from the shards (source_pass.py, which reads the chunks
prepared here). The llama.cpp computation below is the reference it is held to
(tests/backends/gguf/imatrix/test_compute.py, docs/formats.md), and what the benchmarks
that compare matrices run: a GGUF of the model is evaluated by llama.cpp on the chunks,
with an evaluation callback (`cb_eval`, the hook llama-imatrix uses) that sees every
matrix multiplication of the graph. For each one whose
weight is a `blk.*` tensor and whose input has at least 16 F32 rows, the callback adds the
squares of the input activations per column and counts the rows: exactly what
tools/imatrix/imatrix.cpp collects, on the same graph, weights, kernels and GGUF names.
Q/K/V (and gate/up) get separate, identical entries because llama.cpp multiplies each
weight separately; `output.weight` is left out as llama-imatrix leaves it out by default.

The text side follows llama-imatrix too: the calibration samples (chat-rendered, as for
GPTQ; plain text, the messages' contents joined, for a model without a chat template) form
one token stream that is cut into chunks of `chunk_size` tokens (llama.cpp's
default 512); where the model adds a BOS the first token of every chunk is replaced by it;
logits are requested for every position so the last layer sees every token.

llama-cpp-python exposes `cb_eval` but not `struct ggml_tensor`; its layout is declared
below from the vendored ggml.h and checked at the first callback against libggml's own
accessors (ggml_get_name, ggml_nelements), so a llama.cpp whose layout differs fails loudly
instead of reading garbage.
"""

from __future__ import annotations

import ctypes
import logging
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ....errors import CalibrationError, ImatrixError, require
from ....runtime import cpu
from ....runtime.interrupts import called_from_c
from .matrix import Imatrix, ImatrixEntry

log = logging.getLogger(__name__)

CHUNK_SIZE = 512  # llama-imatrix's default context
MIN_ROWS = 16  # llama-imatrix ignores matrix products over fewer rows
_GGML_TYPE_F32 = 0


@dataclass(frozen=True)
class ImatrixData:
    """Calibration text cut into llama.cpp-style chunks (prepared before any weight is read)."""

    chunks: tuple[tuple[int, ...], ...]
    chunk_size: int
    dataset: str  # what goes into imatrix.datasets / quantize.imatrix.dataset
    calibration: dict[str, Any] = field(default_factory=dict)

    @property
    def tokens(self) -> int:
        return len(self.chunks) * self.chunk_size


def prepare_imatrix_data(
    bundle: Any,
    *,
    calibration: str | None,
    samples: int,
    chunk_size: int,
    seed: int,
    think_share: float | None = None,
    tool_share: float | None = None,
) -> ImatrixData:
    """Draw `samples` calibration samples, join them into one token stream (as llama.cpp
    tokenizes a text file) and cut it into whole chunks, each starting with the BOS where
    the model adds one."""
    from dataclasses import replace

    from ....calibration.sets import BUILTIN, load_calibration

    # Tokenize each sample as a piece of one text file: no BOS added per sample (a BOS the
    # chat template writes itself stays, as it would in the text llama-imatrix reads).
    as_text = replace(bundle, tokenizer_config={**bundle.tokenizer_config, "add_bos_token": False})
    calib = load_calibration(
        calibration,
        as_text,
        samples=samples,
        seq_len=2**31 - 1,  # whole samples: the chunking below sets the length
        seed=seed,
        think_share=think_share,
        tool_share=tool_share,
        chat_as_text=True,  # a base model: the mix as plain text, as llama-imatrix reads it
    )
    bos_token = bundle.special_token("bos")
    bos_id = bundle.token_id(bos_token) if bos_token else None
    add_bos = bool(bundle.add_bos and bos_id is not None)
    stream = [token for ids in calib.samples for token in ids]
    if chunk_size < 16:
        raise CalibrationError(f"An imatrix chunk needs at least 16 tokens (got {chunk_size}).")
    n_chunks = len(stream) // chunk_size
    if n_chunks < 1:
        raise CalibrationError(
            f"{len(calib)} calibration samples make {len(stream)} tokens, less than one "
            f"imatrix chunk of {chunk_size}.",
            hint="Raise --calibration-samples or lower --calibration-seq-len.",
        )
    chunks = []
    for i in range(n_chunks):
        chunk = stream[i * chunk_size : (i + 1) * chunk_size]
        if add_bos:
            chunk[0] = bos_id  # replaced, not inserted: llama-imatrix does the same
        chunks.append(tuple(chunk))
    described = calib.describe()
    del described["seq_len"]  # whole samples; the chunking sets the length
    described.update(seq_len=None, chunk_size=chunk_size, chunks=n_chunks,
                     tokens_used=n_chunks * chunk_size)  # fmt: skip
    dataset = f"quantkit:{BUILTIN}" if calib.source == BUILTIN else calib.source
    if calib.plain_text:
        dataset += " (plain text)"
    return ImatrixData(tuple(chunks), chunk_size, dataset, described)


# --- llama.cpp side -----------------------------------------------------------------------


class _GGMLTensor(ctypes.Structure):
    pass


# ggml.h (GGML_MAX_DIMS 4, GGML_MAX_OP_PARAMS 64, GGML_MAX_SRC 10, GGML_MAX_NAME 64)
_GGMLTensor._fields_ = [
    ("type", ctypes.c_int),
    ("buffer", ctypes.c_void_p),
    ("ne", ctypes.c_int64 * 4),
    ("nb", ctypes.c_size_t * 4),
    ("op", ctypes.c_int),
    ("op_params", ctypes.c_int32 * 16),
    ("flags", ctypes.c_int32),
    ("src", ctypes.POINTER(_GGMLTensor) * 10),
    ("view_src", ctypes.POINTER(_GGMLTensor)),
    ("view_offs", ctypes.c_size_t),
    ("data", ctypes.c_void_p),
    ("name", ctypes.c_char * 64),
    ("extra", ctypes.c_void_p),
    ("padding", ctypes.c_char * 8),
]


def _ggml_library() -> ctypes.CDLL:
    import llama_cpp

    folder = Path(llama_cpp.__file__).parent / "lib"
    candidates = sorted(folder.glob("libggml-base.*")) + sorted(folder.glob("ggml-base.*"))
    if not candidates:
        raise ImatrixError(f"libggml-base is not in {folder}; cannot read llama.cpp tensors.")
    lib = ctypes.CDLL(str(candidates[0]))
    signatures = {
        "ggml_op_name": (ctypes.c_char_p, [ctypes.c_int]),
        "ggml_get_name": (ctypes.c_char_p, [ctypes.c_void_p]),
        "ggml_nelements": (ctypes.c_int64, [ctypes.c_void_p]),
        "ggml_backend_buffer_is_host": (ctypes.c_bool, [ctypes.c_void_p]),
        "ggml_backend_tensor_get": (
            None,
            [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_size_t, ctypes.c_size_t],
        ),  # fmt: skip
    }
    for name, (restype, argtypes) in signatures.items():
        fn = getattr(lib, name)
        fn.restype, fn.argtypes = restype, argtypes
    return lib


def _filter_name(name: str) -> str:
    """`CUDA0#blk.0.attn_k.weight#0` -> `blk.0.attn_k.weight` (imatrix.cpp)."""
    if "#" in name:
        name = name.split("#", 2)[1]
    return name


class _Collector:
    """The cb_eval callback: sums of squared inputs per column, per weight name."""

    def __init__(self, lib: ctypes.CDLL) -> None:
        import numpy as np

        self.np = np
        self.lib = lib
        self.ops: dict[int, str] = {}
        self.sums: dict[str, Any] = {}
        self.counts: dict[str, int] = {}
        self.error: BaseException | None = None
        self.checked = False
        self.skipped_moe: set[str] = set()

    def op_name(self, op: int) -> str:
        name = self.ops.get(op)
        if name is None:
            name = self.ops[op] = (self.lib.ggml_op_name(op) or b"").decode()
        return name

    @called_from_c
    def __call__(self, ptr: int, ask: bool, _user: Any) -> bool:
        if self.error is not None:
            return False
        try:
            return self._handle(ptr, ask)
        except BaseException as exc:  # an exception must not cross into C
            self.error = exc
            return False

    def _self_check(self, ptr: int, t: _GGMLTensor) -> None:
        name = (self.lib.ggml_get_name(ptr) or b"").decode(errors="replace")
        if name != t.name.decode(errors="replace") or self.lib.ggml_nelements(ptr) != math.prod(
            t.ne
        ):
            raise ImatrixError(
                "This llama.cpp's struct ggml_tensor differs from the layout quantkit reads.",
                hint="Use llama-cpp-python 0.3.36, or pass an imatrix made by llama-imatrix "
                "with --imatrix FILE.",
            )
        self.checked = True

    def _handle(self, ptr: int, ask: bool) -> bool:
        t = ctypes.cast(ptr, ctypes.POINTER(_GGMLTensor)).contents
        if not self.checked:
            self._self_check(ptr, t)
        op = self.op_name(t.op)
        if op not in ("MUL_MAT", "MUL_MAT_ID"):
            return not ask  # not interested; the answer after a compute is "go on"
        src0, src1 = t.src[0].contents, t.src[1].contents
        wname = _filter_name(src0.name.decode(errors="replace"))
        if ask:
            if op == "MUL_MAT_ID":  # MoE experts: not in the dense models quantkit converts
                self.skipped_moe.add(wname)
                return False
            if src1.ne[1] < MIN_ROWS or src1.type != _GGML_TYPE_F32:
                return False
            return wname.startswith("blk.")
        return self._collect(wname, src0, src1)

    def _collect(self, wname: str, src0: _GGMLTensor, src1: _GGMLTensor) -> bool:
        np = self.np
        if src1.nb[0] != 4:
            raise ImatrixError(f"{wname}: the input of the product is not contiguous F32.")
        ne = [int(n) for n in src1.ne]
        nb = [int(n) for n in src1.nb]
        span = sum((n - 1) * s for n, s in zip(ne, nb, strict=True)) + 4
        if self.lib.ggml_backend_buffer_is_host(src1.buffer):
            raw = (ctypes.c_char * span).from_address(src1.data)
            buf = np.frombuffer(raw, dtype=np.uint8)
        else:  # a GPU build: copy the activations to the host first
            buf = np.empty(span, dtype=np.uint8)
            self.lib.ggml_backend_tensor_get(ctypes.addressof(src1), buf.ctypes.data, 0, span)
        x = np.lib.stride_tricks.as_strided(
            buf.view(np.float32), shape=ne[::-1], strides=nb[::-1], writeable=False
        )  # (ne3, ne2, ne1, ne0)
        n2, n3 = int(src0.ne[2]), int(src0.ne[3])
        n_mat = n2 * n3
        acc = self.sums.get(wname)
        if acc is None:
            acc = self.sums[wname] = np.zeros((n_mat, ne[0]), dtype=np.float64)
            self.counts[wname] = 0
        elif acc.shape != (n_mat, ne[0]):
            raise ImatrixError(f"{wname}: inconsistent size {acc.shape} vs {(n_mat, ne[0])}.")
        for i3 in range(ne[3]):
            for i2 in range(ne[2]):
                rows = np.asarray(x[i3, i2], dtype=np.float64)
                acc[(i3 % n3) * n2 + (i2 % n2)] += np.einsum("ij,ij->j", rows, rows)
        if not np.isfinite(acc).all():
            raise ImatrixError(f"Non-finite activations in {wname}; the model is broken.")
        self.counts[wname] += ne[1] * ne[2] * ne[3] // n_mat
        return True


def compute_imatrix(
    gguf_path: Path,
    data: ImatrixData,
    *,
    threads: int | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> Imatrix:
    """Evaluate `gguf_path` on `data`'s chunks in llama.cpp and collect the imatrix."""
    llama_cpp = require("llama_cpp", "gguf")
    from ....runtime.llama_cpp import silence_llama_cpp

    silence_llama_cpp()
    collector = _Collector(_ggml_library())
    callback = llama_cpp.ggml_backend_sched_eval_callback(collector)
    llama_cpp.llama_backend_init()
    model_params = llama_cpp.llama_model_default_params()
    model = llama_cpp.llama_model_load_from_file(str(gguf_path).encode(), model_params)
    if not model:
        raise ImatrixError(f"llama.cpp could not load {gguf_path.name} to compute the imatrix.")
    ctx = batch = None
    try:
        params = llama_cpp.llama_context_default_params()
        n = data.chunk_size
        params.n_ctx = params.n_batch = params.n_ubatch = n
        params.n_threads = params.n_threads_batch = threads or cpu.threads()
        params.cb_eval = callback
        params.cb_eval_user_data = None
        ctx = llama_cpp.llama_init_from_model(model, params)
        if not ctx:
            raise ImatrixError("llama.cpp could not create a context for the imatrix.")
        batch = llama_cpp.llama_batch_init(n, 0, 1)
        for done, chunk in enumerate(data.chunks, start=1):
            llama_cpp.llama_memory_clear(llama_cpp.llama_get_memory(ctx), True)
            batch.n_tokens = len(chunk)
            for k, token in enumerate(chunk):
                batch.token[k] = token
                batch.pos[k] = k
                batch.n_seq_id[k] = 1
                batch.seq_id[k][0] = 0
                batch.logits[k] = True  # every position: the last layer sees every token
            status = llama_cpp.llama_decode(ctx, batch)
            if collector.error is not None:
                raise collector.error
            if status != 0:
                raise ImatrixError(f"llama.cpp failed to evaluate imatrix chunk {done} ({status}).")
            if progress is not None:
                progress(done, len(data.chunks))
    finally:
        if batch is not None:
            llama_cpp.llama_batch_free(batch)
        if ctx:
            llama_cpp.llama_free(ctx)
        llama_cpp.llama_model_free(model)
    if collector.skipped_moe:
        log.warning("imatrix: %d MoE expert tensors were not collected", len(collector.skipped_moe))
    if not collector.sums:
        raise ImatrixError(f"No matrix product of {gguf_path.name} was collected.")
    entries = {
        name: ImatrixEntry(
            sums.astype("float32"),
            collector.np.full(sums.shape[0], float(collector.counts[name])),
        )
        for name, sums in collector.sums.items()
    }
    chunk_count = max(collector.counts.values()) // data.chunk_size
    log.info("imatrix: %d entries from %d chunks of %d tokens", len(entries), chunk_count, n)
    return Imatrix(entries, (data.dataset,), chunk_count, data.chunk_size)
