"""quantkit.runtime.doctor: the versions reported are the installed packages' own, a package
that cannot be found is reported missing with the reason, and llama-server is found (or
not) as quantkit.runtime.llama_server finds it, and run for its version."""

from __future__ import annotations

import importlib.util
from importlib import metadata
from pathlib import Path

import pytest
from support.llama_server import fake_server

from quantkit.runtime import doctor
from quantkit.runtime.llama_server import ENV_VAR, build_folder, not_found_reason

NAMES = [
    "llama-cpp-python", "llama-server", "gguf", "transformers", "torch", "llmcompressor",
    "compressed-tensors", "mlx", "mlx-lm", "vllm",
]  # fmt: skip






def by_name(found: list[doctor.Runtime]) -> dict[str, doctor.Runtime]:
    return {r.name: r for r in found}


def test_every_runtime_once_in_order(no_server: Path) -> None:
    assert [r.name for r in doctor.runtimes()] == NAMES


def test_installed_packages_report_their_metadata_version(no_server: Path) -> None:
    found = by_name(doctor.runtimes())
    assert found["llama-cpp-python"].version == metadata.version("llama-cpp-python") == "0.3.36"
    assert found["llama-cpp-python"].available
    assert "llama.cpp" in found["llama-cpp-python"].detail
    for dist, module, _, used_for in doctor.PACKAGES:
        if importlib.util.find_spec(module) is None:
            continue
        runtime = found[dist]
        assert runtime.available and runtime.version == metadata.version(dist), runtime
        assert runtime.detail.startswith(used_for)
    assert found["gguf"].available and found["torch"].available  # installed in the venv


def test_a_package_without_its_module_is_missing_with_the_reason(
    no_server: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "mlx_lm" else real(name, *a)
    )
    mlx_lm = by_name(doctor.runtimes())["mlx-lm"]
    assert not mlx_lm.available
    assert mlx_lm.version == metadata.version("mlx-lm")  # the metadata is still there
    assert "installed, but `mlx_lm` is missing" in mlx_lm.detail
    assert "pip install 'quantkit[mlx]'" in mlx_lm.detail


def test_a_package_not_installed_is_missing_with_its_install_command(
    no_server: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    real_spec, real_version = importlib.util.find_spec, metadata.version

    def version(dist: str) -> str:
        if dist == "gguf":
            raise metadata.PackageNotFoundError(dist)
        return real_version(dist)

    monkeypatch.setattr(
        importlib.util,
        "find_spec",
        lambda name, *a: None if name == "gguf" else real_spec(name, *a),
    )
    monkeypatch.setattr(metadata, "version", version)
    found = by_name(doctor.runtimes())
    used_for = next(row[3] for row in doctor.PACKAGES if row[0] == "gguf")
    assert found["gguf"] == doctor.Runtime(
        "gguf", False, None, f"not installed (pip install 'quantkit[gguf]'); {used_for}"
    )
    assert found["torch"].available  # the others are untouched


def test_a_broken_module_spec_is_missing_not_a_crash(
    no_server: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    real = importlib.util.find_spec

    def find_spec(name: str, *args: object):
        if name == "transformers":
            raise ValueError("transformers.__spec__ is None")
        return real(name, *args)

    monkeypatch.setattr(importlib.util, "find_spec", find_spec)
    transformers = by_name(doctor.runtimes())["transformers"]
    assert not transformers.available and "is missing" in transformers.detail


def test_no_llama_server_says_how_to_get_one(no_server: Path) -> None:
    server = by_name(doctor.runtimes())["llama-server"]
    assert server == doctor.Runtime("llama-server", False, None, not_found_reason())
    assert "--build-llama-server" in server.detail


def test_an_explicit_file_that_is_not_executable_is_missing_with_the_message(
    no_server: Path, tmp_path: Path
) -> None:
    plain = tmp_path / "llama-server"
    plain.write_text("#!/bin/sh\necho 'version: 1 (x)'\n")
    plain.chmod(0o644)
    server = by_name(doctor.runtimes(str(plain)))["llama-server"]
    assert not server.available and server.version is None
    assert server.detail == f"--llama-server {plain}: not an executable file."
    missing = by_name(doctor.runtimes(str(tmp_path / "nowhere")))["llama-server"]
    assert not missing.available and "not an executable file" in missing.detail


def test_an_explicit_build_reports_its_version_and_path(no_server: Path, tmp_path: Path) -> None:
    binary = fake_server(tmp_path / "mine" / "llama-server")
    server = by_name(doctor.runtimes(str(binary)))["llama-server"]
    assert server.available and server.version == "1234 (abc)"
    assert server.detail.startswith(f"{binary} (--llama-server)")


def test_an_executable_that_cannot_run_is_missing(no_server: Path, tmp_path: Path) -> None:
    junk = tmp_path / "llama-server"
    junk.write_bytes(b"\x00not a program\n")
    junk.chmod(0o755)
    server = by_name(doctor.runtimes(str(junk)))["llama-server"]
    assert not server.available and server.version is None
    assert server.detail.startswith(f"{junk} (--llama-server) does not run: ")


def test_the_search_order_env_var_cache_path(
    no_server: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    fake_server(no_server / "llama-server", output="version: 3 (path)")
    assert by_name(doctor.runtimes())["llama-server"].version == "3 (path)"
    cached = fake_server(build_folder() / "bin" / "llama-server", output="version: 2 (cache)")
    server = by_name(doctor.runtimes())["llama-server"]
    assert (server.version, server.detail) == (
        "2 (cache)",
        f"{cached} (quantkit's build); serves GGUFs as users run them",
    )
    monkeypatch.setenv(
        ENV_VAR, str(fake_server(tmp_path / "env" / "ls", output="version: 1 (env)"))
    )
    assert by_name(doctor.runtimes())["llama-server"].version == "1 (env)"
    explicit = fake_server(tmp_path / "x" / "llama-server", output="version: 0 (flag)")
    assert by_name(doctor.runtimes(str(explicit)))["llama-server"].version == "0 (flag)"


def test_to_dict_has_the_four_fields(no_server: Path) -> None:
    row = doctor.runtimes()[0].to_dict()
    assert row == {
        "name": "llama-cpp-python",
        "available": True,
        "version": metadata.version("llama-cpp-python"),
        "detail": row["detail"],
    }
