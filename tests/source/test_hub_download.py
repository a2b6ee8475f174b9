"""A Hub repo id downloads from a local Hub (support/hub_server.py) with the real
huggingface_hub client: the demo model arrives and loads; a download cut mid-file fails
in one line, leaves nothing at --out, and the next run asks only for the missing bytes;
a partial file that is not a prefix of the Hub's is caught; a Hub error, a full disk, a
missing repo or revision each say what to do in one line."""

from __future__ import annotations

import errno
import hashlib
import os
import re
from pathlib import Path

import pytest
from support.cli_runner import run_cli
from support.hub_server import is_closed_range

from quantkit.errors import DiskSpaceError, SourceModelError
from quantkit.source.model import content_hash, load_source

REPO = "owner/demo-chat"
WEIGHTS = "model.safetensors"
WEIGHTS_URL = rf"/{REPO}/resolve/[^/]+/{re.escape(WEIGHTS)}$"
CUT = 100_000_000  # bytes of the weights sent before the connection drops (of 269 MB)
# What quantkit asks for: config, README (none here), safetensors, tokenizer, templates.
NEEDED = {
    "additional_chat_templates/tool_use.jinja",
    "chat_template.jinja",
    "config.json",
    "generation_config.json",
    WEIGHTS,
    "tokenizer.json",
    "tokenizer_config.json",
}


@pytest.fixture(scope="module")
def demo_files(demo_model: Path) -> dict[str, bytes]:
    files = sorted(p for p in demo_model.rglob("*") if p.is_file())
    return {p.relative_to(demo_model).as_posix(): p.read_bytes() for p in files}


@pytest.fixture
def hub_repo(hub, demo_files, monkeypatch: pytest.MonkeyPatch) -> str:
    """The demo model on the local Hub as REPO (its commit id is returned), and the
    Hugging Face cache in this test's HF_HOME, for this process and the CLI's."""
    from huggingface_hub import constants

    cache = Path(os.environ["HF_HOME"]) / "hub"
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
    return hub.seed_repo(REPO, demo_files)


def _weights_gets(hub) -> list:
    """The downloads of the weights (a convert reads the header first: closed ranges)."""
    return [
        r for r in hub.requests
        if r.method == "GET" and re.search(WEIGHTS_URL, r.path)
        and not is_closed_range(r.headers.get("range"))
    ]  # fmt: skip


def _header_reads(hub) -> list:
    return [
        r.headers["range"] for r in hub.requests
        if r.method == "GET" and re.search(WEIGHTS_URL, r.path)
        and is_closed_range(r.headers.get("range"))
    ]  # fmt: skip


def _blobs() -> Path:
    return Path(os.environ["HF_HUB_CACHE"]) / f"models--{REPO.replace('/', '--')}" / "blobs"


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def test_repo_id_downloads_from_the_hub_and_loads(hub, hub_repo, demo_model, demo_files):
    source = load_source(REPO)
    assert (source.repo_id, source.revision, source.name) == (REPO, hub_repo, "demo-chat")
    assert source.tokenizer is not None and "tool_use" in source.tokenizer.chat_templates
    local = load_source(demo_model)
    assert (source.config, source.tensors) == (local.config, local.tensors)
    assert source.content_hash == content_hash(demo_model)  # config, tokenizer, headers
    assert _sha256((source.path / WEIGHTS).read_bytes()) == _sha256(demo_files[WEIGHTS])
    # only the files quantkit reads, each fetched once (the weights by quantkit, with no
    # second copy by snapshot_download)
    fetched = [
        r.path.split("/resolve/", 1)[1].split("/", 1)[1]
        for r in hub.requests
        if r.method == "GET" and "/resolve/" in r.path
    ]
    assert sorted(fetched) == sorted(NEEDED)
    assert [r.headers.get("range") for r in _weights_gets(hub)] == [None]


def test_a_dry_run_reads_the_headers_and_downloads_no_weight(
    hub, hub_repo, demo_model, demo_files, tmp_path: Path
):
    """convert plans, sizes and checks a Hub model from its files' headers (two Range
    requests per shard): a dry run fetches no weight, and knows every tensor."""
    import quantkit

    out = tmp_path / "out"
    result = quantkit.convert(REPO, out=out, format="gguf", quant="Q8_0", dry_run=True)
    assert result.download_bytes == len(demo_files[WEIGHTS])
    assert _weights_gets(hub) == []  # no download
    header_len = int.from_bytes(demo_files[WEIGHTS][:8], "little")
    assert _header_reads(hub) == ["bytes=0-7", f"bytes=8-{8 + header_len - 1}"]
    assert not (_blobs() / _sha256(demo_files[WEIGHTS])).exists() and not out.exists()
    local = load_source(demo_model)
    assert result.source.tensors == local.tensors
    assert result.source.content_hash == content_hash(demo_model)
    assert result.source.download is not None and not result.source.weights_here

    shown = run_cli("convert", REPO, "--format", "gguf", "--quant", "Q8_0", "--out", out,
                    "--dry-run")  # fmt: skip
    assert shown.returncode == 0, shown.stderr
    assert "after downloading 0.27 GB of weights (none downloaded yet)" in shown.stdout
    assert _weights_gets(hub) == []


def test_no_room_for_the_weights_is_refused_before_the_download(
    hub, hub_repo, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    import shutil

    import quantkit
    from quantkit.artifact import output_dir

    real = shutil.disk_usage

    def cache_nearly_full(path):
        usage = real(path)
        hf_cache, asked = Path(os.environ["HF_HUB_CACHE"]).resolve(), Path(path).resolve()
        inside = asked == hf_cache or hf_cache in asked.parents
        return usage._replace(free=100_000_000) if inside else usage

    monkeypatch.setattr(output_dir.shutil, "disk_usage", cache_nearly_full)
    with pytest.raises(DiskSpaceError, match=r"The Hugging Face cache \(.*\) has 0.10 GB free"):
        quantkit.convert(REPO, out=tmp_path / "out", format="gguf", quant="Q8_0",
                         verify=False, evaluation=quantkit.EvalOptions(enabled=False))  # fmt: skip
    assert _weights_gets(hub) == []


@pytest.mark.slow  # huggingface_hub waits 1 s before each of its 5 retries
def test_a_cut_download_fails_in_one_line_and_the_rerun_resumes(
    hub, hub_repo, demo_files, tmp_path: Path
):
    weights = demo_files[WEIGHTS]
    hub.add_fault("GET", WEIGHTS_URL, f"truncate:{CUT}", closed_ranges=False)
    # and the network stays down (for the download: the header was read before it)
    hub.add_fault("GET", WEIGHTS_URL, "close", times=1000, closed_ranges=False)
    out = tmp_path / "out"
    command = ("convert", REPO, "--format", "gguf", "--quant", "Q8_0", "--out", out)
    failed = run_cli(*command, "--no-verify")

    assert failed.returncode == 3, failed.stderr
    lines = failed.stderr.strip().splitlines()
    assert len(lines) == 1, failed.stderr
    assert lines[0].startswith(f"error: The download of {REPO} stopped: ")
    assert "Run the same command again: the download resumes where it stopped" in lines[0]
    assert "Traceback" not in failed.stdout + failed.stderr
    assert not out.exists() and not out.with_name("out.partial").exists()
    # what arrived before the cut is kept, as a prefix of the file
    assert _weights_gets(hub)[0].sent_bytes == CUT
    partial = _blobs() / f"{_sha256(weights)}.incomplete"
    kept = partial.stat().st_size
    assert 0 < kept <= CUT and partial.read_bytes() == weights[:kept]

    with hub.lock:  # the network is back
        hub.faults.clear()
        hub.requests.clear()
    rerun = run_cli(*command, "--no-verify")

    assert rerun.returncode == 0, rerun.stderr
    resumed = _weights_gets(hub)
    assert [(r.headers.get("range"), r.status) for r in resumed] == [(f"bytes={kept}-", 206)]
    assert resumed[0].sent_bytes == len(weights) - kept  # only the rest came over the wire
    blob = _blobs() / _sha256(weights)
    assert _sha256(blob.read_bytes()) == _sha256(weights) and not partial.exists()
    assert (out / "manifest.json").is_file()


def test_a_partial_file_that_does_not_match_is_removed_and_fetched_afresh(
    hub, hub_repo, demo_files
):
    weights = demo_files[WEIGHTS]
    blobs = _blobs()
    blobs.mkdir(parents=True)
    partial = blobs / f"{_sha256(weights)}.incomplete"
    partial.write_bytes(b"\0" * 4096)  # its bytes never reached the disk (a power cut)

    with pytest.raises(SourceModelError, match="does not match the Hub's sha256") as err:
        load_source(REPO)
    assert "Run the same command again" in str(err.value) and "\n" not in str(err.value)
    assert not partial.exists()
    assert [r.headers.get("range") for r in _weights_gets(hub)] == ["bytes=4096-"]

    source = load_source(REPO)
    assert [r.headers.get("range") for r in _weights_gets(hub)] == ["bytes=4096-", None]
    assert _sha256((source.path / WEIGHTS).read_bytes()) == _sha256(weights)


def test_a_server_error_mid_download_says_to_run_again(hub, hub_repo):
    hub.add_fault("GET", WEIGHTS_URL, "503")
    with pytest.raises(SourceModelError, match=f"The download of {REPO} stopped: ") as err:
        load_source(REPO)
    assert "Run the same command again" in str(err.value) and "\n" not in str(err.value)


def test_a_full_disk_stops_the_download_with_a_disk_error(hub, hub_repo, monkeypatch):
    import huggingface_hub.file_download as hf_download

    def no_space(url, temp_file, **kwargs):
        temp_file.write(b"\0" * 4096)
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(hf_download, "http_get", no_space)
    with pytest.raises(DiskSpaceError, match=r"Hugging Face cache \(.*\) is full") as err:
        load_source(REPO)
    assert "run the same command again" in str(err.value) and "\n" not in str(err.value)
    assert err.value.exit_code == 6


def test_a_missing_repo_and_a_missing_revision_keep_their_clear_errors(hub, hub_repo):
    with pytest.raises(SourceModelError, match="The Hub has no repo 'owner/missing'") as repo:
        load_source("owner/missing")
    with pytest.raises(SourceModelError, match=f"{REPO} has no revision 'v9'") as rev:
        load_source(REPO, revision="v9")
    assert "--revision" in str(rev.value)
    assert "\n" not in str(repo.value) + str(rev.value)
    assert not [r for r in hub.requests if "/resolve/" in r.path]  # nothing downloaded
