"""Several chunks in one llama_decode, the way llama.cpp's `llama-perplexity` evaluates them.

Each chunk is its own sequence (seq_id 0, 1, ..., positions from 0) in a context of
n_seq x n_ctx cells with one KV stream per sequence (`kv_unified` off, llama.cpp's default),
so no chunk attends to another and each sees what a fresh context of n_ctx shows it. The
memory is cleared before every batch, and only the rows the caller scores are output: the
logits of the other positions are never computed through the output matrix nor copied.

Flash attention is on, as in llama-perplexity (its `auto` is on for the CPU). The figures
do not depend on the batching: on the demo model the logits of a chunk are bit-identical
whether it is decoded with others or alone by llama-cpp-python's `Llama.eval`
(tests/evaluation/test_llama_batch.py holds them to 1e-4). That takes one rule: llama.cpp
gives every sequence of a batch an equal share of each ubatch, and ggml-cpu's flash
attention has two kernels, chosen by how many queries of a sequence a ubatch holds: tiles
of FA_QUERY_TILE or more (float32 sums), or one row at a time below (V summed in float16).
A sequence's share must therefore be a whole part of the chunk and at least a tile, as the
chunk alone is (`sequences_sharing_a_ubatch`); at n_ctx 128, four chunks of 32 queries
each differ from one alone by up to 1.3 in a logit.

How many chunks a batch holds (`sequences_per_batch`, with its budget on the logits and
that rule) lives in runtime.memory, beside the other sizes that bound a stage's memory:
planning.cost estimates this evaluation's memory from the same function.
"""

from __future__ import annotations

import contextlib
from typing import TYPE_CHECKING, Any

from ..errors import QuantkitError
from ..runtime.llama_cpp import last_error

if TYPE_CHECKING:
    import numpy as np


class BatchDecodeError(QuantkitError):
    """llama.cpp could not create the evaluation context or decode a batch."""


class ChunkDecoder:
    """A llama.cpp context over a loaded model that decodes up to `n_seq` chunks of at most
    `n_ctx` tokens per call and returns the requested logit rows of each."""

    def __init__(self, model, *, n_ctx: int, n_seq: int, n_threads: int) -> None:
        import llama_cpp

        self.n_ctx, self.n_seq = n_ctx, n_seq
        self.n_vocab = int(llama_cpp.llama_vocab_n_tokens(llama_cpp.llama_model_get_vocab(model)))
        params = llama_cpp.llama_context_default_params()
        params.n_ctx = params.n_batch = n_seq * n_ctx
        # One chunk's worth of tokens per ubatch, as llama-perplexity (its default -ub 512):
        # ubatches of 1024 or the whole batch measured no faster on the demo, and this keeps
        # the graph's buffers (attention scores, the result tensor) at one chunk's size
        # whatever n_seq. llama.cpp then splits the batch into ubatches holding an equal
        # share of every sequence.
        params.n_ubatch = n_ctx
        params.n_seq_max = n_seq
        params.n_threads = params.n_threads_batch = n_threads
        # On, as llama-perplexity's `auto` is on the CPU: 7-14 % faster on the demo and as
        # close to an all-float32 computation as the F16 cache without it (bench_eval's
        # precision table). Enabled rather than `auto`, so that the kernel is the same
        # whatever llama.cpp decides for a device.
        params.flash_attn_type = llama_cpp.LLAMA_FLASH_ATTN_TYPE_ENABLED
        self._ctx = llama_cpp.llama_init_from_model(model, params)
        if not self._ctx:
            raise BatchDecodeError(
                f"llama.cpp could not create an evaluation context of {n_seq} x {n_ctx} tokens.",
                hint="Free memory, or evaluate with a smaller --n-ctx.",
            )
        self._batch = llama_cpp.llama_batch_init(n_seq * n_ctx, 0, 1)
        # The logits are copied into one buffer kept across batches: a fresh array per
        # batch is fresh memory, and page-faulting 200 MB cost 0.4 s of every 8 s batch on
        # the demo (5 % of the throughput), where copying into touched memory costs 0.02 s.
        self._out: Any = None

    def decode(self, chunks: list[list[int]], rows: slice) -> list[np.ndarray]:
        """float32 [rows, vocab] per chunk: the next-token logits at positions `rows` (a
        slice with step 1, taken of each chunk's positions). The arrays are views of a
        buffer the next call overwrites: copy what must outlive it."""
        import llama_cpp
        import numpy as np

        if not 0 < len(chunks) <= self.n_seq:
            raise ValueError(f"{len(chunks)} chunks for a context of {self.n_seq} sequences")
        counts = [self._fill(seq, ids, rows) for seq, ids in enumerate(chunks)]
        llama_cpp.llama_memory_clear(llama_cpp.llama_get_memory(self._ctx), True)
        status = llama_cpp.llama_decode(self._ctx, self._batch)
        if status != 0:
            raise BatchDecodeError(f"llama.cpp failed to decode a batch of {len(chunks)} "
                                   f"chunks (status {status}): {last_error()}")  # fmt: skip
        total = sum(counts)
        # Outputs come in batch order: each chunk's rows in turn (llama_get_logits sorts
        # them back if llama.cpp computed them in another order).
        pointer = llama_cpp.llama_get_logits(self._ctx)
        logits = np.ctypeslib.as_array(pointer, shape=(total * self.n_vocab,))
        if self._out is None or len(self._out) < total:
            self._out = np.empty((total, self.n_vocab), dtype=np.float32)
        out = self._out[:total]
        np.copyto(out, logits.reshape(total, self.n_vocab))
        return np.split(out, np.cumsum(counts)[:-1])

    def _fill(self, seq: int, ids: list[int], rows: slice) -> int:
        """Append chunk `ids` as sequence `seq` to the batch; returns its output count."""
        if len(ids) > self.n_ctx:
            raise ValueError(f"{len(ids)} tokens do not fit n_ctx={self.n_ctx}")
        wanted = range(*rows.indices(len(ids)))
        if wanted.step != 1:
            raise ValueError("rows must be a slice with step 1")
        batch = self._batch
        if seq == 0:
            batch.n_tokens = 0
        start = batch.n_tokens
        for pos, token in enumerate(ids):
            k = start + pos
            batch.token[k] = token
            batch.pos[k] = pos
            batch.n_seq_id[k] = 1
            batch.seq_id[k][0] = seq
            batch.logits[k] = pos in wanted
        batch.n_tokens = start + len(ids)
        return len(wanted)

    def close(self) -> None:
        import llama_cpp

        if getattr(self, "_batch", None) is not None:
            llama_cpp.llama_batch_free(self._batch)
            self._batch = None
        if getattr(self, "_ctx", None):
            llama_cpp.llama_free(self._ctx)
            self._ctx = None

    def __del__(self) -> None:
        with contextlib.suppress(Exception):  # interpreter shutdown
            self.close()
