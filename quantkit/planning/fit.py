"""Does a model fit a profile at a context? Pure functions over the memory model.

llama.cpp (gguf): on a GPU profile, layers go to the GPU(s) from the last one backwards
until VRAM is full (`n_gpu_layers`); the rest, the input embeddings and the KV cache of
CPU layers stay in system RAM. Unified memory (Apple silicon) and CPU-only profiles hold
everything in one pool. vLLM (safetensors/fp8/gptq): every GPU holds its shard of the
weights, the activation peak, CUDA graphs and non-torch memory inside
gpu_memory_utilization x memory; what is left must hold the KV cache of one full-length
sequence. vLLM does not split layers between GPU and CPU here, so its verdicts are
"full" or "none". mlx-lm (mlx): one pool of unified memory, "full" or "none" too.
"""

from __future__ import annotations

from dataclasses import dataclass

from . import memory as mem
from .model_spec import ModelSpec
from .profiles import HardwareProfile

HOST_RAM_USABLE = 0.85  # the OS, the page cache and other processes keep the rest
LLAMA_CPP_RUNTIMES = ("llama.cpp", "ollama")


@dataclass(frozen=True)
class Fit:
    fit: str  # "full" | "partial" | "none"
    context: int
    gpu_layers: int | None  # llama.cpp n_gpu_layers (n_layer + 1 = everything incl. head)
    weights_gpu: int
    weights_cpu: int
    kv_gpu: int
    kv_cpu: int
    overhead_gpu: int  # compute buffers, CUDA context / graphs, activations (all devices)
    overhead_cpu: int
    device_need: int  # bytes the fullest device needs
    device_budget: int  # bytes a device may use

    @property
    def kv_bytes(self) -> int:
        return self.kv_gpu + self.kv_cpu

    @property
    def overhead_bytes(self) -> int:
        return self.overhead_gpu + self.overhead_cpu

    @property
    def resident_weights(self) -> int:
        return self.weights_gpu + self.weights_cpu


def evaluate(spec: ModelSpec, profile: HardwareProfile, context: int) -> Fit:
    if profile.runtime in LLAMA_CPP_RUNTIMES:
        return fit_llama_cpp(spec, profile, context)
    if profile.runtime == "mlx-lm":
        return fit_mlx(spec, profile, context)
    return fit_vllm(spec, profile, context)


def max_context(spec: ModelSpec, profile: HardwareProfile, at_least: str) -> int:
    """The largest context (a multiple of 256, up to the model's maximum) whose verdict is
    `at_least` as good ("full" or "partial"); 0 when even 256 tokens do not make it."""
    rank = {"none": 0, "partial": 1, "full": 2}
    want = rank[at_least]
    limit = spec.geometry.max_position_embeddings
    lo, hi = 0, limit // 256  # in units of 256 tokens; search the largest good unit
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if rank[evaluate(spec, profile, mid * 256).fit] >= want:
            lo = mid
        else:
            hi = mid - 1
    if lo == limit // 256 and rank[evaluate(spec, profile, limit).fit] >= want:
        return limit
    return lo * 256


# --- llama.cpp ------------------------------------------------------------------------------
def fit_llama_cpp(spec: ModelSpec, profile: HardwareProfile, context: int) -> Fit:
    g = spec.geometry
    layout = mem.gguf_layout(spec, profile.quant)
    cells = mem.llama_cpp_kv_cells(context)
    kv_layer = mem.kv_cache_bytes(g, cells, profile.kv_cache_type, layers=1)
    n = g.num_layers
    output_buf = mem.llama_cpp_output_bytes(g)
    if profile.kind != "gpu":
        return _fit_one_pool(layout, kv_layer * n, g, profile, context, output_buf)

    devices = profile.devices_per_node  # llama.cpp splits layers across one node's GPUs
    compute_full = mem.llama_cpp_compute_bytes(g, context, with_output=True)
    compute_part = mem.llama_cpp_compute_bytes(g, context, with_output=False)
    budget = profile.usable_bytes - mem.CUDA_CONTEXT_BYTES
    ram_budget = int(profile.system_ram_bytes * HOST_RAM_USABLE)
    # Host side: the input embeddings always; the rest of a partial split; the logits
    # buffer; a small host compute buffer for the embeddings (CUDA_Host buffer).
    host_small = output_buf + 4 * g.hidden_size * mem.LLAMA_CPP_UBATCH * 4

    full_gpu = layout.gpu_bytes(n + 1) + kv_layer * n + compute_full * devices
    if full_gpu <= budget * devices and layout.token_embd + host_small <= ram_budget:
        per_device = _per_device(layout.gpu_bytes(n + 1) + kv_layer * n, devices) + compute_full
        return Fit(
            "full",
            context,
            n + 1,
            layout.gpu_bytes(n + 1),
            layout.token_embd,
            kv_layer * n,
            0,
            (compute_full + mem.CUDA_CONTEXT_BYTES) * devices,
            host_small,
            per_device + mem.CUDA_CONTEXT_BYTES,
            profile.usable_bytes,
        )

    room = budget * devices - compute_part * devices
    gpu_layers = 0
    for k in range(n, 0, -1):  # the most layers whose weights + KV fit next to the buffers
        if layout.gpu_bytes(k) + kv_layer * k <= room:
            gpu_layers = k
            break
    compute_cpu = mem.llama_cpp_compute_bytes(g, context, with_output=True)
    weights_cpu = layout.total - layout.gpu_bytes(gpu_layers)
    kv_cpu = kv_layer * (n - gpu_layers)
    host_need = weights_cpu + kv_cpu + compute_cpu + output_buf
    fits = gpu_layers > 0 and host_need <= ram_budget
    gpu_used = layout.gpu_bytes(gpu_layers) + kv_layer * gpu_layers
    return Fit(
        "partial" if fits else "none",
        context,
        gpu_layers if fits else None,
        layout.gpu_bytes(gpu_layers),
        weights_cpu,
        kv_layer * gpu_layers,
        kv_cpu,
        (compute_part + mem.CUDA_CONTEXT_BYTES) * devices,
        compute_cpu + output_buf,
        _per_device(gpu_used, devices) + compute_part + mem.CUDA_CONTEXT_BYTES
        if fits
        else full_gpu // devices + mem.CUDA_CONTEXT_BYTES,
        profile.usable_bytes,
    )


def _fit_one_pool(
    layout: mem.GGUFLayout,
    kv: int,
    g,
    profile: HardwareProfile,
    context: int,
    output_buf: int,
) -> Fit:
    """CPU-only or unified memory: weights, KV and buffers share one pool of RAM."""
    compute = mem.llama_cpp_compute_bytes(g, context, with_output=True)
    need = layout.total + kv + compute + output_buf
    budget = profile.usable_bytes
    fits = need <= budget
    on_gpu = profile.kind == "unified"  # Metal holds every layer; CPU-only holds none
    n = g.num_layers
    return Fit(
        "full" if fits else "none",
        context,
        None if not fits else (n + 1) if on_gpu else 0,
        layout.total if on_gpu else 0,
        0 if on_gpu else layout.total,
        kv if on_gpu else 0,
        0 if on_gpu else kv,
        compute if on_gpu else 0,
        output_buf if on_gpu else compute + output_buf,
        need,
        budget,
    )


def _per_device(nbytes: int, devices: int) -> int:
    return -(-nbytes // devices)


# --- mlx-lm ---------------------------------------------------------------------------------
def fit_mlx(spec: ModelSpec, profile: HardwareProfile, context: int) -> Fit:
    """mlx-lm on Apple silicon: weights, KV cache (model dtype) and one prefill step's
    activations share the unified memory the GPU may wire; no layer split, so the verdict
    is "full" or "none"."""
    g = spec.geometry
    weights = mem.artifact_weights_bytes(spec, profile.format, profile.quant)
    kv = mem.kv_cache_bytes(g, context, profile.kv_cache_type)
    overhead = mem.mlx_activation_bytes(g) + mem.MLX_RUNTIME_BYTES
    need = weights + kv + overhead
    budget = profile.usable_bytes
    fits = need <= budget
    on_gpu = profile.kind == "unified"
    return Fit(
        "full" if fits else "none",
        context,
        None,
        weights if on_gpu else 0,
        0 if on_gpu else weights,
        kv if on_gpu else 0,
        0 if on_gpu else kv,
        overhead if on_gpu else 0,
        0 if on_gpu else overhead,
        need,
        budget,
    )


# --- vLLM -----------------------------------------------------------------------------------
def fit_vllm(spec: ModelSpec, profile: HardwareProfile, context: int) -> Fit:
    g = spec.geometry
    weights = mem.artifact_weights_bytes(spec, profile.format, profile.quant)
    tp, pp = profile.tensor_parallel, profile.pipeline_parallel
    shard = mem.vllm_shard(spec, weights, tp, pp)
    batched = mem.vllm_max_batched_tokens(profile.memory_bytes)
    activation = mem.vllm_activation_bytes(g, tp, batched)
    runtime = mem.VLLM_NON_TORCH_BYTES + mem.VLLM_CUDA_GRAPH_BYTES
    if tp * pp > 1:
        runtime += mem.VLLM_NCCL_BYTES
    cache = "fp8" if profile.kv_cache_type == "fp8" else "f16"
    kv_token = 2 * shard.layers * shard.kv_heads * g.head_dim * mem.KV_ELEMENT_BYTES[cache]
    kv_gpu = int(kv_token * context)
    need = shard.weights + activation + runtime + kv_gpu
    budget = int(profile.memory_bytes * profile.gpu_memory_utilization)
    gpus = tp * pp
    return Fit(
        "full" if need <= budget else "none",
        context,
        None,
        weights,
        0,
        kv_gpu * gpus,
        0,
        (activation + runtime) * gpus,
        0,
        need,
        budget,
    )
