"""vLLM's OpenAI server on a safetensors folder: what users run BF16, FP8 and GPTQ artifacts
in (`vllm serve DIR --enable-auto-tool-choice --tool-call-parser hermes`), for the round-trip
checks of quantkit.inspection.vllm_checks.

vLLM needs a CUDA GPU and is not one of quantkit's dependencies (it pins its own PyTorch):
`find_vllm` says whether this machine can run it, and why not. The server is started with
the Python that runs quantkit (`python -m vllm.entrypoints.cli.main serve`, which is what
the `vllm` command runs), bound to 127.0.0.1 on a free port, and always stopped with its
engine process (quantkit.runtime.local_server).
"""

from __future__ import annotations

import os
import shlex
import sys
from dataclasses import dataclass
from importlib import metadata, util
from pathlib import Path

from ..errors import QuantkitError
from .local_server import LocalServer

ENV_ARGS = "QUANTKIT_VLLM_ARGS"  # extra `vllm serve` arguments, appended (later ones win)
SERVED_NAME = "artifact"
TOOL_PARSER = "hermes"  # Hermes' <tool_call>{json}</tool_call> format
# <think>...</think>, with or without the opening tag in the output (Hermes 4's templates
# may open it in the prompt); vLLM's qwen3 parser reads the same tags.
REASONING_PARSER = "deepseek_r1"
CONTEXT = 2048
# A check, not a deployment: no compilation or CUDA graphs (-O0, eager), so the server is up
# in seconds; the template, the tokenizer and the parsers are the same.
# An explicit KV cache: the check needs a few thousand tokens, and a size of its own keeps
# vLLM from reserving most of a GPU that may be busy with something else.
KV_CACHE_BYTES = 1 << 30


class VllmServerError(QuantkitError):
    """vLLM could not be started on the folder, or stopped answering."""

    exit_code = 9  # like a missing dependency


@dataclass(frozen=True)
class VllmRuntime:
    version: str
    gpu: str  # torch's name for device 0


def find_vllm() -> tuple[VllmRuntime | None, str]:
    """(the runtime, "") when vLLM is installed and a CUDA GPU is visible, else (None, why
    not). Importing vLLM itself is left to the server process."""
    if util.find_spec("vllm") is None:
        return None, "vLLM is not installed (pip install vllm, on a machine with a CUDA GPU)"
    version = metadata.version("vllm")
    try:
        import torch
    except ImportError:
        return None, f"vLLM {version} is installed but PyTorch is not importable"
    if not torch.cuda.is_available():
        return None, f"vLLM {version} is installed but no CUDA GPU is visible to PyTorch"
    return VllmRuntime(version, torch.cuda.get_device_name(0)), ""


def startup_timeout_for(model_bytes: int) -> float:
    """vLLM's own start (its imports, an engine process, the memory profile: about a
    minute), plus the weights read at 200 MB/s."""
    return 300.0 + model_bytes / 200e6


class VllmServer(LocalServer):
    """`vllm serve` on one folder with Hermes' tool-call parser and a reasoning parser."""

    name = "vllm"
    error = VllmServerError

    def __init__(
        self, folder: Path, *, reasoning: bool = True, extra_args: tuple[str, ...] = ()
    ) -> None:
        self.folder = Path(folder)
        self.reasoning = reasoning  # with --reasoning-parser (the vocabulary has the tags)
        self.extra_args = (*extra_args, *shlex.split(os.environ.get(ENV_ARGS, "")))
        size = sum(f.stat().st_size for f in self.folder.glob("*.safetensors"))
        super().__init__(startup_timeout=startup_timeout_for(size), request_timeout=120.0)

    def model_name(self) -> str:
        return self.folder.name

    def command(self) -> list[str]:
        return [
            sys.executable, "-m", "vllm.entrypoints.cli.main", "serve", str(self.folder),
            "--host", "127.0.0.1", "--port", str(self.port),
            "--served-model-name", SERVED_NAME, "--max-model-len", str(CONTEXT),
            "--kv-cache-memory-bytes", str(KV_CACHE_BYTES), "--max-num-seqs", "4",
            "--enforce-eager", "-O0", "--enable-auto-tool-choice",
            "--tool-call-parser", TOOL_PARSER,
            *(("--reasoning-parser", REASONING_PARSER) if self.reasoning else ()),
            *self.extra_args,
        ]  # fmt: skip

    def environment(self) -> dict[str, str]:
        # A local folder: nothing to fetch, nothing to report.
        quiet = {"HF_HUB_OFFLINE": "1", "VLLM_NO_USAGE_STATS": "1", "DO_NOT_TRACK": "1"}
        return {**os.environ, **quiet}
