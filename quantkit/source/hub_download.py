"""A Hub repo into the Hugging Face cache; a download that stops resumes on the next run.

huggingface_hub (1.x) retries a dropped connection a few times within one run, asking
for the rest with an HTTP Range request; but when it gives up it deletes the partial
file (its temporary name is unique to the process, Xet downloads included), so the next
run starts that file again from byte 0. For a 5 GB shard on a flaky link that can mean
never finishing.

So the weight files (the repo's LFS files: safetensors shards, pickled weights) are
fetched here, into `<cache>/models--OWNER--NAME/blobs/<sha256>.incomplete`, appended to
from where the last run stopped, and moved to `blobs/<sha256>` when complete. That is the
name huggingface_hub gives an LFS blob (the Hub's ETag for an LFS file is its sha256), so
`snapshot_download` then finds them, links them into the snapshot and fetches only the
small files itself: the cache layout stays huggingface_hub's. Weights come over HTTP from
the resolve URL even where Xet is available, because a plain Range request can resume.

Every failure reaches the user as one QuantkitError line that says what to do.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import logging
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from ..errors import DiskSpaceError, QuantkitError, SourceModelError

log = logging.getLogger(__name__)

PARTIAL_SUFFIX = ".incomplete"  # huggingface_hub 0.x's name for a resumable partial blob


def download_snapshot(repo_id: str, revision: str | None, patterns: list[str]) -> Path:
    """The snapshot folder of `repo_id` at `revision` holding the files that match
    `patterns`, downloaded into the Hugging Face cache where they are not there yet."""
    from huggingface_hub import constants, snapshot_download

    with _download_errors(repo_id, revision), _quiet_retry_warnings():
        if not constants.HF_HUB_OFFLINE:
            fetch_weights(repo_id, revision, patterns)
        return Path(snapshot_download(repo_id, revision=revision, allow_patterns=patterns))


def cache_folder(repo_id: str) -> Path:
    """Where huggingface_hub keeps `repo_id` (blobs, snapshots, refs)."""
    from huggingface_hub import constants
    from huggingface_hub.file_download import repo_folder_name

    cache = Path(constants.HF_HUB_CACHE).expanduser().resolve()
    return cache / repo_folder_name(repo_id=repo_id, repo_type="model")


def fetch_weights(repo_id: str, revision: str | None, patterns: list[str]) -> None:
    """Every LFS file of the repo that matches `patterns`, as a complete blob in the cache."""
    from huggingface_hub.file_download import hf_hub_url

    listed = _lfs_files(repo_id, revision, patterns)
    if listed is None:
        return
    commit, files = listed
    for file in files:
        url = hf_hub_url(repo_id, file.path, revision=commit)
        _fetch_blob(url, cache_folder(repo_id), file.lfs.sha256, file.lfs.size, file.path)


@dataclass(frozen=True)
class RemoteShard:
    """A safetensors file of a Hub repo, known from its listing and its header alone."""

    path: str
    size: int
    sha256: str
    header: bytes  # the header's JSON bytes, read with two HTTP Range requests


def remote_shards(repo_id: str, revision: str | None) -> tuple[str, list[RemoteShard]] | None:
    """(commit, every *.safetensors file of the repo with its header), read without
    downloading any weight; None when the Hub cannot be asked (offline, say)."""
    from huggingface_hub.file_download import hf_hub_url

    from ..formats.safetensors_index import read_raw_header

    with _download_errors(repo_id, revision), _quiet_retry_warnings():
        listed = _lfs_files(repo_id, revision, ["*.safetensors"])
        if listed is None:
            return None
        commit, files = listed
        shards = []
        for file in files:
            url = hf_hub_url(repo_id, file.path, revision=commit)
            label = f"{repo_id}/{file.path}"
            raw = read_raw_header(lambda start, n, url=url: _read_range(url, start, n),
                                  label, file.lfs.size)  # fmt: skip
            shards.append(RemoteShard(file.path, file.lfs.size, file.lfs.sha256, raw))
    return commit, shards


def _read_range(url: str, start: int, length: int) -> bytes:
    """`length` bytes of the file at `url` from `start` (the Hub redirects LFS files to
    its storage, which honours Range)."""
    from huggingface_hub.utils import build_hf_headers, get_session, hf_raise_for_status

    if length == 0:
        return b""
    headers = {**build_hf_headers(), "Range": f"bytes={start}-{start + length - 1}"}
    response = get_session().get(url, headers=headers, follow_redirects=True)
    hf_raise_for_status(response)
    body = response.content
    # A server that ignores Range sends the whole file (200): keep the asked-for part.
    return body[start : start + length] if response.status_code == 200 else body[:length]


def missing_bytes(repo_id: str, shards: list[RemoteShard]) -> int:
    """What downloading `shards` still has to fetch: the files whose blob is not complete
    in the Hugging Face cache (a partial blob resumes, but is counted whole)."""
    blobs = cache_folder(repo_id) / "blobs"
    return sum(s.size for s in shards if not (blobs / s.sha256).is_file())


def _lfs_files(repo_id: str, revision: str | None, patterns: list[str]):
    """(commit, the LFS files matching `patterns`), or None when the Hub cannot be asked:
    snapshot_download then meets the same problem and says which (no such repo, no such
    revision, offline), or serves a snapshot already in the cache."""
    import httpx
    from huggingface_hub import HfApi
    from huggingface_hub.errors import HfHubHTTPError, OfflineModeIsEnabled
    from huggingface_hub.hf_api import RepoFile
    from huggingface_hub.utils import filter_repo_objects

    api = HfApi()
    try:
        commit = api.repo_info(repo_id, revision=revision).sha
        tree = list(api.list_repo_tree(repo_id, revision=commit, recursive=True))
    except (HfHubHTTPError, httpx.TransportError, OfflineModeIsEnabled):
        return None
    lfs = [f for f in tree if isinstance(f, RepoFile) and f.lfs is not None]
    return commit, list(filter_repo_objects(lfs, allow_patterns=patterns, key=lambda f: f.path))


def _fetch_blob(url: str, storage: Path, sha256: str, size: int, name: str) -> None:
    from huggingface_hub.utils import WeakFileLock

    blob = storage / "blobs" / sha256
    if blob.exists():
        return
    blob.parent.mkdir(parents=True, exist_ok=True)
    # huggingface_hub's own lock for this blob: a concurrent hf_hub_download waits for us.
    locks = storage.parent / ".locks" / storage.name
    locks.mkdir(parents=True, exist_ok=True)
    partial = blob.with_name(sha256 + PARTIAL_SUFFIX)
    with WeakFileLock(locks / f"{sha256}.lock"):
        if blob.exists():  # another process finished it while we waited
            return
        if _append_rest(url, partial, size, name):
            _check_resumed(partial, sha256, name)
        partial.replace(blob)


def _append_rest(url: str, partial: Path, size: int, name: str) -> int:
    """Download what `partial` lacks of the file at `url`; returns where it started."""
    from huggingface_hub.file_download import http_get
    from huggingface_hub.utils import build_hf_headers

    with partial.open("ab") as fh:
        done = fh.tell()
        if done > size:  # not a prefix of this file: start over
            fh.truncate(0)
            done = 0
        if done:
            log.info("resuming %s at byte %d of %d", name, done, size)
        http_get(
            url, fh, resume_size=done, headers=build_hf_headers(), expected_size=size,
            displayed_filename=name,
        )  # fmt: skip
    return done


def _check_resumed(partial: Path, sha256: str, name: str) -> None:
    """A file put together from two runs is checked against the Hub's sha256: the first
    run's bytes may not have reached the disk whole (a crash, a power cut)."""
    with partial.open("rb") as fh:
        digest = hashlib.file_digest(fh, "sha256").hexdigest()
    if digest != sha256:
        partial.unlink()
        raise SourceModelError(
            f"{name} resumed from an earlier download does not match the Hub's sha256; "
            "the damaged partial file was removed.",
            hint="Run the same command again to download that file afresh.",
        )


@contextlib.contextmanager
def _quiet_retry_warnings() -> Iterator[None]:
    """huggingface_hub logs each retry within a run as a two-line warning with the URL; if
    the retries fail quantkit says what happened in one line, so they show only with -v."""
    hub_log = logging.getLogger("huggingface_hub.file_download")
    if log.isEnabledFor(logging.INFO):
        yield
        return
    level = hub_log.level
    hub_log.setLevel(logging.ERROR)
    try:
        yield
    finally:
        hub_log.setLevel(level)


# --- errors -------------------------------------------------------------------------------


@contextlib.contextmanager
def _download_errors(repo_id: str, revision: str | None) -> Iterator[None]:
    """huggingface_hub's and httpx's exceptions as one-line errors that say what to do.
    Order matters: the Hub's classes derive from OSError and from each other."""
    import httpx
    from huggingface_hub.errors import (
        HfHubHTTPError,
        LocalEntryNotFoundError,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    try:
        yield
    except RepositoryNotFoundError as exc:
        raise SourceModelError(
            f"The Hub has no repo {repo_id!r} (or it is gated and you are not logged in).",
            hint="Check the id, or run `hf auth login` / set HF_TOKEN.",
        ) from exc
    except RevisionNotFoundError as exc:
        raise SourceModelError(
            f"The Hub repo {repo_id} has no revision {revision!r}.",
            hint="Pass an existing branch, tag or full commit id with --revision.",
        ) from exc
    except LocalEntryNotFoundError as exc:
        raise SourceModelError(
            f"{repo_id} is not in the local Hugging Face cache and the Hub cannot be reached.",
            hint="Connect to the network, or download the model on another machine and pass "
            "its folder.",
        ) from exc
    except HfHubHTTPError as exc:
        if not _transient(exc):
            raise SourceModelError(f"Download of {repo_id} failed: {_line(exc)}.") from exc
        raise _stopped(repo_id, exc) from exc
    except httpx.TransportError as exc:  # the connection dropped, timed out, was refused
        raise _stopped(repo_id, exc) from exc
    except OSError as exc:
        raise _os_error(repo_id, exc) from exc


def _transient(exc: Exception) -> bool:
    """The Hub was down or busy (5xx, 408, 429): trying again later can succeed."""
    status = getattr(getattr(exc, "response", None), "status_code", None)
    return status is not None and (status >= 500 or status in (408, 429))


def _stopped(repo_id: str, exc: BaseException) -> SourceModelError:
    return SourceModelError(
        f"The download of {repo_id} stopped: {_line(exc)}.",
        hint="Run the same command again: the download resumes where it stopped (partial "
        f"files are kept in the Hugging Face cache, {cache_folder(repo_id)}).",
    )


def _os_error(repo_id: str, exc: OSError) -> QuantkitError:
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return DiskSpaceError(
            f"The disk of the Hugging Face cache ({cache_folder(repo_id)}) is full; the "
            f"download of {repo_id} stopped.",
            hint="Free space there (or point HF_HOME at a bigger disk) and run the same "
            "command again: the download resumes where it stopped.",
        )
    if exc.errno is None:  # huggingface_hub's own size check: a file that arrived short
        return _stopped(repo_id, exc)
    return SourceModelError(
        f"Writing the download of {repo_id} into the Hugging Face cache failed: {_line(exc)}.",
        hint=f"Make {cache_folder(repo_id)} writable, or point HF_HOME at another folder.",
    )


def _line(exc: BaseException) -> str:
    """An exception in one line: its message's first line, else its class name."""
    lines = str(exc).strip().splitlines()
    return lines[0].rstrip(".") if lines else type(exc).__name__
