"""manifest.json: what went into an artifact and what came out, with hashes.

Everything needed to reproduce or audit an artifact: the source (id, revision or content
hash), the target, library versions, the sha256 and size of every file, the tensor types
in each file, the plan and the checks.
"""

from __future__ import annotations

import hashlib
import json
import platform
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from typing import Any

from ..disk.atomic import building_file
from ..source.model import SourceModel
from ..version import __version__

MANIFEST_NAME = "manifest.json"
_LIBRARIES = (
    "gguf",
    "llama-cpp-python",
    "numpy",
    "safetensors",
    "tokenizers",
    "transformers",
    "torch",
    "huggingface-hub",
)


def sha256_file(path: Path, chunk: int = 16 * 1024 * 1024) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        while block := fh.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def library_versions() -> dict[str, str]:
    versions = {"python": platform.python_version(), "quantkit": __version__}
    for name in _LIBRARIES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return versions


def source_record(source: SourceModel, requested: str) -> dict[str, Any]:
    return {
        "requested": requested,
        "name": source.name,
        "repo_id": source.repo_id,
        "revision": source.revision,
        "content_hash": source.content_hash,
        "architecture": source.geometry.architecture,
        "parameters": source.parameter_count,
        "weight_bytes": source.weight_bytes,
        "card_metadata": _licence_metadata(source.path),
    }


def _licence_metadata(folder: Path) -> dict[str, Any]:
    """The licence fields of the source's README front matter, recorded so the model card
    inherits them even after the source folder is gone."""
    from .card_facts import parse_front_matter

    readme = folder / "README.md"
    if not readme.is_file():
        return {}
    meta = parse_front_matter(readme.read_text(encoding="utf-8", errors="replace"))
    keys = ("license", "license_name", "license_link")
    return {k: meta[k] for k in keys if k in meta}


def file_record(path: Path, **extra: Any) -> dict[str, Any]:
    return {"name": path.name, "bytes": path.stat().st_size, "sha256": sha256_file(path), **extra}


def build_manifest(
    *,
    source: dict[str, Any],
    target: dict[str, Any],
    files: list[dict[str, Any]],
    plan: dict[str, Any] | None = None,
    checks: list[dict[str, Any]] | None = None,
) -> dict[str, Any]:
    return {
        "manifest_version": 1,
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
        "source": source,
        "target": target,
        "files": files,
        "libraries": library_versions(),
        "plan": plan,
        "checks": checks or [],
    }


def write_manifest(folder: Path, manifest: dict[str, Any]) -> Path:
    """Write manifest.json atomically: `upload` rewrites it in a finished folder (after a
    split), where a crash must leave the old manifest or the new one, never half of one."""
    path = folder / MANIFEST_NAME
    with building_file(path) as tmp:
        tmp.write_text(json.dumps(manifest, indent=2, sort_keys=False) + "\n", encoding="utf-8")
    return path


def read_manifest(folder: Path) -> dict[str, Any]:
    return json.loads((folder / MANIFEST_NAME).read_text(encoding="utf-8"))
