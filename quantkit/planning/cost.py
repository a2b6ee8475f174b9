"""What a conversion costs this machine, before it starts: each stage's peak resident
memory and time, the temporary and final disk, and the GPU memory when a GPU does the work.

Memory: each stage's peak anonymous memory (what the process itself holds; the weights
that llama.cpp and safetensors memory-map are the page cache's, not counted), from the
model's geometry and the sizes the code works in: the block a writer converts, the layer
the streamed evaluation holds, the batch of chunks it runs, llama.cpp's buffers. Time: each
stage's work (bytes written, parameter-tokens evaluated, elements quantized) divided by
that stage's throughput on this machine, measured by the last convert that ran the stage
(planning.rates; the reference machine's figures until then). docs/profiles.md explains
both; scripts/bench_scale.py measures them against real converts.
Nothing here reads weights or imports a heavy library.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any

from ..formats.quants import AUTO_QUANT, gguf_quant
from ..runtime.cpu import eval_dtype
from ..runtime.memory import (
    FP8_BLOCK_BYTES,
    FP8_BLOCK_WORK,
    chunk_activation_bytes,
    chunks_per_batch,
    head_widening_bytes,
)
from .memory import GIB, MIB, kv_cache_bytes, llama_cpp_compute_bytes, llama_eval_parts
from .model_spec import ModelSpec
from .rates import Rates

# The Python process with torch, transformers, tokenizers and llama.cpp imported, and the
# tokenized evaluation corpus (bench_scale: 0.4-0.6 GB before any weight is read).
PROCESS_BYTES = 600 * MIB
WRITER_BLOCK_BYTES = 32 * MIB  # export/tensors.py's block of float32 rows
GENERATION_KEEP_BYTES = GIB  # inspection/generation.py: decoder layers kept resident
IMATRIX_CHUNK = 512
IMATRIX_CHUNKS = 4  # backends/gguf/imatrix: the default draw (8 samples, ~4 chunks)
IMATRIX_STAGE = "importance matrix (source)"  # its progress stage (backends/gguf/imatrix)
# The generation checks' reply budget: a one-line question's answer must end (the turn's
# end token) within it. 32 was too tight for the demo's FP8 reply on an AVX2 CPU, which
# ends after 48 tokens there (rounding picks a longer answer).
REPLY_TOKENS = 64
GENERATION_EXTRA_BYTES = 400 * MIB  # transformers' tokenizer and generate() around the model
EVAL_CHUNKS = 9  # the shipped corpus in 512-token chunks (demo and Llama 3 tokenizers)
OVERHEAD_LABEL = "the rest (loading, tokenizing, the manifest and card)"
CHECK_CONTEXT = 2048  # runtime.llama_server's context for the round-trip checks
SERVER_PROCESS_BYTES = 100 * MIB  # llama-server itself, beside its context


@dataclass(frozen=True)
class StageCost:
    label: str  # as the progress bar names the stage
    rate_key: str  # planning.rates: which measured throughput applies
    work: float  # units of that throughput (bytes, elements, parameter-tokens)
    peak_bytes: int  # anonymous memory of the process tree while it runs
    seconds: float = 0.0


@dataclass(frozen=True)
class ConvertCost:
    stages: tuple[StageCost, ...]
    disk_peak_bytes: int  # temporary + final, at the worst moment
    disk_final_bytes: int
    gpu_bytes: int | None = None  # None: no GPU does the work
    rates_from: str = ""
    notes: tuple[str, ...] = field(default_factory=tuple)

    @property
    def peak_bytes(self) -> int:
        return max((s.peak_bytes for s in self.stages), default=PROCESS_BYTES)

    @property
    def peak_stage(self) -> str:
        return max(self.stages, key=lambda s: s.peak_bytes).label if self.stages else ""

    @property
    def seconds(self) -> float:
        return sum(s.seconds for s in self.stages)

    def to_dict(self) -> dict[str, Any]:
        return {
            "peak_ram_bytes": self.peak_bytes,
            "peak_ram_stage": self.peak_stage,
            "seconds": round(self.seconds),
            "disk_peak_bytes": self.disk_peak_bytes,
            "disk_final_bytes": self.disk_final_bytes,
            "gpu_bytes": self.gpu_bytes,
            "rates_from": self.rates_from,
            "stages": [
                {"stage": s.label, "seconds": round(s.seconds), "peak_ram_bytes": s.peak_bytes}
                for s in self.stages
            ],  # fmt: skip
            "notes": list(self.notes),
        }


@dataclass(frozen=True)
class CostRequest:
    """What decides the stages: the target, and what runs beside the build."""

    fmt: str
    quant: str
    imatrix: bool = False  # an importance matrix is computed (not read from a file)
    keep_intermediate: bool = False
    auto: bool = False  # --quant auto
    verify: bool = True
    evaluate: bool = True
    n_ctx: int = 512
    eval_chunks: int = EVAL_CHUNKS
    calibration_tokens: int = 256 * 2048  # FP8 static / GPTQ: oneshot's samples x length
    gpu: bool = False
    repack: bool = True  # llama.cpp's weight repacking when a GGUF is checked and evaluated


def convert_cost(
    spec: ModelSpec, request: CostRequest, rates: Rates, *, disk_peak: int, disk_final: int
) -> ConvertCost:
    """Every stage of the convert `request` describes, with its memory and time."""
    stages = [*_build_stages(spec, request)]
    if request.verify:
        stages.append(_checks(spec, request))
    if request.evaluate:
        stages += _evaluation(spec, request)
    # Loading the source, tokenizing, writing the manifest and card: the time between the
    # stages that report progress, which grows with the model's bytes.
    stages.append(StageCost(OVERHEAD_LABEL, "overhead", spec.source_bytes, PROCESS_BYTES))
    timed = tuple(
        StageCost(s.label, s.rate_key, s.work, s.peak_bytes, s.work / rates.rate(s.rate_key))
        for s in stages
    )
    notes = []
    if request.fmt in ("fp8", "gptq", "safetensors") and request.quant in ("FP8", "W4A16"):
        notes.append("llmcompressor loads the model into the free RAM and offloads the rest "
                     "to disk: the figure is what it needs beyond that")  # fmt: skip
    if request.auto:
        # #14's measurement at the 8B shape: probes and relative errors cost 0.87x a plain
        # convert (docs/benchmarks.md), whose stages auto's are without --keep-intermediate
        # (no BF16 file; the relative errors read the shards once instead); they are not
        # broken down further here.
        plain = sum(s.seconds for s in timed)
        timed += (StageCost("--quant auto: probes and relative errors", "", 0.0,
                            _llama_eval_bytes(spec, request), 0.87 * plain),)  # fmt: skip
        notes.append("--quant auto's probes are estimated as 0.87x the rest (measured at 8B)")
    return ConvertCost(timed, disk_peak, disk_final, _gpu_bytes(spec, request),
                       rates.origin, tuple(notes))  # fmt: skip


def choose_repack(
    wanted: bool | None, cost_of: Callable[..., ConvertCost | None], available: int | None
) -> tuple[bool, ConvertCost | None]:
    """llama.cpp's weight repacking for the checks and the evaluation, and the cost with
    it (`cost_of(repack=...)`): as `wanted`, or, when None, on unless the convert does not
    fit `available` bytes of RAM with it and needs less without it (a 70B Q4_K_M repacks
    about 40 GB; if it fits neither way, the preflight refuses the lighter one)."""
    cost = cost_of(repack=wanted is not False)
    if wanted is not None or cost is None:
        return wanted is not False, cost
    if available is None or cost.peak_bytes <= available:
        return True, cost
    lighter = cost_of(repack=False)
    if lighter is None or lighter.peak_bytes >= cost.peak_bytes:
        return True, cost
    note = (f"llama.cpp's weight repacking is off: with it the convert needs "
            f"{cost.peak_bytes / 1e9:.1f} GB, {available / 1e9:.1f} GB are available; "
            "the checks and the evaluation keep the GGUF memory-mapped (slower, and "
            "figures from llama.cpp's plain kernels; --repack forces it)")  # fmt: skip
    return False, replace(lighter, notes=(*lighter.notes, note))


# --- the build ------------------------------------------------------------------------------


def quantize_stage(quant: str, *, llama_quantize: bool = False) -> str:
    """The label of a GGUF quantization stage, in the estimate and in the build's progress:
    a convert's timings find each stage's rate by its label (`record_rates`)."""
    return f"llama.cpp quantize to {quant}" if llama_quantize else f"quantizing to {quant}"


def _build_stages(spec: ModelSpec, r: CostRequest) -> list[StageCost]:
    if r.fmt == "gguf":
        return _gguf_stages(spec, r)
    if r.fmt == "mlx":
        return [StageCost("mlx-lm convert", "mlx_convert", spec.parameter_count,
                          PROCESS_BYTES + spec.source_bytes)]  # fmt: skip
    return _safetensors_stages(spec, r)


def _gguf_stages(spec: ModelSpec, r: CostRequest) -> list[StageCost]:
    quant = gguf_quant(r.quant) if not r.auto else None
    writer = PROCESS_BYTES + 4 * WRITER_BLOCK_BYTES
    if quant is not None and quant.written_directly:
        return [StageCost(f"writing {quant.name} GGUF", f"write:gguf:{quant.name}",
                          spec.source_bytes, writer)]  # fmt: skip
    via_bf16 = r.keep_intermediate  # otherwise from the shards, --quant auto's probes too
    stages = []
    if via_bf16:
        stages.append(StageCost("writing BF16 GGUF", "write:gguf:BF16", spec.source_bytes,
                                writer))  # fmt: skip
    if r.imatrix:
        dtype = eval_dtype(spec.parameter_count)
        tokens = IMATRIX_CHUNKS * IMATRIX_CHUNK
        stages.append(StageCost(IMATRIX_STAGE, f"imatrix:{dtype}", tokens * spec.parameter_count,
                                _imatrix_bytes(spec, 4 if dtype == "float32" else 2)))  # fmt: skip
    # --quant auto builds its file itself, from the BF16 file too
    llama_quantize = via_bf16 and not r.auto
    stages.append(StageCost(quantize_stage(r.quant, llama_quantize=llama_quantize),
                            f"quantize:{r.quant}", spec.parameter_count,
                            writer + _llama_quantize_buffers(llama_quantize)))  # fmt: skip
    return stages


def _llama_quantize_buffers(llama_cpp: bool) -> int:
    # llama.cpp's quantizer works in slabs of at most LLAMA_QUANT_MAX_BUF_SIZE (256 MiB)
    # of source, float32 and output rows; ours in 32 MB blocks of float32 rows (the one
    # quantized, the next one read ahead, the one being read, and output rows).
    return 3 * 256 * MIB if llama_cpp else 4 * WRITER_BLOCK_BYTES


def _imatrix_bytes(spec: ModelSpec, dtype_bytes: int) -> int:
    """The streamed model's decoder on a batch of calibration chunks (backends/gguf/imatrix/
    source_pass.py): the batch's activations and hidden states, one layer, and the
    collector's float32 squares of the widest input (the gate/up product), twice (the
    widened copy and its squares). No head: the matrix leaves the output weight out."""
    g = spec.geometry
    per_chunk = chunk_activation_bytes(IMATRIX_CHUNK, g.hidden_size, g.intermediate_size,
                                       dtype_bytes, False)  # fmt: skip
    batch = min(IMATRIX_CHUNKS, chunks_per_batch(per_chunk))
    hidden = batch * IMATRIX_CHUNK * g.hidden_size * dtype_bytes
    squares = 2 * batch * IMATRIX_CHUNK * g.intermediate_size * 4
    layer = _layer_bytes(spec, dtype_bytes)
    return PROCESS_BYTES + hidden + batch * per_chunk + layer + squares


def _safetensors_stages(spec: ModelSpec, r: CostRequest) -> list[StageCost]:
    if r.quant in ("BF16", "FP16"):
        return [StageCost(f"writing {r.quant} safetensors", "write:safetensors", spec.source_bytes,
                          PROCESS_BYTES + 4 * WRITER_BLOCK_BYTES)]  # fmt: skip
    if r.quant == "FP8_DYNAMIC":
        # One tensor at a time (backends/safetensors/model_free.py), a large one a block of
        # rows at a time: the converter's work on the largest tensor read whole (a decoder
        # weight's; the others pass through as they are) or on one block.
        whole = [t for t in spec.tensors if t.nbytes <= FP8_BLOCK_BYTES]
        largest_whole = max(
            (t.nbytes * (FP8_BLOCK_WORK if ".layers." in t.name else 1) for t in whole),
            default=0,
        )
        peak = PROCESS_BYTES + max(largest_whole, FP8_BLOCK_WORK * FP8_BLOCK_BYTES)
        return [StageCost("FP8_DYNAMIC tensor by tensor", "fp8_tensors", spec.parameter_count,
                          peak)]  # fmt: skip
    # FP8 static and GPTQ: llmcompressor's oneshot over a model loaded into the free RAM
    # and offloaded to disk beyond it (so it takes the RAM there is, and is not refused for
    # want of more), one decoder layer onloaded at a time with its float32 Hessians (GPTQ).
    g = spec.geometry
    hessians = 4 * (3 * g.hidden_size**2 + g.intermediate_size**2) if "W4" in r.quant else 0
    return [StageCost(f"llmcompressor {r.quant}", f"calibrate:{r.quant}",
                      r.calibration_tokens * spec.parameter_count,
                      PROCESS_BYTES + 2 * _layer_bytes(spec, 2) + hessians)]  # fmt: skip


# --- checks and evaluation ------------------------------------------------------------------


def _checks(spec: ModelSpec, r: CostRequest) -> StageCost:
    """The survival checks: tokenizer checks, and a short greedy reply (llama.cpp for GGUF,
    plus llama-server's round trip; the streamed model for safetensors)."""
    work = REPLY_TOKENS * spec.parameter_count
    if r.fmt == "gguf":
        return StageCost("checking the artifact", "checks:gguf" + _plain(r), work,
                         _llama_check_bytes(spec, r))  # fmt: skip
    if r.fmt == "mlx":
        return StageCost("checking the artifact", "checks:mlx", work,
                         PROCESS_BYTES + _artifact_bytes(spec, r))  # fmt: skip
    # The reply runs in the folder's dtype: uncompressed layers are views of the file's
    # pages; decompressed ones (FP8, INT4) are the process's, the first
    # GENERATION_KEEP_BYTES of them kept, the next built (and spilled) one at a time.
    layer = _layer_bytes(spec, 2)
    compressed = r.quant not in ("BF16", "FP16")
    kept = min(GENERATION_KEEP_BYTES, layer * spec.geometry.num_layers) if compressed else 0
    return StageCost("checking the artifact", f"checks:{r.quant}", work,
                     PROCESS_BYTES + GENERATION_EXTRA_BYTES + kept + 2 * layer)  # fmt: skip


def _evaluation(spec: ModelSpec, r: CostRequest) -> list[StageCost]:
    dtype_bytes = 4 if eval_dtype(spec.parameter_count) == "float32" else 2
    work = r.eval_chunks * r.n_ctx * spec.parameter_count
    dtype = "float32" if dtype_bytes == 4 else "bfloat16"
    reference = StageCost("reference logits (source)", f"reference:{dtype}", work,
                          _streamed_eval_bytes(spec, r, dtype_bytes, compressed=False))  # fmt: skip
    if r.fmt == "gguf":
        artifact = StageCost("evaluating artifact (llama.cpp)",
                             f"eval:gguf:{r.quant}" + _plain(r), work,
                             _llama_eval_bytes(spec, r))  # fmt: skip
    elif r.fmt == "mlx":
        artifact = StageCost("evaluating artifact (mlx)", "eval:mlx", work,
                             PROCESS_BYTES + _artifact_bytes(spec, r))  # fmt: skip
    else:
        compressed = r.quant not in ("BF16", "FP16")
        artifact = StageCost("evaluating artifact (transformers)",
                             f"eval:{r.quant}:{dtype}", work,
                             _streamed_eval_bytes(spec, r, dtype_bytes, compressed))  # fmt: skip
    return [reference, artifact]


def _streamed_eval_bytes(spec: ModelSpec, r: CostRequest, dtype_bytes: int, compressed: bool):
    """The layer-by-layer transformers model (source.streamed_model), in two phases: the
    decoder (one layer, decompressed if compressed, and a batch of chunks' activations),
    then the head on one chunk's scored rows (in a float32 evaluation its widening of the
    16-bit head, whole or a slice: runtime.memory; and the logits). The batch's hidden
    states span both."""
    g = spec.geometry
    per_chunk = chunk_activation_bytes(r.n_ctx, g.hidden_size, g.intermediate_size,
                                       dtype_bytes, compressed)  # fmt: skip
    batch = min(r.eval_chunks, chunks_per_batch(per_chunk))
    # A compressed layer's stored weights are file views; its decompressed copy is what
    # takes memory, with one Linear's float32 dequantization work at a time on top.
    dequantizing = g.hidden_size * g.intermediate_size * 4 if compressed else 0
    decoder = batch * per_chunk + _layer_bytes(spec, dtype_bytes) + dequantizing
    widened = head_widening_bytes(g.vocab_size, g.hidden_size, 4) if dtype_bytes == 4 else 0
    head = widened + 3 * (r.n_ctx // 2) * g.vocab_size * 4
    hidden = batch * r.n_ctx * g.hidden_size * dtype_bytes
    return PROCESS_BYTES + hidden + max(decoder, head)


def _llama_eval_bytes(spec: ModelSpec, r: CostRequest) -> int:
    """The llama.cpp evaluation: the process, the repacked weights, and what scoring a
    batch of chunks holds (llama_eval_parts)."""
    parts = llama_eval_parts(spec.geometry, r.n_ctx, r.eval_chunks)
    return PROCESS_BYTES + _repacked_bytes(spec, r) + sum(parts.values())


def _llama_check_bytes(spec: ModelSpec, r: CostRequest) -> int:
    """The GGUF checks, one after the other: a greedy reply in llama.cpp in-process (512
    tokens of context), then llama-server's round trip in a process of its own
    (CHECK_CONTEXT tokens); each holds the repacked weights while it runs."""
    g = spec.geometry

    def context(tokens: int) -> int:
        return kv_cache_bytes(g, tokens) + llama_cpp_compute_bytes(g, tokens)

    server = SERVER_PROCESS_BYTES + context(CHECK_CONTEXT)
    return PROCESS_BYTES + _repacked_bytes(spec, r) + max(context(512), server)


def _plain(r: CostRequest) -> str:
    """The rate key's suffix for llama.cpp without weight repacking: its plain kernels are
    slower, measured apart (until measured, the repacked rate applies)."""
    return "" if r.repack else ":plain"


def _repacked_bytes(spec: ModelSpec, r: CostRequest) -> int:
    """llama.cpp's CPU backend copies the weight matrices of some types into interleaved
    layouts for its faster kernels when it loads a model: anonymous memory as large as
    those tensors, beside the memory-mapped file (ggml-cpu's repack.cpp; which types, by
    the build's instruction sets: runtime.llama_cpp.repacked_types). At 8B Q4_K_M, 2.9 GB."""
    from ..runtime.llama_cpp import repacked_types
    from .memory import gguf_tensors

    if not r.repack or r.auto or gguf_quant(r.quant).written_directly:  # none repacked
        return 0
    repacked = repacked_types()
    return sum(t.nbytes for t in gguf_tensors(spec, r.quant)
               if t.layer is not None and t.ggml_type in repacked)  # fmt: skip


# --- sizes ----------------------------------------------------------------------------------


def _layer_bytes(spec: ModelSpec, dtype_bytes: int) -> int:
    g = spec.geometry
    attention = g.hidden_size * g.head_dim * (2 * g.num_heads + 2 * g.num_kv_heads)
    return (attention + 3 * g.hidden_size * g.intermediate_size) * dtype_bytes


def _artifact_bytes(spec: ModelSpec, r: CostRequest) -> int:
    from .memory import artifact_weights_bytes

    return artifact_weights_bytes(spec, r.fmt, r.quant)


def _gpu_bytes(spec: ModelSpec, r: CostRequest) -> int | None:
    """A GPU calibrating FP8 static or GPTQ holds one decoder layer in BF16, its float32
    Hessians (GPTQ) and the calibration batch's activations."""
    if not r.gpu or r.fmt != "safetensors" or r.quant in ("BF16", "FP16"):
        return None
    g = spec.geometry
    hessians = 4 * (3 * g.hidden_size**2 + g.intermediate_size**2) if "W4" in r.quant else 0
    return _layer_bytes(spec, 2) + hessians + 2048 * g.intermediate_size * 4 * 4


class StageClock:
    """Wraps a progress callback; notes when each stage first and last reported, so a
    finished convert can record each stage's rate (planning.rates). The time outside the
    stages since the clock was made is OVERHEAD_LABEL's."""

    def __init__(self) -> None:
        import time

        self._spans: dict[str, list[float]] = {}
        self._started = time.perf_counter()

    def wrap(self, progress):
        import time

        def tick(stage: str, done: int, total: int) -> None:
            now = time.perf_counter()
            self._spans.setdefault(stage, [now, now])[1] = now
            if progress is not None:
                progress(stage, done, total)

        return tick

    def seconds(self) -> dict[str, float]:
        import time

        spans = {stage: last - first for stage, (first, last) in self._spans.items()}
        spans[OVERHEAD_LABEL] = time.perf_counter() - self._started - sum(spans.values())
        return spans


def gguf_disk_peak(spec: ModelSpec, quant: str, *, via_bf16: bool, probes: bool = False) -> int:
    """Peak disk of a GGUF build: the final file, or what exists beside or before it for a
    while: the BF16 intermediate (--keep-intermediate, beside everything else). An
    importance matrix is computed from the shards and writes only itself. For --quant auto
    (`quant` AUTO) Q8_0, its largest type, bounds the file; its probes' all-Q8_0 shards
    and probe-type shards (every other layer: 2 x Q8_0 keeps a margin) are removed before
    the file is written, so they bound the peak instead (docs/quantization.md, "Costs")."""
    from .memory import gguf_file_bytes

    bf16 = gguf_file_bytes(spec, "BF16") if via_bf16 else 0
    if quant == AUTO_QUANT.name:
        q8 = gguf_file_bytes(spec, "Q8_0")
        return bf16 + (2 * q8 if probes else q8)
    return bf16 + gguf_file_bytes(spec, quant)
