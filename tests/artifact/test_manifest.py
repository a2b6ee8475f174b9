"""manifest.json: hashes, the documented keys, library versions, records of sources/files."""

from __future__ import annotations

import hashlib
import json
import math
import os
import platform
import shutil
from datetime import datetime
from importlib import metadata
from pathlib import Path

import pytest

import quantkit
from quantkit.artifact.manifest import (
    MANIFEST_NAME,
    build_manifest,
    file_record,
    library_versions,
    read_manifest,
    sha256_file,
    source_record,
    write_manifest,
)

# What the README promises manifest.json holds.
DOCUMENTED_KEYS = {
    "manifest_version",
    "created",
    "source",
    "target",
    "files",
    "libraries",
    "plan",
    "checks",
}


@pytest.mark.parametrize("size", [0, 1, 4095, 4096, 10_001])
def test_sha256_file_matches_hashlib(tmp_path: Path, size: int) -> None:
    data = os.urandom(size)
    path = tmp_path / "blob.bin"
    path.write_bytes(data)
    expected = hashlib.sha256(data).hexdigest()
    assert sha256_file(path) == expected
    # Reading in small chunks (many blocks, a partial last one) gives the same digest.
    assert sha256_file(path, chunk=1000) == expected


def test_sha256_file_differs_when_one_byte_changes(tmp_path: Path) -> None:
    path = tmp_path / "blob.bin"
    path.write_bytes(b"\x00" * 5000)
    before = sha256_file(path, chunk=1024)
    path.write_bytes(b"\x00" * 4999 + b"\x01")
    assert sha256_file(path, chunk=1024) != before


def test_library_versions_name_the_conversion_stack() -> None:
    versions = library_versions()
    assert versions["gguf"] == metadata.version("gguf")
    assert versions["llama-cpp-python"] == metadata.version("llama-cpp-python")
    assert versions["quantkit"] == quantkit.__version__
    assert versions["python"] == platform.python_version()
    assert all(isinstance(v, str) and v for v in versions.values())


def test_file_record_has_name_size_hash_and_extras(tmp_path: Path) -> None:
    path = tmp_path / "model-Q8_0.gguf"
    path.write_bytes(b"GGUF" + bytes(range(256)) * 10)
    record = file_record(path, format="gguf", quant="Q8_0", tensor_types={"Q8_0": 3})
    assert record == {
        "name": "model-Q8_0.gguf",
        "bytes": 4 + 2560,
        "sha256": hashlib.sha256(path.read_bytes()).hexdigest(),
        "format": "gguf",
        "quant": "Q8_0",
        "tensor_types": {"Q8_0": 3},
    }


def test_build_manifest_has_the_documented_keys(tmp_path: Path) -> None:
    source = {"requested": "./m", "name": "m", "content_hash": "ab" * 32}
    target = {"format": "gguf", "quant": "Q4_K_M", "profile": "rtx4090-4bit"}
    files = [{"name": "m-Q4_K_M.gguf", "bytes": 10, "sha256": "00" * 32}]
    plan = {"fit": "full", "total_bytes": 123}
    checks = [{"name": "special tokens single ids", "passed": True, "evidence": "", "fatal": True}]
    manifest = build_manifest(source=source, target=target, files=files, plan=plan, checks=checks)

    assert set(manifest) == DOCUMENTED_KEYS
    assert manifest["manifest_version"] == 1
    assert manifest["source"] == source
    assert manifest["target"] == target
    assert manifest["files"] == files
    assert manifest["plan"] == plan
    assert manifest["checks"] == checks
    assert manifest["libraries"] == library_versions()
    created = datetime.fromisoformat(manifest["created"])
    assert created.tzinfo is not None  # an unambiguous time

    # Defaults: no plan, no checks -> null and [] (not missing keys).
    bare = build_manifest(source=source, target=target, files=files)
    assert set(bare) == DOCUMENTED_KEYS
    assert bare["plan"] is None and bare["checks"] == []

    # JSON round trip through the folder.
    path = write_manifest(tmp_path, manifest)
    assert path == tmp_path / MANIFEST_NAME
    assert json.loads(path.read_text()) == manifest
    assert read_manifest(tmp_path) == manifest


def test_source_record_of_the_demo_model(demo_model: Path) -> None:
    from safetensors import safe_open

    source = quantkit.load_source(demo_model)
    record = source_record(source, str(demo_model))
    assert record["requested"] == str(demo_model)
    assert record["name"] == demo_model.name
    assert record["architecture"] == "LlamaForCausalLM"
    assert record["repo_id"] is None and record["revision"] is None

    # Parameter count and weight bytes, counted here from the safetensors file itself.
    params = 0
    with safe_open(str(demo_model / "model.safetensors"), framework="numpy") as fh:
        for key in fh.keys():  # noqa: SIM118 - safe_open has no __iter__
            params += math.prod(fh.get_slice(key).get_shape())
    assert record["parameters"] == params
    assert record["weight_bytes"] == 2 * params  # BF16
    assert len(record["content_hash"]) == 64
    # Same folder, same identity; a changed config changes it.
    assert quantkit.load_source(demo_model).content_hash == record["content_hash"]


def test_content_hash_changes_with_the_config(demo_model: Path, tmp_path: Path) -> None:
    copy = tmp_path / "demo"
    copy.mkdir()
    for path in demo_model.iterdir():
        if path.suffix == ".safetensors":
            try:
                os.link(path, copy / path.name)
            except OSError:  # another filesystem
                shutil.copy2(path, copy / path.name)
        elif path.is_file():
            shutil.copy2(path, copy / path.name)
        else:
            shutil.copytree(path, copy / path.name)
    original = quantkit.load_source(copy).content_hash
    assert original == quantkit.load_source(demo_model).content_hash
    config = json.loads((copy / "config.json").read_text())
    config["rms_norm_eps"] = 1e-6
    (copy / "config.json").write_text(json.dumps(config))
    assert quantkit.load_source(copy).content_hash != original
