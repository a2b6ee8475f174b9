"""The memory model: pure functions from (model spec, scheme, context) to byte counts.

Three parts, each with its source in docs/profiles.md:
- weights: the artifact's tensors as they will be on disk (GGUF per-tensor types from
  gguf_types; compressed-tensors layouts for FP8 and GPTQ);
- KV cache: 2 x layers x kv_heads x head_dim x bytes/element x tokens;
- runtime overhead: llama.cpp's compute and output buffers (the sizes of its reserve
  graph), or vLLM's activation peak, CUDA graphs and non-torch allocations.
Nothing here prints, reads files or imports a heavy library.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..formats.gguf_types import GGUFTensor, QuantContext, gguf_name, hf_role, tensor_type
from ..formats.mlx_quants import DEFAULT_GROUP_SIZE as MLX_GROUP_SIZE
from ..formats.mlx_quants import mlx_bytes
from ..formats.schemes import safetensors_bytes
from ..runtime.memory import scored_rows, sequences_per_batch
from ..source.model import ModelGeometry
from .model_spec import ModelSpec

KIB, MIB, GIB = 1024, 1024**2, 1024**3
GGUF_ALIGNMENT = 32  # general.alignment default: every tensor's data starts 32-byte aligned
# GGUF metadata per vocabulary entry: the token string (~7 bytes + 8-byte length), its
# type (4) and score (4), and about two BPE merges (~2 x 12 bytes) per token.
GGUF_METADATA_PER_TOKEN = 48
GGUF_METADATA_BASE = 64 * KIB  # hyper-parameters, chat template, kv headers
# Bytes per KV element: q8_0 stores 32 values in 34 bytes (ggml's block_q8_0).
KV_ELEMENT_BYTES = {"f16": 2.0, "bf16": 2.0, "q8_0": 34 / 32, "fp8": 1.0}
LLAMA_CPP_UBATCH = 512  # llama.cpp's default n_ubatch
LLAMA_CPP_KV_PAD = 256  # llama.cpp pads the KV cache size to a multiple of 256 cells
CUDA_CONTEXT_BYTES = 512 * MIB  # driver + cuBLAS workspace; llama.cpp does not report it


# --- weights ------------------------------------------------------------------------------
def quant_context(spec: ModelSpec, ftype: str) -> QuantContext:
    g = spec.geometry
    return QuantContext(
        ftype=ftype,
        n_layer=g.num_layers,
        n_gqa=max(1, g.num_heads // g.num_kv_heads),
        # llama.cpp's LLM_TYPE_70B: a llama-arch model with 80 layers and grouped KV heads
        is_llama_70b=g.model_type == "llama"
        and g.num_layers == 80
        and g.num_heads != g.num_kv_heads,
        has_output=any(t.name.endswith("lm_head.weight") for t in spec.tensors),
    )


def gguf_tensors(spec: ModelSpec, ftype: str) -> tuple[GGUFTensor, ...]:
    """Every tensor of the GGUF file llama-quantize writes for `ftype`, with its type."""
    ctx = quant_context(spec, ftype)
    out: list[GGUFTensor] = []
    for info in spec.tensors:
        role = hf_role(info.name)
        if role is None:
            continue  # not part of the llama graph (e.g. vision towers); gguf skips them
        name, layer = role
        out.append(
            GGUFTensor(gguf_name(name, layer), name, layer, info.shape,
                       tensor_type(name, layer, info.shape, ctx))
        )  # fmt: skip
    g = spec.geometry
    if g.rope.rope_type == "llama3":
        # convert_hf_to_gguf stores Llama 3.1's rope scaling as a rope_freqs F32 tensor.
        out.append(GGUFTensor("rope_freqs.weight", "rope_freqs", None, (g.head_dim // 2,), "F32"))
    return tuple(out)


def gguf_weights_bytes(spec: ModelSpec, ftype: str) -> int:
    return sum(_aligned(t.nbytes) for t in gguf_tensors(spec, ftype))


def gguf_file_bytes(spec: ModelSpec, ftype: str) -> int:
    """Size of the .gguf file: tensor data plus metadata (tokenizer, template, headers)."""
    tensors = gguf_tensors(spec, ftype)
    headers = sum(len(t.name) + 48 for t in tensors)  # name, dims, type, offset
    metadata = GGUF_METADATA_BASE + spec.vocab_entries * GGUF_METADATA_PER_TOKEN
    return sum(_aligned(t.nbytes) for t in tensors) + headers + metadata


def safetensors_weights_bytes(
    spec: ModelSpec, quant: str, group_size: int = 128, *, quantize_lm_head: bool = False
) -> int:
    """Bytes of a safetensors artifact's tensors: formats.schemes' count (the same one the
    disk preflight uses), over the spec's weights. BF16/FP16: 2 bytes each; FP8 and GPTQ
    W4A16 (compressed-tensors): the decoder Linears as the scheme writes them, embeddings,
    lm_head and norms in BF16. A group size that does not divide a row falls back to 64/32.
    """
    return safetensors_bytes(spec.tensors, quant, group_size, quantize_lm_head=quantize_lm_head)


def mlx_weights_bytes(spec: ModelSpec, quant: str, group_size: int = MLX_GROUP_SIZE) -> int:
    """Bytes of an MLX folder's weights (formats.mlx_quants' count, the one the disk
    preflight uses): mlx-lm's affine quantization keeps a scale and a bias per group of
    `group_size` in the model dtype, so 4bit costs 4 + 32/64 = 4.5 bits per weight."""
    return mlx_bytes(spec.tensors, quant, group_size, tied=spec.geometry.tie_word_embeddings)


def artifact_weights_bytes(spec: ModelSpec, fmt: str, quant: str) -> int:
    if fmt == "gguf":
        return gguf_file_bytes(spec, quant)
    if fmt == "mlx":
        return mlx_weights_bytes(spec, quant)
    return safetensors_weights_bytes(spec, quant)


def _aligned(n: int) -> int:
    return -(-n // GGUF_ALIGNMENT) * GGUF_ALIGNMENT


# --- KV cache -----------------------------------------------------------------------------
def kv_bytes_per_token(
    g: ModelGeometry, cache_type: str = "f16", layers: int | None = None
) -> float:
    """K and V for one token: 2 x layers x kv_heads x head_dim x bytes per element."""
    n_layers = g.num_layers if layers is None else layers
    return 2 * n_layers * g.num_kv_heads * g.head_dim * KV_ELEMENT_BYTES[cache_type]


def kv_cache_bytes(
    g: ModelGeometry, tokens: int, cache_type: str = "f16", layers: int | None = None
) -> int:
    return int(kv_bytes_per_token(g, cache_type, layers) * tokens)


def llama_cpp_kv_cells(n_ctx: int) -> int:
    return -(-n_ctx // LLAMA_CPP_KV_PAD) * LLAMA_CPP_KV_PAD


# --- llama.cpp runtime ----------------------------------------------------------------------
@dataclass(frozen=True)
class GGUFLayout:
    """Where llama.cpp puts the weights: input embeddings always on the CPU, repeating
    layers from the last one backwards on the GPU, the output head on the GPU only when
    n_gpu_layers > n_layer (llama-model.cpp's i_gpu_start / dev_output). A head tied to
    the embeddings is loaded a second time when it goes to the GPU (TENSOR_DUPLICATED)."""

    token_embd: int
    layers: tuple[int, ...]  # bytes of each repeating layer
    output: int  # output head (untied) + output norm + rope_freqs
    tied_head: int = 0  # bytes of the embeddings when they double as the head

    @property
    def total(self) -> int:
        """Everything in one pool (CPU or unified memory): no duplicate of a tied head."""
        return self.token_embd + sum(self.layers) + self.output

    def gpu_bytes(self, gpu_layers: int) -> int:
        n = len(self.layers)
        on_gpu = sum(self.layers[n - min(gpu_layers, n) :]) if gpu_layers > 0 else 0
        return on_gpu + (self.output + self.tied_head if gpu_layers > n else 0)


def gguf_layout(spec: ModelSpec, ftype: str) -> GGUFLayout:
    layers = [0] * spec.geometry.num_layers
    embd = output = 0
    for t in gguf_tensors(spec, ftype):
        size = _aligned(t.nbytes)
        if t.layer is not None:
            layers[t.layer] += size
        elif t.role == "token_embd":
            embd += size
        else:
            output += size
    tied = 0 if spec_has_output(spec) else embd
    return GGUFLayout(embd, tuple(layers), output, tied)


def spec_has_output(spec: ModelSpec) -> bool:
    return any(t.name.endswith("lm_head.weight") for t in spec.tensors)


def llama_cpp_compute_bytes(
    g: ModelGeometry,
    n_ctx: int,
    *,
    n_ubatch: int = LLAMA_CPP_UBATCH,
    flash_attn: bool = True,
    with_output: bool = True,
    n_outputs: int | None = None,
) -> int:
    """Peak of llama.cpp's reserve graph (n_ubatch tokens, all of them outputs unless
    `n_outputs` says how many rows of logits a ubatch computes).

    ggml-alloc reuses freed memory, so the buffer is the largest of three moments:
    the logits (n_vocab x n_outputs f32 plus the normed input), the attention (without
    flash attention the n_kv x n_ub x n_head f32 score matrix plus its mask; with it the
    f16 mask alone), and the FFN (gate and up activations, n_ff x n_ub f32 each).
    Residual stream tensors come on top. llama.cpp reserves the buffer for every token of
    a ubatch an output; fewer outputs touch fewer of its pages, and only touched pages are
    resident: `n_outputs` gives the part a run with fewer outputs holds.
    """
    n_ub = min(n_ubatch, n_ctx)
    n_out = n_ub if n_outputs is None else min(n_outputs, n_ub)
    n_kv = llama_cpp_kv_cells(n_ctx)
    f32 = 4
    residual = 4 * g.hidden_size * n_ub * f32
    logits = (g.vocab_size + 2 * g.hidden_size) * n_out * f32 if with_output else 0
    if flash_attn:
        attention = n_kv * n_ub * 2 + residual  # f16 mask; scores never materialize
    else:
        attention = n_kv * n_ub * (g.num_heads + 1) * f32 + residual
    ffn = 2 * g.intermediate_size * n_ub * f32 + 2 * g.hidden_size * n_ub * f32
    return max(logits, attention, ffn)


def llama_cpp_work_bytes(g: ModelGeometry, n_ubatch: int = LLAMA_CPP_UBATCH) -> int:
    """ggml-cpu's work buffer, which its backend allocates beside the compute buffer
    (ggml_graph_plan; llama.cpp does not log it): the largest matrix product's input
    converted to the weights' dot-product type (the FFN's down projection, n_ff x n_ubatch
    values; Q8_K or Q8_0 for quantized weights, about 1.1 bytes a value, F16 for 16-bit
    ones, 2 bytes: the bound taken here). Flash attention's per-thread tiles are a few
    hundred KiB."""
    return 2 * g.intermediate_size * n_ubatch


def llama_cpp_output_bytes(g: ModelGeometry, n_outputs: int = 1) -> int:
    """The logits buffer llama.cpp keeps for results: n_vocab f32 per output row (at least
    one per sequence; a decode grows it to the batch's outputs, never shrinks it)."""
    return g.vocab_size * 4 * n_outputs


# --- mlx-lm runtime ---------------------------------------------------------------------------
MLX_RUNTIME_BYTES = 512 * MIB  # Metal context, the Python process and mlx's buffer cache
MLX_PREFILL_STEP = 2048  # mlx_lm.server's default --prefill-step-size


def mlx_activation_bytes(g: ModelGeometry) -> int:
    """Peak activations of one prefill step (MLX_PREFILL_STEP tokens in the model dtype):
    the residual stream, q/k/v and attention output, the gate/up outputs of the FFN
    (attention itself is fused, mx.fast.scaled_dot_product_attention), and the f32 logits
    of the last position."""
    per_token = 6 * g.hidden_size + 3 * g.intermediate_size
    return MLX_PREFILL_STEP * per_token * 2 + g.vocab_size * 4


# --- vLLM runtime ----------------------------------------------------------------------------
VLLM_NON_TORCH_BYTES = 512 * MIB  # CUDA context, cuBLAS; vLLM's "non-torch memory"
VLLM_NCCL_BYTES = 512 * MIB  # extra NCCL buffers when tensor/pipeline parallel
VLLM_CUDA_GRAPH_BYTES = 1 * GIB  # captured decode graphs (vLLM logs 0.5-1.5 GiB)
VLLM_MAX_NUM_SEQS = 256


def vllm_max_batched_tokens(device_memory_bytes: int) -> int:
    """`vllm serve`'s default max_num_batched_tokens: 8192 on GPUs with >= 70 GiB, else 2048."""
    return 8192 if device_memory_bytes >= 70 * GIB else 2048


def vllm_activation_bytes(g: ModelGeometry, tensor_parallel: int, batched_tokens: int) -> int:
    """Peak activations of vLLM's profile run: a batch of `batched_tokens` tokens through
    one layer (residual, normed input, attention output, q/k/v in bf16; the fused gate/up
    output and its activation, sharded by TP) plus the sampler's f32 logits and
    probabilities for max_num_seqs sequences."""
    per_token = 8 * g.hidden_size + 6 * g.intermediate_size // tensor_parallel
    sampler = VLLM_MAX_NUM_SEQS * g.vocab_size * 8
    return batched_tokens * per_token + sampler


@dataclass(frozen=True)
class ShardSplit:
    """What one GPU holds under tensor (tp) x pipeline (pp) parallelism."""

    weights: int  # bytes of the largest shard
    layers: int  # layers in the largest pipeline stage
    kv_heads: int  # KV heads per GPU (replicated when kv_heads < tp)


def vllm_shard(spec: ModelSpec, weights_bytes: int, tp: int, pp: int) -> ShardSplit:
    """TP splits every layer and the vocab across tp GPUs; PP gives each stage
    ceil(layers / pp) layers, the embeddings to the first stage and the head to the last."""
    g = spec.geometry
    stage_layers = -(-g.num_layers // pp)
    vocab_part = (
        2 * g.vocab_size * g.hidden_size * 2
        if spec_has_output(spec)
        else (g.vocab_size * g.hidden_size * 2)
    )
    per_layer = max(weights_bytes - vocab_part, 0) / g.num_layers
    edge = vocab_part if pp == 1 else vocab_part / 2  # PP: embed on first, head on last
    stage = per_layer * stage_layers + edge
    return ShardSplit(
        weights=int(stage / tp),
        layers=stage_layers,
        kv_heads=max(1, -(-g.num_kv_heads // tp)),
    )


def llama_eval_parts(g: ModelGeometry, n_ctx: int, chunks: int) -> dict[str, int]:
    """The llama.cpp evaluation as evaluation/llama_batch.py runs it: n_seq chunks per
    decode (sequences_per_batch, the evaluation's own rule), each its own KV stream of
    n_ctx cells, one chunk's worth of tokens per ubatch, flash attention, logits for the
    scored rows only. What it holds at once while a chunk is scored, beside the process
    and the weights, part by part (tests/planning/test_memory_llamacpp.py measures them
    against llama.cpp's log and the process's RssAnon)."""
    rows = _scored_row_count(n_ctx)
    n_seq = min(sequences_per_batch(rows, g.vocab_size, n_ctx), max(1, chunks))
    # llama.cpp splits the batch into ubatches of n_ctx tokens, an equal share of each
    # chunk (n_ctx / n_seq positions): a ubatch holds at most that many scored rows of each.
    per_ubatch = n_seq * min(n_ctx // n_seq, rows)
    return {
        "KV cache": kv_cache_bytes(g, n_seq * llama_cpp_kv_cells(n_ctx)),
        # as far as a ubatch uses it: its logits tensor holds the ubatch's scored rows
        "compute buffer": llama_cpp_compute_bytes(g, n_ctx, n_ubatch=n_ctx, n_outputs=per_ubatch),
        "work buffer": llama_cpp_work_bytes(g, n_ctx),
        "output buffer": llama_cpp_output_bytes(g, n_seq * rows),  # the batch's scored rows
        "logits copy": llama_cpp_output_bytes(g, n_seq * rows),  # ChunkDecoder's buffer
        # the float64 exps of one chunk's rows the KL divergence works on (evaluation/kl.py)
        "scoring": rows * g.vocab_size * 8,
    }


def _scored_row_count(n_ctx: int) -> int:
    rows = scored_rows(n_ctx)
    return rows.stop - rows.start
