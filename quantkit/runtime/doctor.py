"""Which runtimes this machine has, and their versions: what `quantkit doctor` reports.

A failed convert, check or eval often comes down to a missing or mismatched library, or to
no llama-server. The answer must come fast and must come even when a library is broken, so
nothing here imports one: versions are read from the installed packages' metadata
(importlib.metadata) and presence from importlib.util.find_spec, which locates a module
without running it. Only llama-server is run, with `--version`.
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass
from importlib import metadata, util
from pathlib import Path

from .llama_server import BINARY, LlamaServerError, find_llama_server, not_found_reason


@dataclass(frozen=True)
class Runtime:
    name: str
    available: bool
    version: str | None
    detail: str  # what quantkit uses it for, why it is missing, or where it was found

    def to_dict(self) -> dict[str, object]:
        return asdict(self)


# (distribution, import name, quantkit's extra or None, what quantkit uses it for)
PACKAGES = (
    ("llama-cpp-python", "llama_cpp", "gguf",
     "llama.cpp in-process: quantizes, computes the imatrix, inspects and evaluates GGUFs"),
    ("gguf", "gguf", "gguf", "gguf-py: writes and reads GGUF files"),
    ("transformers", "transformers", "torch",
     "loads safetensors folders for their checks and evaluation"),
    ("torch", "torch", "torch", "runs transformers; writes BF16/FP16 and GPTQ folders"),
    ("llmcompressor", "llmcompressor", "compress", "makes FP8 and GPTQ folders"),
    ("compressed-tensors", "compressed_tensors", "compress",
     "the FP8/GPTQ folder format llmcompressor writes"),
    ("mlx", "mlx", "mlx", "arrays for MLX folders (Apple silicon; a CPU build elsewhere)"),
    ("mlx-lm", "mlx_lm", "mlx", "makes, checks and evaluates MLX folders"),
    ("vllm", "vllm", None, "serves safetensors, FP8 and GPTQ folders (plan's vllm command)"),
)  # fmt: skip


def runtimes(llama_server: str | None = None) -> list[Runtime]:
    """Every runtime quantkit can use, llama-server second; `llama_server` is the user's
    own build (`--llama-server PATH`), else the usual search (llama_server module)."""
    found = [_package(*row) for row in PACKAGES]
    return [found[0], _server(llama_server), *found[1:]]


def _package(dist: str, module: str, extra: str | None, used_for: str) -> Runtime:
    try:
        version: str | None = metadata.version(dist)
    except metadata.PackageNotFoundError:
        version = None
    try:
        importable = util.find_spec(module) is not None
    except (ImportError, ValueError):  # a broken parent package, or a module without spec
        importable = False
    if not importable:
        install = f"pip install 'quantkit[{extra}]'" if extra else f"pip install {dist}"
        why = "not installed" if version is None else f"installed, but `{module}` is missing"
        return Runtime(dist, False, version, f"{why} ({install}); {used_for}")
    if dist == "llama-cpp-python":
        used_for += _ggml_version(module)
    return Runtime(dist, True, version, used_for)


def _ggml_version(module: str) -> str:
    """The ggml bundled with llama-cpp-python, from its library's file name
    (lib/libggml-base.so.0.25.3), or "" where the name does not tell."""
    spec = util.find_spec(module)
    for folder in (spec.submodule_search_locations or []) if spec else []:
        for lib in sorted((Path(folder) / "lib").glob("libggml*")):
            match = re.search(r"(\d+\.\d+\.\d+)", lib.name)
            if match:
                return f"; bundles ggml {match[1]}"
    return ""


def _server(explicit: str | None) -> Runtime:
    try:
        binary = find_llama_server(explicit)
    except LlamaServerError as exc:  # --llama-server or QUANTKIT_LLAMA_SERVER is no executable
        return Runtime(BINARY, False, None, str(exc))
    if binary is None:
        return Runtime(BINARY, False, None, not_found_reason())
    where = f"{binary.path} ({binary.origin})"
    version = binary.version()
    if version.startswith("unknown ("):  # it could not be run: "unknown (<the OSError>)"
        return Runtime(BINARY, False, None, f"{where} does not run: {version[9:-1]}")
    return Runtime(BINARY, True, version, f"{where}; serves GGUFs as users run them")
