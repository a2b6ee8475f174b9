"""One way to find the artifact a user names (quantkit.artifact.locate): `quantkit inspect`
and `quantkit eval` accept the same paths and refuse the others with the same errors."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from gguf import GGUFWriter

from quantkit.artifact.locate import locate_artifact, manifest_gguf
from quantkit.errors import ArtifactError
from quantkit.evaluation.engines import resolve_model_path
from quantkit.inspection import resolve_artifact


def _gguf(path: Path) -> Path:
    writer = GGUFWriter(path, "llama")
    writer.add_tensor("a.weight", np.zeros(8, dtype=np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


def _folder(tmp_path: Path, *names: str, manifest: list[str] | None = None) -> Path:
    folder = tmp_path / "art"
    folder.mkdir()
    for name in names:
        _gguf(folder / name)
    if manifest is not None:
        files = [{"name": n, "role": "artifact"} for n in manifest]
        files.append({"name": "m.imatrix.gguf", "role": "imatrix"})
        (folder / "manifest.json").write_text(json.dumps({"files": files}))
    return folder


def _agree(path: Path) -> Path:
    """What all three readers make of `path`: the same file, or the same error."""
    found = locate_artifact(path)
    assert resolve_model_path(path) == found.path
    kind, files = resolve_artifact(path)
    assert (kind, files[0].parent) == (found.kind, found.path.parent)
    return found.path


@pytest.mark.parametrize(
    ("names", "manifest", "expected"),
    [
        (["m.gguf"], None, "m.gguf"),
        (["m.gguf", "m.imatrix.gguf"], None, "m.gguf"),
        (["a.gguf", "b.gguf", "m.imatrix.gguf"], ["b.gguf"], "b.gguf"),
        (["m-00001-of-00002.gguf", "m-00002-of-00002.gguf"], None, "m-00001-of-00002.gguf"),
    ],
)
def test_a_folder_resolves_to_its_one_gguf(tmp_path: Path, names, manifest, expected) -> None:
    assert _agree(_folder(tmp_path, *names, manifest=manifest)).name == expected


def test_a_file_resolves_to_itself(tmp_path: Path) -> None:
    path = _gguf(tmp_path / "m.gguf")
    assert _agree(path) == path


ERRORS = [
    ("missing", "does not exist"),
    ("notes.txt", "is not a .gguf file"),
    ("empty", "neither a GGUF file nor a safetensors model folder"),
    ("two", "holds 2 GGUF files"),
]


@pytest.mark.parametrize(("case", "message"), ERRORS)
def test_bad_paths_are_the_same_error_everywhere(tmp_path: Path, case: str, message: str):
    path = tmp_path / case
    if case == "notes.txt":
        path.write_text("x")
    elif case == "empty":
        path.mkdir()
    elif case == "two":
        path.mkdir()
        _gguf(path / "a.gguf")
        _gguf(path / "b.gguf")
    for resolve in (locate_artifact, resolve_model_path, resolve_artifact):
        with pytest.raises(ArtifactError, match=message):
            resolve(path)


def test_transformers_folder(tmp_path: Path) -> None:
    folder = tmp_path / "hf"
    folder.mkdir()
    (folder / "config.json").write_text("{}")
    (folder / "model.safetensors").write_bytes(b"")
    _gguf(folder / "extra.gguf")  # a transformers folder wins over a stray GGUF
    found = locate_artifact(folder)
    assert (found.kind, found.path) == ("safetensors", folder)
    assert resolve_model_path(folder) == folder
    with pytest.raises(ArtifactError, match="no tokenizer.json"):  # inspection needs one
        resolve_artifact(folder)


def test_manifest_naming_a_missing_file_names_nothing(tmp_path: Path) -> None:
    folder = _folder(tmp_path, "m.gguf", manifest=["gone.gguf"])
    assert manifest_gguf(folder) is None
    assert locate_artifact(folder).path.name == "m.gguf"
    (folder / "manifest.json").write_text("not json")
    assert manifest_gguf(folder) is None
