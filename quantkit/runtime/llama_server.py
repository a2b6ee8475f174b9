"""llama.cpp's own `llama-server`: found, built from the pinned source, run on loopback.

The server is what users run a GGUF in (`llama-server --jinja -m model.gguf`), and its chat
template engine, tool-call parser and reasoning parser are its own C++ code, not
llama-cpp-python's: the round-trip checks (quantkit.inspection.server_checks) need the real
binary. Which one, first found wins:

1. `--llama-server PATH` (or QUANTKIT_LLAMA_SERVER): the user's own build;
2. quantkit's cached build, made from the llama.cpp vendored in the llama-cpp-python sdist
   that quantkit pins (the same llama.cpp quantkit quantizes with), by `build_llama_server`
   (`quantkit doctor --build-llama-server`; scripts/setup.sh does it once per machine),
   with llama.cpp's quantize, imatrix and perplexity tools beside it (TOOLS);
3. `llama-server` on PATH.

`LlamaServer` starts it bound to 127.0.0.1 on a free port, waits for /health and always
stops it (also on an error or Ctrl-C: the `with` block's exit kills it; see
quantkit.runtime.local_server).
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
from dataclasses import dataclass
from pathlib import Path

from ..disk.atomic import building_folder
from ..disk.cache import cache_dir
from ..errors import QuantkitError
from .cpu import NATIVE, cpu_key
from .cpu import threads as cpu_threads
from .llama_cpp import repacking
from .local_server import LocalServer

log = logging.getLogger(__name__)

ENV_VAR = "QUANTKIT_LLAMA_SERVER"
BINARY = "llama-server"
# Built beside it from the same objects (about a minute more): llama.cpp's own quantizer,
# importance-matrix tool and perplexity tool, the references quantkit's interop tests and
# benchmarks compare against.
TOOLS = (BINARY, "llama-quantize", "llama-imatrix", "llama-perplexity")
_VENDOR = "vendor/llama.cpp/"
# A static build: one self-contained binary (no libllama/libggml beside it), its CPU kernels
# built for this machine's CPU like the llama-cpp-python wheel scripts/setup.sh builds
# (runtime.cpu), so the tools and quantkit's in-process llama.cpp run the same kernels.
CMAKE_OPTIONS = (
    "-DCMAKE_BUILD_TYPE=Release",
    NATIVE,
    "-DBUILD_SHARED_LIBS=OFF",
    "-DLLAMA_BUILD_TESTS=OFF",
    "-DLLAMA_BUILD_EXAMPLES=OFF",
    "-DLLAMA_BUILD_TOOLS=ON",
    "-DLLAMA_BUILD_SERVER=ON",
    "-DLLAMA_BUILD_APP=OFF",
    "-DLLAMA_OPENSSL=OFF",  # loopback only; no TLS library to find
    "-DLLAMA_USE_PREBUILT_UI=OFF",  # the web UI would be downloaded: not reachable, not needed
)


class LlamaServerError(QuantkitError):
    """llama-server could not be found, built or started."""

    exit_code = 9  # like a missing dependency


@dataclass(frozen=True)
class ServerBinary:
    path: Path
    origin: str  # "--llama-server", "QUANTKIT_LLAMA_SERVER", "quantkit's build", "PATH"

    def version(self) -> str:
        """What `llama-server --version` says (llama.cpp's build number and commit)."""
        try:
            proc = subprocess.run(
                [str(self.path), "--version"], capture_output=True, text=True, timeout=30
            )
        except (OSError, subprocess.TimeoutExpired) as exc:
            return f"unknown ({exc})"
        lines = (proc.stdout + proc.stderr).splitlines()
        found = [ln.strip() for ln in lines if ln.startswith("version:")]
        return found[0].removeprefix("version:").strip() if found else "unknown"


def pinned_version() -> str:
    """The installed llama-cpp-python's version: the sdist the server is built from."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("llama-cpp-python")
    except PackageNotFoundError as exc:
        raise LlamaServerError(
            "llama-cpp-python is not installed, so there is no pinned llama.cpp to build.",
            hint="pip install 'quantkit[gguf]'",
        ) from exc


def build_folder(version: str | None = None) -> Path:
    """Where the build for this llama-cpp-python version and this CPU (runtime.cpu) lives."""
    name = f"llama-cpp-python-{version or pinned_version()}-{cpu_key()}"
    return cache_dir("llama-server", name)


def find_llama_server(explicit: str | Path | None = None) -> ServerBinary | None:
    """The server to run (see the module docstring for the order), or None. An explicit
    path that is not an executable file is an error, not a fall-through."""
    for origin, given in (("--llama-server", explicit), (ENV_VAR, os.environ.get(ENV_VAR))):
        if given:
            path = Path(given).expanduser()
            if not (path.is_file() and os.access(path, os.X_OK)):
                raise LlamaServerError(f"{origin} {path}: not an executable file.")
            return ServerBinary(path, origin)
    try:
        cached = build_folder() / "bin" / BINARY
    except LlamaServerError:
        cached = None
    if cached is not None and cached.is_file():
        return ServerBinary(cached, "quantkit's build")
    on_path = shutil.which(BINARY)
    return ServerBinary(Path(on_path), "PATH") if on_path else None


def not_found_reason() -> str:
    return (
        f"no llama-server: none given (--llama-server, {ENV_VAR}), none built by quantkit, "
        f"none on PATH; build one with `quantkit doctor --build-llama-server` (about "
        f"5 minutes on 2 cores, once)"
    )


# ---------------------------------------------------------------------------------------
# Building it from the pinned sdist


def build_llama_server(*, jobs: int | None = None, version: str | None = None) -> ServerBinary:
    """Download the llama-cpp-python sdist, build `llama-server` (and the other TOOLS) from
    its vendored llama.cpp with CMake, and keep the binaries in the cache. Returns at once if
    they are all there. The build happens in a temporary folder; only finished binaries
    reach the cache."""
    version = version or pinned_version()
    target = build_folder(version)
    binary = target / "bin" / BINARY
    if all((target / "bin" / tool).is_file() for tool in TOOLS):
        return ServerBinary(binary, "quantkit's build")
    for tool in ("cmake", "c++"):
        if shutil.which(tool) is None:
            raise LlamaServerError(
                f"cannot build llama-server: `{tool}` is not installed.",
                hint="Install cmake and a C++ compiler, or pass --llama-server PATH.",
            )
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=target.parent, prefix=".build-") as tmp:
        source = _unpacked_source(Path(tmp), version)
        built = _cmake_build(source, Path(tmp) / "build", jobs or cpu_threads())
        with building_folder(target) as work:
            (work / "bin").mkdir()
            for tool in built:
                shutil.copy2(tool, work / "bin" / tool.name)
            info = {"llama-cpp-python": version, "cmake_options": list(CMAKE_OPTIONS)}
            (work / "build.json").write_text(json.dumps(info, indent=1), encoding="utf-8")
    return ServerBinary(binary, "quantkit's build")


def download_sdist(dest: Path, version: str) -> Path:
    """The llama-cpp-python sdist (it vendors all of llama.cpp), downloaded by pip into
    `dest`. pip builds its metadata with scikit-build-core in an isolated env: ~1 minute
    the first time."""
    cmd = [
        sys.executable, "-m", "pip", "download", "--no-binary", ":all:", "--no-deps",
        "--disable-pip-version-check", f"llama-cpp-python=={version}", "-d", str(dest),
    ]  # fmt: skip
    proc = subprocess.run(cmd, capture_output=True, text=True)
    sdists = sorted(dest.glob("llama_cpp_python-*.tar.gz"))
    if proc.returncode != 0 or not sdists:
        raise LlamaServerError(
            f"pip could not download the llama-cpp-python=={version} sdist: "
            + " | ".join((proc.stderr or proc.stdout).strip().splitlines()[-3:])
        )
    return sdists[0]


def _unpacked_source(tmp: Path, version: str) -> Path:
    sdist = download_sdist(tmp, version)
    dest = tmp / "src"
    with tarfile.open(sdist, "r:gz") as tar:
        members = [m for m in tar.getmembers() if _VENDOR in m.name and ".." not in m.name]
        tar.extractall(dest, members=members, filter="data")
    found = sorted(dest.glob(f"*/{_VENDOR}CMakeLists.txt"))
    if not found:
        raise LlamaServerError(f"the llama-cpp-python=={version} sdist has no {_VENDOR}.")
    return found[0].parent


def _cmake_build(source: Path, build: Path, jobs: int) -> list[Path]:
    logfile = build.parent / "build.log"
    with logfile.open("w") as out:
        for cmd in (
            ["cmake", "-S", str(source), "-B", str(build), *CMAKE_OPTIONS],
            ["cmake", "--build", str(build), "--target", *TOOLS, "-j", str(jobs)],
        ):
            log.info("running %s", " ".join(cmd))
            if subprocess.run(cmd, stdout=out, stderr=subprocess.STDOUT).returncode != 0:
                tail = logfile.read_text(errors="replace").splitlines()[-15:]
                raise LlamaServerError(
                    "building llama-server failed:\n" + "\n".join(tail),
                    hint="Pass --llama-server PATH to use a build of your own.",
                )
    built = [build / "bin" / tool for tool in TOOLS]
    missing = [str(path) for path in built if not path.is_file()]
    if missing:
        raise LlamaServerError(f"the build finished but {', '.join(missing)} is missing.")
    return built


# ---------------------------------------------------------------------------------------
# Running it


def request_timeout_for(model_bytes: int) -> float:
    """A chat request of a few hundred prompt tokens: 60 s, plus 100 s per GB of weights
    (an upper bound for prompt processing on two CPU cores), so a hung server is noticed."""
    return 60.0 + model_bytes / 10e6


def startup_timeout_for(model_bytes: int) -> float:
    """15 s for the server's own start (about 1 s on the demo model; its chat template
    analysis renders each template a few dozen times, so a template that never finishes is
    caught here), plus the weights read at 100 MB/s (all shards of a split set)."""
    return 15.0 + model_bytes / 100e6


class LlamaServer(LocalServer):
    """`llama-server` on one GGUF, bound to 127.0.0.1, for the length of a `with` block
    (quantkit.runtime.local_server). Its log is at debug verbosity: the chat template
    analysis is logged there."""

    name = BINARY
    error = LlamaServerError

    def __init__(
        self,
        binary: ServerBinary,
        model: Path,
        *,
        extra_args: tuple[str, ...] = (),
        context: int = 2048,
        threads: int | None = None,
        startup_timeout: float | None = None,
        request_timeout: float | None = None,
    ) -> None:
        self.binary = binary
        self.model = Path(model)
        self.extra_args = extra_args
        # runtime.llama_cpp.weights_repacked: the server loads as the in-process checks do
        self.repack_args = () if repacking() else ("--no-repack",)
        self.context = context
        self.threads = threads or min(4, cpu_threads())
        if startup_timeout is None or request_timeout is None:
            size = self.model.stat().st_size
            startup_timeout = startup_timeout or startup_timeout_for(size)
            request_timeout = request_timeout or request_timeout_for(size)
        super().__init__(startup_timeout=startup_timeout, request_timeout=request_timeout)

    def model_name(self) -> str:
        return self.model.name

    def command(self) -> list[str]:
        return [
            str(self.binary.path), "-m", str(self.model), "--host", "127.0.0.1",
            "--port", str(self.port), "--jinja", "-c", str(self.context), "-np", "1",
            "-t", str(self.threads), "--no-webui", "--no-warmup", "-lv", "5",
            *self.repack_args, *self.extra_args,
        ]  # fmt: skip
