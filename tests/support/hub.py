"""Fixtures for the publishing tests (upload, model card, GGUF split).

Imported with `from support.hub import *` by those test modules (tests/conftest.py is
shared and stays as it is). The converted demo artifact is built once into the fixture
cache; each test gets its own copy, because publishing writes README.md and Modelfile
into the artifact folder.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from quantkit.evaluation.options import EvalOptions

NO_EVAL = EvalOptions(enabled=False)  # these tests check other things than quality

DEMO_ARTIFACT_DIR = "demo-artifact-Q4_K_M-v2"  # v2: with the llama-server round trip
WRITE_TOKEN = "hf_test_write_0123456789abcdef"
READ_TOKEN = "hf_test_read_0123456789abcdef"
UNKNOWN_TOKEN = "hf_test_unknown_0123456789abcdef"


def _build_demo_artifact(cache: Path, demo_model: Path) -> Path:
    from fixtures.models import build_once
    from quantkit.pipeline import convert

    def build(partial: Path) -> None:
        partial.rmdir()  # convert makes its OUT itself
        convert(demo_model, out=partial, format="gguf", quant="Q4_K_M", evaluation=NO_EVAL)

    return build_once(cache / DEMO_ARTIFACT_DIR, build)


@pytest.fixture(scope="session")
def demo_artifact_cached(fixture_cache: Path, demo_model: Path) -> Path:
    """The demo model converted to a checked Q4_K_M GGUF artifact (read-only: copy it)."""
    return _build_demo_artifact(fixture_cache, demo_model)


@pytest.fixture()
def demo_artifact(demo_artifact_cached: Path, demo_model: Path, tmp_path: Path) -> Path:
    """A private copy of the demo artifact (hard links for the big file: nothing rewrites
    it in place). Its manifest names this checkout's demo model as the source: the cached
    copy names the folder it was built from, which another checkout sharing the fixture
    cache (a worktree) may have removed since."""
    dest = tmp_path / "artifact"
    shutil.copytree(demo_artifact_cached, dest, copy_function=_link_or_copy)
    manifest_path = dest / "manifest.json"
    manifest = json.loads(manifest_path.read_text())
    manifest["source"]["requested"] = str(demo_model)
    manifest_path.write_text(json.dumps(manifest, indent=2) + "\n")
    return dest


def _link_or_copy(src: str, dst: str) -> None:
    if src.endswith(".gguf"):
        try:
            os.link(src, dst)
            return
        except OSError:
            pass
    shutil.copy2(src, dst)


@pytest.fixture(scope="session")
def fake_hub() -> Iterator:
    """A local Hub (tests/hub_server.py) on 127.0.0.1; reset between tests."""
    from support.hub_server import FakeHub, TokenInfo

    hub = FakeHub(
        tokens={
            WRITE_TOKEN: TokenInfo("alice", role="write", orgs={"acme": "write", "ro": "read"}),
            READ_TOKEN: TokenInfo("bob", role="read"),
        }
    )
    hub.start()
    try:
        yield hub
    finally:
        hub.stop()


@pytest.fixture()
def hub(fake_hub, monkeypatch: pytest.MonkeyPatch, tmp_path: Path):
    """The fake Hub, emptied, with huggingface_hub pointed at it: HF_ENDPOINT for child
    processes and the client's constants for this one (as its own tests do; the download
    URL template too), the classic LFS path (HF_HUB_DISABLE_XET: hf_xet is installed here
    and a local server cannot speak Xet), a private HF_HOME and the write token in
    HF_TOKEN."""
    from huggingface_hub import constants

    fake_hub.reset()
    home = tmp_path / "hf-home"
    home.mkdir()
    monkeypatch.setenv("HF_ENDPOINT", fake_hub.url)
    monkeypatch.setenv("HF_HUB_DISABLE_XET", "1")
    monkeypatch.setenv("HF_HOME", str(home))
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    monkeypatch.setenv("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    monkeypatch.setenv("HF_TOKEN", WRITE_TOKEN)
    monkeypatch.delenv("HUGGING_FACE_HUB_TOKEN", raising=False)
    monkeypatch.setattr(constants, "ENDPOINT", fake_hub.url)
    # hf_hub_url builds download URLs from this, made from ENDPOINT when the module loaded
    resolve = fake_hub.url + "/{repo_id}/resolve/{revision}/{filename}"
    monkeypatch.setattr(constants, "HUGGINGFACE_CO_URL_TEMPLATE", resolve)
    monkeypatch.setattr(constants, "HF_HUB_DISABLE_XET", True)
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(constants, "HF_TOKEN_PATH", str(home / "token"))
    monkeypatch.setattr(constants, "HF_STORED_TOKENS_PATH", str(home / "stored_tokens"))
    return fake_hub
