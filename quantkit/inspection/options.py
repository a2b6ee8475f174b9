"""The checks' knobs: `ServerOptions`, the round trip through the artifact's server
(llama.cpp's `llama-server` for a GGUF, quantkit.inspection.server_checks; vLLM for a
safetensors folder, quantkit.inspection.vllm_checks), as `quantkit inspect` takes it, and
`VerifyOptions`, the checks `quantkit convert` runs (`convert(verify=...)`)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path


@dataclass(frozen=True)
class ServerOptions:
    enabled: bool = True
    # The user's own build; None: QUANTKIT_LLAMA_SERVER, quantkit's build, then PATH
    # (quantkit.runtime.llama_server.find_llama_server).
    binary: str | Path | None = None


@dataclass(frozen=True)
class VerifyOptions:
    enabled: bool = True  # --verify/--no-verify: the checks in the artifact's runtime
    server: ServerOptions = field(default_factory=ServerOptions)
