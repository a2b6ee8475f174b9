"""The command that runs a planned artifact: llama-server, an Ollama Modelfile, vllm serve
(with Ray across nodes) or mlx_lm.server. Pure string building; the planner decides the numbers."""

from __future__ import annotations

import shlex

from ..artifact.naming import artifact_name as _artifact_name
from ..runtime.vllm_server import REASONING_PARSER, TOOL_PARSER
from .profiles import HardwareProfile


def artifact_name(model_name: str, profile: HardwareProfile, quant: str | None = None) -> str:
    """The file (gguf) or folder (safetensors) name quantkit convert writes by default, or
    for `quant` (--quant auto with a profile)."""
    return _artifact_name(model_name, profile.format, quant or profile.quant)


def llama_server_command(
    artifact: str,
    profile: HardwareProfile,
    context: int,
    gpu_layers: int | None,
    thought_in_content: bool = False,
) -> str:
    """`thought_in_content`: the server parses no reasoning for the model's template
    (formats.chat_template.LLAMA_SERVER_NO_REASONING), so the command says where the
    thought goes: `--reasoning-format none`, the content."""
    args = ["llama-server", "-m", artifact, "-c", str(context)]
    args += ["-ngl", str(gpu_layers or 0)]
    if profile.devices_per_node > 1 and (gpu_layers or 0) > 0:
        args += ["--split-mode", "layer"]
    if profile.kv_cache_type == "q8_0":
        args += ["-ctk", "q8_0", "-ctv", "q8_0"]  # quantized V needs flash attention
    args += ["-fa", "on", "--jinja"]  # --jinja: the GGUF's own chat template, tool calls
    if thought_in_content:
        args += ["--reasoning-format", "none"]
    return shlex.join(args)


def ollama_modelfile(artifact: str, context: int, gpu_layers: int | None) -> str:
    lines = [f"FROM ./{artifact}", f"PARAMETER num_ctx {context}"]
    if gpu_layers is not None:
        lines.append(f"PARAMETER num_gpu {gpu_layers}")  # layers Ollama offloads
    return "\n".join(lines) + "\n"


def ollama_command(model_name: str) -> str:
    tag = model_name.lower()
    return f"ollama create {shlex.quote(tag)} -f Modelfile && ollama run {shlex.quote(tag)}"


def vllm_command(
    artifact: str, profile: HardwareProfile, context: int, thinks: bool = False
) -> str:
    """`thinks`: the model's templates use <think> (Hermes 4): vLLM's reasoning parser
    returns the thought in `reasoning` (it refuses to start on a vocabulary without the
    tags, so it is not asked for otherwise)."""
    args = ["vllm", "serve", f"./{artifact}"]
    if profile.tensor_parallel > 1:
        args += ["--tensor-parallel-size", str(profile.tensor_parallel)]
    if profile.pipeline_parallel > 1:
        args += ["--pipeline-parallel-size", str(profile.pipeline_parallel)]
        if profile.nodes > 1:
            args += ["--distributed-executor-backend", "ray"]
    args += ["--max-model-len", str(context)]
    args += ["--gpu-memory-utilization", f"{profile.gpu_memory_utilization:g}"]
    if profile.kv_cache_type == "fp8":
        args += ["--kv-cache-dtype", "fp8"]
    # Hermes models emit <tool_call> JSON; vLLM's hermes parser turns it into tool calls.
    args += ["--enable-auto-tool-choice", "--tool-call-parser", TOOL_PARSER]
    if thinks:
        args += ["--reasoning-parser", REASONING_PARSER]
    command = shlex.join(args)
    if profile.nodes > 1:
        head = "ray start --head --port=6379  # on node 1"
        workers = "ray start --address=<node-1-ip>:6379  # on every other node"
        return f"{head}\n{workers}\n{command}  # on node 1"
    return command


def mlx_lm_server_command(artifact: str) -> str:
    """mlx_lm.server serves the folder's own chat template (tokenizer_config.json /
    chat_template.jinja); it has no context flag: the KV cache grows with the conversation.
    LM Studio opens the same folder (its MLX engine)."""
    return shlex.join(["mlx_lm.server", "--model", f"./{artifact}"])
