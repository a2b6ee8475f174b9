"""`quantkit upload` against a local Hub (tests/hub_server.py) with the real
huggingface_hub client: what arrives matches byte for byte; a missing, invalid or
read-only token stops before anything is sent; a 500 in the middle of an upload and a
dropped connection are retried; the after-upload comparison catches a difference; PRs,
branches, the split of oversize GGUFs and the CLI."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest
from support.hub import READ_TOKEN, UNKNOWN_TOKEN, WRITE_TOKEN

from quantkit.errors import HubAuthError, PublishError, UploadVerificationError
from quantkit.hub import errors as hub_errors
from quantkit.hub import publish as publish_module
from quantkit.hub.publish import publish

REPO = "alice/demo-Q4_K_M-GGUF"
WRITES = ("/api/repos/create", "/preupload/", "/commit/", "/lfs")


def _sent(hub) -> list[str]:
    """Paths of requests that would change something on the Hub."""
    return [r.path for r in hub.requests if any(w in r.path for w in WRITES)]


def _assert_arrived(hub, artifact: Path, names, revision: str = "main") -> None:
    stored = hub.files(REPO, revision)
    for name in names:
        assert name in stored, name
        assert hub.file_bytes(REPO, name, revision) == (artifact / name).read_bytes(), name


@pytest.fixture(autouse=True)
def _fast_retries(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(hub_errors, "RETRY_WAIT_S", 0.0)


def test_upload_arrives_byte_for_byte_and_is_verified(hub, demo_artifact, caplog, capsys):
    caplog.set_level(logging.DEBUG)
    result = publish(demo_artifact, REPO, private=True)
    gguf = next(demo_artifact.glob("*.gguf")).name
    names = [gguf, "manifest.json", "README.md", "Modelfile"]
    _assert_arrived(hub, demo_artifact, names)
    assert result.verified and result.method == "upload_folder"
    assert sorted(f["name"] for f in result.files) == sorted(names)
    manifest = json.loads((demo_artifact / "manifest.json").read_text())
    by_name = {f["name"]: f for f in result.files}
    assert by_name[gguf]["sha256"] == manifest["files"][0]["sha256"] and by_name[gguf]["lfs"]
    assert hub.files(REPO)[gguf].lfs and hub.files(REPO)[gguf].sha256 == by_name[gguf]["sha256"]
    assert hub.repos[REPO].private
    assert hub.validated and hub.validated[-1] == (demo_artifact / "README.md").read_text()
    assert result.token_source == "HF_TOKEN"
    # the token went to the Hub in the Authorization header and nowhere else
    assert any(r.headers.get("authorization") == f"Bearer {WRITE_TOKEN}" for r in hub.requests)
    out = capsys.readouterr()
    assert WRITE_TOKEN not in out.out + out.err + caplog.text + repr(result.to_dict())
    for path in demo_artifact.rglob("*"):
        if path.is_file() and path.suffix != ".gguf":
            assert WRITE_TOKEN.encode() not in path.read_bytes(), path
    for name in ("README.md", "Modelfile", "manifest.json"):
        assert WRITE_TOKEN.encode() not in hub.file_bytes(REPO, name)


def test_uploading_again_sends_no_weights(hub, demo_artifact):
    publish(demo_artifact, REPO)
    first = len([r for r in hub.requests if r.method == "PUT"])
    publish(demo_artifact, REPO)
    assert len([r for r in hub.requests if r.method == "PUT"]) == first == 1


def test_missing_token_stops_before_anything_is_sent(hub, demo_artifact, monkeypatch):
    monkeypatch.delenv("HF_TOKEN")
    with pytest.raises(HubAuthError, match="No Hugging Face token"):
        publish(demo_artifact, REPO)
    assert hub.requests == []


def test_invalid_token_is_a_clear_401(hub, demo_artifact, monkeypatch):
    monkeypatch.setenv("HF_TOKEN", UNKNOWN_TOKEN)
    with pytest.raises(HubAuthError, match="401") as info:
        publish(demo_artifact, REPO)
    assert UNKNOWN_TOKEN not in str(info.value)
    assert [r.path for r in hub.requests if "whoami" in r.path] and _sent(hub) == []


def test_read_only_token_stops_before_anything_is_sent(hub, demo_artifact, monkeypatch):
    monkeypatch.setenv("HF_TOKEN", READ_TOKEN)
    with pytest.raises(HubAuthError, match="read-only"):
        publish(demo_artifact, "bob/x")
    assert _sent(hub) == []


@pytest.mark.parametrize(
    ("repo_id", "message"), [("ro/x", "read role"), ("carol/x", "cannot create repos")]
)
def test_namespace_without_write_access(hub, demo_artifact, repo_id, message):
    with pytest.raises(HubAuthError, match=message):
        publish(demo_artifact, repo_id)
    assert _sent(hub) == []


def test_a_403_from_the_hub_is_a_clear_error(hub, demo_artifact):
    hub.add_fault("POST", r"/preupload/", "403")
    with pytest.raises(HubAuthError, match="403 Forbidden"):
        publish(demo_artifact, REPO)
    assert not [r for r in hub.requests if r.method == "PUT" or "/commit/" in r.path]


def test_a_500_in_the_middle_of_an_upload_is_retried(hub, demo_artifact):
    hub.multipart_above = 20_000_000  # the 105 MB GGUF goes in 8 MB parts
    hub.add_fault("PUT", r"/part/3$", "500")
    try:
        result = publish(demo_artifact, REPO)
    finally:
        hub.multipart_above = None
    parts = [r for r in hub.requests if r.path.endswith("/part/3")]
    assert [r.status for r in parts] == [500, 200]
    assert result.verified
    _assert_arrived(hub, demo_artifact, [next(demo_artifact.glob("*.gguf")).name])


def test_a_dropped_connection_during_the_transfer_is_retried(hub, demo_artifact):
    hub.add_fault("PUT", r"/lfs-upload/", "close")
    result = publish(demo_artifact, REPO)
    puts = [r.status for r in hub.requests if r.method == "PUT"]
    assert puts == [None, 200] and result.verified


def test_a_dropped_connection_at_the_commit_is_retried_without_resending(hub, demo_artifact):
    hub.add_fault("POST", r"/commit/", "close")
    result = publish(demo_artifact, REPO)
    commits = [r.status for r in hub.requests if "/commit/" in r.path]
    assert commits == [None, 200] and result.verified
    assert len([r for r in hub.requests if r.method == "PUT"]) == 1  # the GGUF went once


def test_a_hub_that_keeps_failing_gives_a_clear_error(hub, demo_artifact):
    hub.add_fault("POST", r"/commit/", "close", times=10)
    with pytest.raises(PublishError, match="connection failed while uploading.*3 attempts"):
        publish(demo_artifact, REPO)


def test_a_file_that_differs_from_the_manifest_is_an_error(hub, demo_artifact):
    manifest = json.loads((demo_artifact / "manifest.json").read_text())
    manifest["files"][0]["sha256"] = "0" * 64  # the manifest no longer describes the file
    (demo_artifact / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(UploadVerificationError, match="sha256 .* on the Hub, 0{64} expected"):
        publish(demo_artifact, REPO)


def test_a_changed_object_on_the_hub_is_an_error(hub, demo_artifact, monkeypatch):
    gguf = next(demo_artifact.glob("*.gguf")).name
    real_verify = publish_module._verify

    def corrupt_then_verify(*args):
        hub.replace_object(REPO, gguf, b"GGUF not the same bytes")
        return real_verify(*args)

    monkeypatch.setattr(publish_module, "_verify", corrupt_then_verify)
    with pytest.raises(UploadVerificationError, match=f"{gguf}: 23 bytes on the Hub"):
        publish(demo_artifact, REPO)


def test_create_pr_leaves_main_alone(hub, demo_artifact):
    result = publish(demo_artifact, REPO, create_pr=True)
    assert result.revision == "refs/pr/1" and result.pr_url.endswith("/discussions/1")
    assert set(hub.files(REPO, "main")) == {".gitattributes"}
    _assert_arrived(hub, demo_artifact, ["README.md", "manifest.json"], "refs/pr/1")
    assert result.verified


def test_revision_creates_the_branch(hub, demo_artifact):
    result = publish(demo_artifact, REPO, revision="q4")
    assert result.revision == "q4" and result.verified
    assert set(hub.files(REPO, "main")) == {".gitattributes"}
    _assert_arrived(hub, demo_artifact, ["README.md"], "q4")


def test_create_pr_with_a_branch_is_refused(hub, demo_artifact):
    with pytest.raises(PublishError, match="pull request"):
        publish(demo_artifact, REPO, create_pr=True, revision="dev")
    assert hub.requests == []


def test_a_folder_that_lost_a_file_is_refused(hub, demo_artifact):
    next(demo_artifact.glob("*.gguf")).unlink()
    with pytest.raises(PublishError, match="missing"):
        publish(demo_artifact, REPO)
    assert hub.requests == []


@pytest.mark.slow
def test_oversize_gguf_is_split_before_upload(hub, demo_artifact, monkeypatch):
    monkeypatch.setattr(publish_module, "MAX_FILE_BYTES", 60_000_000)
    monkeypatch.setattr(publish_module, "SHARD_BYTES", 40_000_000)
    gguf = next(demo_artifact.glob("*.gguf"))
    original = json.loads((demo_artifact / "manifest.json").read_text())["files"][0]
    result = publish(demo_artifact, REPO)
    shards = [f"{gguf.stem}-0000{i}-of-00003.gguf" for i in (1, 2, 3)]
    assert result.splits == [{"file": gguf.name, "shards": shards}]
    assert not gguf.exists()
    manifest = json.loads((demo_artifact / "manifest.json").read_text())
    assert [f["name"] for f in manifest["files"]] == shards
    assert all(f["split_of"]["sha256"] == original["sha256"] for f in manifest["files"])
    _assert_arrived(hub, demo_artifact, [*shards, "manifest.json", "README.md", "Modelfile"])
    assert gguf.name not in hub.files(REPO)
    assert result.verified
    readme = (demo_artifact / "README.md").read_text()
    assert "all 3 shards" in readme and "llama-gguf-split --merge" in readme
    assert f"FROM ./{shards[0]}" in (demo_artifact / "Modelfile").read_text()


@pytest.mark.slow
def test_large_sets_go_through_upload_large_folder(hub, demo_artifact, monkeypatch):
    monkeypatch.setattr(publish_module, "LARGE_UPLOAD_BYTES", 0)
    result = publish(demo_artifact, REPO)
    assert result.method == "upload_large_folder" and result.verified
    names = [next(demo_artifact.glob("*.gguf")).name, "manifest.json", "README.md"]
    _assert_arrived(hub, demo_artifact, names)


def _cli(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "quantkit", *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )


@pytest.mark.slow
def test_cli_upload_json_and_errors(hub, demo_artifact):
    env = dict(os.environ)  # the hub fixture set HF_ENDPOINT, HF_TOKEN, HF_HUB_DISABLE_XET
    done = _cli("upload", str(demo_artifact), "--repo", REPO, "--json", env=env)
    assert done.returncode == 0, done.stderr
    payload = json.loads(done.stdout)
    assert payload["verified"] and payload["repo_id"] == REPO
    assert WRITE_TOKEN not in done.stdout + done.stderr
    _assert_arrived(hub, demo_artifact, ["README.md", "Modelfile"])
    env.pop("HF_TOKEN")
    refused = _cli("upload", str(demo_artifact), "--repo", REPO, env=env)
    assert refused.returncode == HubAuthError.exit_code
    assert "No Hugging Face token" in refused.stderr and "Traceback" not in refused.stderr


def test_an_mlx_folder_is_published_with_its_mlx_card(hub, tmp_path) -> None:
    """Nothing format-specific in publish: an MLX folder's weights, config, tokenizer and
    template files arrive byte for byte, with the MLX card."""
    pytest.importorskip("mlx_lm")
    import shutil

    from support.mlx import build_mlx_demo

    from quantkit.artifact.card_facts import parse_front_matter
    from quantkit.demo.build import ensure_demo_model

    cache = Path(os.environ.get("QUANTKIT_TEST_CACHE", Path(__file__).parents[2] / ".cache"
                                / "test-fixtures"))  # fmt: skip
    built = build_mlx_demo(cache, ensure_demo_model(cache / "demo"))
    folder = tmp_path / "mlx"
    shutil.copytree(built, folder)
    repo = "alice/demo-4bit-mlx"
    result = publish(folder, repo)
    assert result.verified
    names = ["model.safetensors", "config.json", "tokenizer.json", "chat_template.jinja",
             "model.safetensors.index.json", "manifest.json", "README.md"]  # fmt: skip
    stored = hub.files(repo)
    for name in names:
        assert hub.file_bytes(repo, name) == (folder / name).read_bytes(), name
    assert "additional_chat_templates/tool_use.jinja" in stored
    meta = parse_front_matter((folder / "README.md").read_text())
    assert meta["library_name"] == "mlx" and "mlx" in meta["tags"]
