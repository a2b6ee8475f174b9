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


def release_freed_memory() -> None:
    """Collect cyclic garbage, then ask glibc to return its free heap pages (a no-op on
    other C libraries)."""
    gc.collect()
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
