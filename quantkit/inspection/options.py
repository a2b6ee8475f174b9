"""`ServerOptions`: the round trip through llama.cpp's `llama-server` on GGUF artifacts
(quantkit.inspection.server_checks), as `quantkit inspect` and `quantkit convert` take it."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class ServerOptions:
    enabled: bool = True
    # The user's own build; None: QUANTKIT_LLAMA_SERVER, quantkit's build, then PATH
    # (quantkit.runtime.llama_server.find_llama_server).
    binary: str | Path | None = None
