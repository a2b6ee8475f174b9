"""`quantkit inspect`: prove that an artifact's tokens and chat templates survived.

`inspect(artifact, against=None)` takes a GGUF file (or any shard of a split set, or a
folder holding one GGUF), a safetensors folder (BF16/FP16, FP8, GPTQ) or an MLX folder
(mlx-lm's, checked in mlx-lm), from quantkit or any other tool. With `against` (the source
model folder or Hub id) every check compares with the source; without it the artifact is
checked for internal consistency and the Hermes conventions.
docs/verification.md explains each check.

`quantkit convert` runs the same checks against its source through
quantkit.inspection.convert_checks (check_gguf, check_safetensors, check_mlx).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from ..artifact.locate import locate_artifact
from ..errors import ArtifactError
from .check import Check
from .gguf_meta import check_complete, check_gguf_magic, check_is_model, gguf_files
from .options import ServerOptions
from .report import InspectReport

if TYPE_CHECKING:
    from ..formats.tokens import TokenTypePolicy

__all__ = ["ArtifactError", "Check", "InspectReport", "ServerOptions", "inspect"]


def inspect(
    artifact: str | Path,
    against: str | Path | None = None,
    *,
    generate: bool = False,
    revision: str | None = None,
    server: ServerOptions | None = None,
    repack: bool | None = None,
) -> InspectReport:
    """Run every survival check on `artifact`; `generate` adds a short greedy reply in the
    runtime (loads the weights: slow for big models). `server` adds the round trip through
    the artifact's server unless `server.enabled` is off: llama.cpp's `llama-server` for a
    GGUF (quantkit.inspection.server_checks), vLLM's for a safetensors folder
    (quantkit.inspection.vllm_checks; skipped with the reason without vLLM and a GPU). Both
    load the weights (a GGUF's with llama.cpp's weight repacking unless `repack` is off:
    runtime.llama_cpp; None: the enclosing `weights_repacked` block's, on outside one).
    The report passes only when every check that ran passes."""
    from ..errors import require
    from .reference import load_reference

    kind, files = resolve_artifact(Path(artifact))
    reference = load_reference(against, revision=revision) if against is not None else None
    if kind == "gguf":
        require("llama_cpp", "gguf")
        from ..runtime.llama_cpp import weights_repacked
        from .gguf_checks import gguf_checks

        checks = gguf_checks(files, reference)
        server = server or ServerOptions()
        with weights_repacked(repack):
            if generate:
                from .generation import gguf_generation_check

                checks.append(gguf_generation_check(files[0], reference))
            if server.enabled:
                checks += round_trip_checks(files[0], server.binary)
    elif kind == "mlx":
        require("mlx_lm", "mlx")
        from .mlx_checks import mlx_checks, mlx_generation_check

        checks = mlx_checks(files[0], reference)
        if generate:
            checks.append(mlx_generation_check(files[0]))
    else:
        require("transformers", "torch")
        from .safetensors_checks import safetensors_checks

        checks = safetensors_checks(files[0], reference)
        if generate:
            from .generation import generation_check

            checks.append(generation_check(files[0]))
        if (server or ServerOptions()).enabled:
            from .vllm_checks import vllm_checks

            checks += vllm_checks(files[0])
    return InspectReport(
        artifact=str(artifact),
        kind=kind,
        files=tuple(str(f) for f in files),
        against=str(against) if against is not None else None,
        checks=tuple(checks),
    )


def resolve_artifact(path: Path) -> tuple[str, list[Path]]:
    """("gguf", shard paths), ("safetensors", [folder]) or ("mlx", [folder]); ArtifactError
    for anything else.
    Found by quantkit.artifact.locate (the same rules as `quantkit eval`), then checked far
    enough that the checks have something to read."""
    found = locate_artifact(path)
    if not found.is_gguf:
        if not (found.path / "tokenizer.json").is_file():
            raise ArtifactError(
                f"{found.path} has no tokenizer.json: there are no tokens or templates to check.",
                hint="Copy the source's tokenizer files into the artifact folder.",
            )
        return found.kind, [found.path]
    files = gguf_files(found.path)
    for f in files:
        check_gguf_magic(f)
    check_is_model(files[0])
    check_complete(files)
    return "gguf", files


def round_trip_checks(
    gguf: Path, llama_server: str | Path | None = None, policy: TokenTypePolicy | None = None
) -> list[Check]:
    """The llama-server round trip on a GGUF (its first shard), or the same checks skipped
    with the reason when no llama-server can be found. `policy`: the token types the GGUF
    was written with (convert's --token-type)."""
    from ..runtime.llama_server import find_llama_server
    from .gguf_meta import read_gguf_meta
    from .server_checks import server_checks

    return server_checks(gguf, read_gguf_meta(gguf), find_llama_server(llama_server), policy)
