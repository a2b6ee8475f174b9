"""A Hub repo id resolves through huggingface_hub's own cache and offline mode.

No network here, so the test lays out a real Hugging Face cache (models--owner--name/
snapshots/<commit>/..., refs/main) and lets snapshot_download find it with
HF_HUB_OFFLINE=1: the same code path that serves a model downloaded earlier.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from quantkit.errors import SourceModelError
from quantkit.source.model import load_source

COMMIT = "0123456789abcdef0123456789abcdef01234567"


def _populate_cache(hub_cache: Path, repo_id: str, model_dir: Path) -> Path:
    repo_dir = hub_cache / f"models--{repo_id.replace('/', '--')}"
    snapshot = repo_dir / "snapshots" / COMMIT
    snapshot.mkdir(parents=True)
    for item in model_dir.iterdir():
        target = snapshot / item.name
        if item.is_dir():
            shutil.copytree(item, target)
        else:
            os.link(item, target)
    (repo_dir / "refs").mkdir()
    (repo_dir / "refs" / "main").write_text(COMMIT)
    return snapshot


@pytest.fixture
def offline_hub(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    hub_cache = tmp_path / "hub"
    hub_cache.mkdir()
    monkeypatch.setenv("HF_HUB_CACHE", str(hub_cache))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    import huggingface_hub.constants as hf_constants

    monkeypatch.setattr(hf_constants, "HF_HUB_CACHE", str(hub_cache))
    monkeypatch.setattr(hf_constants, "HF_HUB_OFFLINE", True)
    return hub_cache


def test_repo_id_resolves_from_the_hub_cache(offline_hub: Path, demo_model: Path) -> None:
    snapshot = _populate_cache(offline_hub, "quantkit-test/demo-chat", demo_model)
    source = load_source("quantkit-test/demo-chat")
    assert source.path.resolve() == snapshot.resolve()
    assert source.repo_id == "quantkit-test/demo-chat"
    assert source.revision == COMMIT
    assert source.name == "demo-chat"
    assert source.tokenizer is not None and "tool_use" in source.tokenizer.chat_templates


def test_repo_id_missing_offline_is_a_clear_error(offline_hub: Path) -> None:
    with pytest.raises(SourceModelError, match="not in the local Hugging Face cache"):
        load_source("quantkit-test/not-downloaded")
