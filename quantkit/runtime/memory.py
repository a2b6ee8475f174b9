"""Memory a finished stage freed, handed back to the system; and the sizes that bound a
stage's memory (the streamed evaluation's batch of chunks and widened head, FP8's row
blocks), shared by the stages and the cost estimate (planning.cost).

A stage that ran a model leaves two kinds of garbage: Python objects kept alive only by
reference cycles (transformers modules and their hooks point at each other), which wait
for the cyclic collector, and freed heap pages that glibc's malloc keeps for reuse. Both
count as the process's resident anonymous memory, so the next stage's peak would sit on
top of them (1B FP8 convert: 2.2 GB left over by the generation check before the
evaluation began; docs/benchmarks.md).
"""

from __future__ import annotations

import ctypes
import gc
from functools import cache

# The streamed evaluation's output head, widened from its file's 16 bits while it runs
# (source.streamed_model.WidenedHead): whole up to WHOLE_HEAD_BYTES, so the product has
# the same bits as the whole model's; above (Llama 3.1 8B's in float32: 2.1 GB) a slice of
# vocabulary rows at a time.
WHOLE_HEAD_BYTES = 1 << 30
HEAD_SLICE_BYTES = 256 << 20


def head_widening_bytes(vocab: int, hidden: int, itemsize: int) -> int:
    """The widened copy of the head that exists at once while it runs."""
    whole = vocab * hidden * itemsize
    if whole <= WHOLE_HEAD_BYTES:
        return whole
    return head_slice_rows(hidden, itemsize) * hidden * itemsize


def head_slice_rows(hidden: int, itemsize: int) -> int:
    return max(1, HEAD_SLICE_BYTES // (hidden * itemsize))


# FP8_DYNAMIC tensor by tensor (backends/safetensors/model_free.py) reads and quantizes a
# large weight a block of rows at a time, this many bytes of the source. The converter's
# work on a block (the block, its float32 copy, the FP8 result and scales) stays within
# FP8_BLOCK_WORK blocks.
FP8_BLOCK_BYTES = 64 << 20
FP8_BLOCK_WORK = 4

# The layer-by-layer transformers evaluation (evaluation.engines.TransformersEngine) puts a
# batch of chunks through each layer at once. A chunk of n_ctx tokens has about 6 x hidden
# + 3 x intermediate values a token in flight (the residual, the norm, q/k/v and the
# attention output; gate, up and their product) plus one head's attention scores; in a
# compressed layer (FP8's dynamic activation quantization) each Linear's input is copied
# again. The batch is as many chunks as keep all of that within ACTIVATION_BUDGET.
ACTIVATION_BUDGET = 1 << 30
MOST_CHUNKS = 16


def chunk_activation_bytes(
    n_ctx: int, hidden: int, intermediate: int, itemsize: int, compressed: bool
) -> int:
    """One chunk's activations in flight inside a decoder layer."""
    per_token = 6 * hidden + 3 * intermediate + n_ctx
    return n_ctx * per_token * itemsize * (2 if compressed else 1)


def chunks_per_batch(per_chunk: int) -> int:
    """As many chunks of `per_chunk` activation bytes as fit in ACTIVATION_BUDGET."""
    return max(1, min(MOST_CHUNKS, ACTIVATION_BUDGET // per_chunk))


def scored_rows(n_ctx: int) -> slice:
    """The rows of a chunk's logits that are scored: positions n_ctx/2 ... n_ctx-2, which
    predict tokens n_ctx/2+1 ... n_ctx-1 (llama-perplexity's second half)."""
    return slice(n_ctx // 2, n_ctx - 1)


# The llama.cpp evaluation (evaluation.llama_batch) decodes several chunks at once, each its
# own sequence, with logits for the scored rows only. A batch's logits are held twice:
# llama.cpp's output buffer (outputs x n_vocab float32) and quantkit's copy (one buffer kept
# across batches), plus the graph's result tensor for one ubatch. A bound of 512 MiB on the
# output keeps all of that near 1 GB and still fits llama-perplexity's full batch at n_ctx
# 512 for the demo's 49,152 tokens (4 chunks x 255 rows: 191 MiB) and Llama 3's 128,256
# (499 MiB); Qwen3's 151,936 gets 3 chunks, and Llama 3 from n_ctx 2048 one chunk at a
# time, as before.
LOGITS_BUDGET = 512 * 2**20
# llama-perplexity's batch at its usual settings (-b 2048 with -c 512).
MOST_SEQUENCES = 4
# ggml-cpu's flash attention runs its tiled kernel when a ubatch holds at least this many
# queries of a sequence (GGML_FA_TILE_Q in ggml/src/ggml-cpu/common.h, llama.cpp as vendored
# in llama-cpp-python 0.3.36), and its one-row kernel below.
FA_QUERY_TILE = 64


def sequences_per_batch(
    rows_per_chunk: int,
    n_vocab: int,
    n_ctx: int,
    *,
    budget: int = LOGITS_BUDGET,
    most: int = MOST_SEQUENCES,
) -> int:
    """How many chunks of n_ctx tokens to decode at once: as many as keep the output logits
    within `budget` bytes and give the same bits as each chunk alone (at least one: a
    single chunk is decoded whatever its size)."""
    per_chunk = max(1, rows_per_chunk) * n_vocab * 4
    return sequences_sharing_a_ubatch(n_ctx, max(1, min(most, budget // per_chunk)))


def sequences_sharing_a_ubatch(n_ctx: int, most: int) -> int:
    """The largest n <= most whose share of a ubatch of n_ctx tokens, n_ctx / n queries of
    each chunk, is whole and at least FA_QUERY_TILE, so that flash attention takes the
    kernel it takes for the chunk alone (evaluation.llama_batch's docstring); 1 when none
    is."""
    fits = [n for n in range(1, most + 1) if n_ctx % n == 0 and n_ctx // n >= FA_QUERY_TILE]
    return max(fits, default=1)


def release_freed_memory() -> None:
    """Collect cyclic garbage, then return the free heap pages (return_free_heap)."""
    gc.collect()
    return_free_heap()


def return_free_heap() -> None:
    """Ask glibc to give its free heap pages back to the kernel (a no-op on other C
    libraries). Once a block of up to 32 MB has been freed, glibc serves blocks of that size
    from its heap instead of mapping them, and keeps the heap's freed pages: in a
    layer-by-layer pass (source.streamed_model) a 1B model's float32 layers (16 MB
    projections) and activations left RssAnon about 90 MB higher after every layer, 2.1 GB
    at the last of 16 where the pass needs 1.2 GB. Trimming after each layer keeps it flat,
    for a few milliseconds."""
    trim = _malloc_trim()
    if trim is not None:
        trim(0)


@cache
def _malloc_trim():
    try:
        return ctypes.CDLL("libc.so.6").malloc_trim
    except (OSError, AttributeError):  # not glibc
        return None


def available_memory() -> int | None:
    """What the kernel says can be allocated without swapping (MemAvailable), in bytes;
    None where /proc/meminfo does not say."""
    try:
        with open("/proc/meminfo", encoding="ascii") as fh:
            for line in fh:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        return None
    return None
