"""`quantkit inspect`: prove that an artifact's tokens and chat templates survived.

`inspect(artifact, against=None)` takes a GGUF file (or any shard of a split set, or a
folder holding one GGUF) or a safetensors folder (BF16/FP16, FP8, GPTQ), from quantkit or
any other tool. With `against` (the source model folder or Hub id) every check compares
with the source; without it the artifact is checked for internal consistency and the
Hermes conventions. docs/verification.md explains each check.

`quantkit convert` runs the same checks against its source through
quantkit.verify.check_gguf and quantkit.verify_safetensors.check_safetensors.
"""

from __future__ import annotations

from pathlib import Path

from ..errors import ArtifactError
from ..verify import Check
from .gguf_meta import check_complete, check_gguf_magic, check_is_model, gguf_files
from .report import InspectReport

__all__ = ["ArtifactError", "Check", "InspectReport", "inspect"]


def inspect(
    artifact: str | Path,
    against: str | Path | None = None,
    *,
    generate: bool = False,
    revision: str | None = None,
) -> InspectReport:
    """Run every survival check on `artifact`; `generate` adds a short greedy reply in the
    runtime (loads the weights: slow for big models). The report passes only when every
    check passes."""
    from ..errors import require
    from .reference import load_reference

    kind, files = resolve_artifact(Path(artifact))
    reference = load_reference(against, revision=revision) if against is not None else None
    if kind == "gguf":
        require("llama_cpp", "gguf")
        from .gguf_checks import gguf_checks

        checks = gguf_checks(files, reference)
        if generate:
            from ..verify import gguf_generation_check

            checks.append(gguf_generation_check(files[0], reference))
    else:
        require("transformers", "torch")
        from .safetensors_checks import safetensors_checks

        checks = safetensors_checks(files[0], reference)
        if generate:
            from ..verify_safetensors import generation_check

            checks.append(generation_check(files[0], max_new_tokens=32))
    return InspectReport(
        artifact=str(artifact),
        kind=kind,
        files=tuple(str(f) for f in files),
        against=str(against) if against is not None else None,
        checks=tuple(checks),
    )


def resolve_artifact(path: Path) -> tuple[str, list[Path]]:
    """("gguf", shard paths) or ("safetensors", [folder]); ArtifactError for anything else."""
    if not path.exists():
        raise ArtifactError(f"{path} does not exist.", hint="Check the path of the artifact.")
    if path.is_file():
        if path.suffix != ".gguf":
            raise ArtifactError(
                f"{path} is not a .gguf file.",
                hint="Pass a .gguf file, the first shard of a split set, or a safetensors folder.",
            )
        files = gguf_files(path)
        for f in files:
            check_gguf_magic(f)
        check_is_model(files[0])
        check_complete(files)
        return "gguf", files
    if (path / "config.json").is_file() and any(path.glob("*.safetensors")):
        if not (path / "tokenizer.json").is_file():
            raise ArtifactError(
                f"{path} has no tokenizer.json: there are no tokens or templates to check.",
                hint="Copy the source's tokenizer files into the artifact folder.",
            )
        return "safetensors", [path]
    named = _manifest_artifact(path)
    if named is not None:
        return resolve_artifact(named)
    # An importance matrix may sit beside the model as a .gguf too; it is not the artifact.
    ggufs = sorted(p for p in path.glob("*.gguf") if "imatrix" not in p.name.lower())
    firsts = [p for p in ggufs if "-of-" not in p.name or "-00001-of-" in p.name]
    if len(firsts) == 1:
        return resolve_artifact(firsts[0])
    if len(firsts) > 1:
        raise ArtifactError(
            f"{path} holds {len(firsts)} GGUF files ({', '.join(p.name for p in firsts[:4])}).",
            hint="Name the one to inspect.",
        )
    raise ArtifactError(
        f"{path} is neither a GGUF file nor a safetensors model folder (config.json and "
        "*.safetensors).",
        hint="Pass a .gguf file, the first shard of a split set, or a safetensors folder.",
    )


def _manifest_artifact(folder: Path) -> Path | None:
    """The GGUF a quantkit artifact folder's manifest.json names as its artifact."""
    import json

    manifest = folder / "manifest.json"
    if not manifest.is_file():
        return None
    try:
        files = json.loads(manifest.read_text(encoding="utf-8")).get("files") or []
    except ValueError:
        return None
    for record in files:
        name = str(record.get("name", ""))
        is_gguf = record.get("role") == "artifact" and name.endswith(".gguf")
        if is_gguf and (folder / name).is_file():
            return folder / name
    return None
