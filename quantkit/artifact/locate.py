"""Finding the artifact a user names: a .gguf file (any shard of a split set), a
transformers folder, an MLX folder (mlx-lm's), or a folder that holds one GGUF artifact.

`quantkit inspect` and `quantkit eval` (and anything else that takes "the artifact") resolve
the path here, so they accept the same inputs and refuse the others with the same
ArtifactError messages. What is found is not opened (beyond config.json, manifest.json and
one safetensors header): the inspection then reads the GGUF header, the evaluation loads it.

In a folder, the order is: an MLX folder (config.json and *.safetensors, and one of: MLX's
`quantization` table in config.json, safetensors weights whose header metadata says
`"format": "mlx"` as mlx writes them, quantkit's manifest naming the mlx format); else a
transformers folder (config.json and *.safetensors); else the
GGUF that quantkit's manifest.json names as the artifact (role "artifact"); else the one
GGUF in the folder that is not an importance matrix (llama-imatrix's and quantkit's sit
beside the model as .gguf files too), counting a split set once, by its first shard.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import ArtifactError
from ..formats.gguf_names import parse_shard_name
from .manifest import MANIFEST_NAME

_HINT = "Pass a .gguf file, the first shard of a split set, or a safetensors folder."


@dataclass(frozen=True)
class Located:
    kind: str  # "gguf" | "safetensors" | "mlx"
    path: Path  # the .gguf file as named or found (any shard), or the folder

    @property
    def is_gguf(self) -> bool:
        return self.kind == "gguf"


def locate_artifact(path: str | Path) -> Located:
    """The artifact at `path`; ArtifactError (exit code 3) when there is none or it is
    ambiguous. Checks names and folder contents only; no file is opened but manifest.json."""
    path = Path(path).expanduser()
    if not path.exists():
        raise ArtifactError(f"{path} does not exist.", hint="Check the path of the artifact.")
    if path.is_file():
        if path.suffix != ".gguf":
            raise ArtifactError(f"{path} is not a .gguf file.", hint=_HINT)
        return Located("gguf", path)
    if is_transformers_folder(path):
        return Located("mlx" if is_mlx_folder(path) else "safetensors", path)
    named = manifest_gguf(path)
    if named is not None:
        return Located("gguf", named)
    firsts = [p for p in sorted(path.glob("*.gguf")) if _is_model_name(p) and _is_first(p)]
    if len(firsts) == 1:
        return Located("gguf", firsts[0])
    if firsts:
        raise ArtifactError(
            f"{path} holds {len(firsts)} GGUF files ({', '.join(p.name for p in firsts[:4])}).",
            hint="Name the one to use.",
        )
    raise ArtifactError(
        f"{path} is neither a GGUF file nor a safetensors model folder (config.json and "
        "*.safetensors).",
        hint=_HINT,
    )


def is_transformers_folder(folder: Path) -> bool:
    return (folder / "config.json").is_file() and any(folder.glob("*.safetensors"))


def is_mlx_folder(folder: Path) -> bool:
    """An mlx-lm model folder. A quantized one carries MLX's own `quantization` table in
    config.json ({"group_size", "bits"}; transformers' quantized folders have only
    `quantization_config`, with a `quant_method`). An unquantized one (mlx-lm's BF16/FP16)
    has the config of a transformers folder, so the weights tell: mlx saves safetensors with
    the header metadata {"format": "mlx"} (torch's say "pt"). quantkit's manifest naming
    the mlx format settles it too."""
    if not is_transformers_folder(folder):
        return False
    try:
        config = json.loads((folder / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        config = {}
    table = config.get("quantization") if isinstance(config, dict) else None
    if isinstance(table, dict) and "bits" in table and "group_size" in table:
        return True
    if _manifest_format(folder) == "mlx":
        return True
    first = sorted(folder.glob("*.safetensors"))[0]
    return _safetensors_format(first) == "mlx"


def _manifest_format(folder: Path) -> str | None:
    try:
        manifest = json.loads((folder / MANIFEST_NAME).read_text(encoding="utf-8"))
        return str(manifest["target"]["format"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


def _safetensors_format(path: Path) -> str | None:
    """The `format` of a safetensors header's __metadata__, reading only the header."""
    import struct

    try:
        with path.open("rb") as fh:
            (length,) = struct.unpack("<Q", fh.read(8))
            if length > 100_000_000:
                return None
            header = json.loads(fh.read(length))
        return str((header.get("__metadata__") or {}).get("format"))
    except (OSError, ValueError, struct.error, AttributeError):
        return None


def manifest_gguf(folder: Path, files: list[dict[str, Any]] | None = None) -> Path | None:
    """The first GGUF that quantkit's manifest names as the artifact and that exists in
    `folder` (for a split set the manifest lists the first shard first). `files` is the
    manifest's file list when the caller holds it already; else manifest.json is read, and
    a missing or unreadable one names nothing."""
    if files is None:
        try:
            manifest = json.loads((folder / MANIFEST_NAME).read_text(encoding="utf-8"))
            files = manifest.get("files") or []
        except (OSError, ValueError, AttributeError):
            return None
    for record in files:
        name = str(record.get("name", ""))
        is_gguf = record.get("role") == "artifact" and name.endswith(".gguf")
        if is_gguf and (folder / name).is_file():
            return folder / name
    return None


def _is_model_name(path: Path) -> bool:
    # An importance matrix may sit beside the model as a .gguf too; it is not the artifact.
    return "imatrix" not in path.name.lower()


def _is_first(path: Path) -> bool:
    shard = parse_shard_name(path.name)
    return shard is None or shard.index == 1
