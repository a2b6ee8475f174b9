"""`quantkit upload`: publish an artifact folder to the Hugging Face Hub, then prove that
what is on the Hub is what the manifest says.

The order is chosen so that nothing is sent before it can succeed: the folder is checked
against its manifest, the token is found and asked whether it may write to the namespace
(a missing, invalid or read-only token stops here), oversize GGUFs are split in llama.cpp's
split format, the model card is written, and only then does huggingface_hub create the repo
and transfer the files (upload_folder; upload_large_folder for very large sets on the
classic LFS path, where it is the resumable one). Afterwards the repo tree is listed and
every file's size and sha256 (the LFS oid; the git blob id for small files) is compared with
the manifest; a difference is an error.

The token comes from `token=`, HF_TOKEN or the stored login. It is handed to the client and
nowhere else: never printed, logged or written into a file.
"""

from __future__ import annotations

import glob
import hashlib
import logging
import re
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..disk.atomic import PARTIAL_SUFFIX
from ..errors import PublishError, UploadVerificationError
from ..formats.gguf_split import DEFAULT_SHARD_BYTES, HUB_MAX_FILE_BYTES
from .access import check_write_access, find_token_source, resolve_token
from .errors import hub_errors, retrying

log = logging.getLogger(__name__)

MAX_FILE_BYTES = HUB_MAX_FILE_BYTES  # GGUFs above this are split before upload
SHARD_BYTES = DEFAULT_SHARD_BYTES
LARGE_UPLOAD_BYTES = 50 * 10**9  # above this, on the LFS path, upload_large_folder
_REPO_ID = re.compile(r"^[A-Za-z0-9][\w.-]{0,95}/[A-Za-z0-9][\w.-]{0,95}$")
_WEIGHTS = (".gguf", ".safetensors")
_CARD_FILES = ("manifest.json", "README.md", "Modelfile")


@dataclass(frozen=True)
class PublishResult:
    repo_id: str
    revision: str  # the branch, or refs/pr/N, that holds the files
    files: list[dict[str, Any]]  # name, bytes, sha256 (None until known), lfs
    splits: list[dict[str, Any]] = field(default_factory=list)  # {"file", "shards"}
    card: str | None = None
    modelfile: str | None = None
    notes: list[str] = field(default_factory=list)
    dry_run: bool = False
    method: str | None = None  # upload_folder / upload_large_folder
    repo_url: str | None = None
    commit_url: str | None = None
    pr_url: str | None = None
    verified: bool = False
    token_source: str | None = None  # where the token was found; never the token

    def to_dict(self) -> dict[str, Any]:
        return {k: getattr(self, k) for k in self.__dataclass_fields__}


def publish(
    artifact_dir: str | Path,
    repo_id: str,
    *,
    private: bool = False,
    revision: str | None = None,
    create_pr: bool = False,
    dry_run: bool = False,
    token: str | None = None,
    base_model: str | None = None,
) -> PublishResult:
    """Upload `artifact_dir` to the model repo `repo_id` with a generated model card."""
    from ..artifact.manifest import read_manifest

    folder = Path(artifact_dir).expanduser()
    _check_arguments(folder, repo_id, revision, create_pr)
    manifest = read_manifest(folder)
    _check_files_against_manifest(folder, manifest)
    token_source = find_token_source(token)
    if not dry_run:
        token = resolve_token(token)
        check_write_access(token, repo_id)
    oversize = [
        f["name"]
        for f in manifest["files"]
        if f["name"].endswith(".gguf") and f["bytes"] > MAX_FILE_BYTES
    ]
    if dry_run:
        hub_files, splits = _planned_split(folder, manifest, oversize)
    else:
        manifest, splits = _split_oversize(folder, manifest, oversize)
        hub_files = manifest["files"]
    from ..artifact.card import write_model_card

    card = write_model_card(folder, repo_id, base_model=base_model, files=hub_files)
    notes = list(card.notes)
    upload = _upload_set(folder, hub_files, exclude={s["file"] for s in splits}, notes=notes)
    result = dict(
        repo_id=repo_id,
        revision=revision or "main",
        files=upload,
        splits=splits,
        card=str(card.readme) if card.readme else None,
        modelfile=str(card.modelfile) if card.modelfile else None,
        notes=notes,
        token_source=token_source,
    )
    if dry_run:
        return PublishResult(**result, dry_run=True, method=_method(upload, create_pr))
    return _upload_and_verify(
        folder, manifest, upload, result, token=token, private=private, create_pr=create_pr
    )


# --- before anything is sent -------------------------------------------------------------


def check_push_access(repo_id: str, token: str | None = None) -> None:
    """Refuse a push that would fail (bad id, no token, no write access) before a long
    conversion starts rather than after it."""
    _check_repo_id(repo_id)
    check_write_access(resolve_token(token), repo_id)


def _check_repo_id(repo_id: str) -> None:
    if not _REPO_ID.match(repo_id or ""):
        raise PublishError(
            f"{repo_id!r} is not a Hub repo id.", hint="Use OWNER/NAME, e.g. alice/model-GGUF."
        )


def _check_arguments(folder: Path, repo_id: str, revision: str | None, create_pr: bool) -> None:
    _check_repo_id(repo_id)
    if not (folder / "manifest.json").is_file():
        raise PublishError(
            f"{folder} is not a quantkit artifact folder (it has no manifest.json).",
            hint="Pass the --out folder of `quantkit convert`.",
        )
    if create_pr and revision and revision != "main":
        raise PublishError(
            "A pull request is opened against the default branch; --create-pr cannot take "
            f"--revision {revision}.",
            hint="Drop --revision, or pass --revision refs/pr/N to add to an open PR.",
        )


def _check_files_against_manifest(folder: Path, manifest: dict[str, Any]) -> None:
    problems = []
    for f in manifest.get("files", []):
        path = folder / f["name"]
        if not path.is_file():
            problems.append(f"{f['name']} is missing")
        elif path.stat().st_size != f["bytes"]:
            problems.append(f"{f['name']} has {path.stat().st_size} bytes, manifest {f['bytes']}")
    if problems:
        raise PublishError(
            "The artifact folder does not match its manifest: " + "; ".join(problems) + ".",
            hint="Upload the folder `quantkit convert` wrote, unchanged.",
        )


# --- splitting and the file set ---------------------------------------------------------------


def _planned_split(folder: Path, manifest: dict[str, Any], oversize: list[str]):
    from ..formats.gguf_split import plan_split

    files, splits = [], []
    for f in manifest["files"]:
        if f["name"] not in oversize:
            files.append(f)
            continue
        plans = plan_split(folder / f["name"], SHARD_BYTES, folder)
        splits.append({"file": f["name"], "shards": [p.path.name for p in plans]})
        files += [_shard_entry(f, p.path.name, p.bytes, None, p.tensor_types) for p in plans]
    return files, splits


def _split_oversize(folder: Path, manifest: dict[str, Any], oversize: list[str]):
    """Split each oversize GGUF into shards beside it, record the shards in manifest.json
    and remove the unsplit file (only after the shards and the manifest are written)."""
    if not oversize:
        return manifest, []
    from ..artifact.manifest import sha256_file, write_manifest
    from ..formats.gguf_split import plan_split, split_gguf

    files, splits = [], []
    for f in manifest["files"]:
        if f["name"] not in oversize:
            files.append(f)
            continue
        log.info("splitting %s into shards of at most %d bytes", f["name"], SHARD_BYTES)
        plans = plan_split(folder / f["name"], SHARD_BYTES, folder)
        shards = split_gguf(folder / f["name"], SHARD_BYTES, folder)
        for plan, shard in zip(plans, shards, strict=True):
            entry = _shard_entry(f, shard.name, shard.stat().st_size, sha256_file(shard), None)
            entry["tensor_types"] = plan.tensor_types
            files.append(entry)
        splits.append({"file": f["name"], "shards": [s.name for s in shards]})
    manifest = {**manifest, "files": files}
    write_manifest(folder, manifest)  # atomic: the old manifest or the new one, never half
    for split in splits:
        (folder / split["file"]).unlink()
    return manifest, splits


def _shard_entry(original: dict, name: str, size: int, sha: str | None, types) -> dict:
    entry = {k: v for k, v in original.items() if k not in ("name", "bytes", "sha256")}
    entry.update(name=name, bytes=size, sha256=sha)
    if types is not None:
        entry["tensor_types"] = types
    entry["split_of"] = {
        "name": original["name"],
        "bytes": original["bytes"],
        "sha256": original["sha256"],
    }
    return entry


def _upload_set(
    folder: Path, hub_files: list[dict[str, Any]], *, exclude: set[str], notes: list[str]
) -> list[dict[str, Any]]:
    """The manifest's files, the card files, and any other plain file of the folder that
    is not weights (a safetensors artifact's config and tokenizer files); hidden paths,
    work files and weights the manifest does not list stay home."""
    listed = {f["name"]: f for f in hub_files}
    items = [{"name": f["name"], "bytes": f["bytes"], "sha256": f.get("sha256")} for f in hub_files]
    for path in sorted(folder.rglob("*")):
        name = path.relative_to(folder).as_posix()
        if not path.is_file() or name in listed or name in exclude:
            continue
        if any(part.startswith(".") for part in Path(name).parts) or PARTIAL_SUFFIX in name:
            continue
        if name.endswith(_WEIGHTS):
            notes.append(f"{name} is not in the manifest: not uploaded")
            continue
        items.append({"name": name, "bytes": path.stat().st_size, "sha256": None})
    return items


def _method(upload: list[dict[str, Any]], create_pr: bool) -> str:
    from huggingface_hub.utils._runtime import is_xet_available

    total = sum(f["bytes"] for f in upload)
    if total > LARGE_UPLOAD_BYTES and not create_pr and not is_xet_available():
        return "upload_large_folder"
    return "upload_folder"


# --- the transfer ------------------------------------------------------------------------------


def _upload_and_verify(
    folder: Path,
    manifest: dict[str, Any],
    upload: list[dict[str, Any]],
    result: dict[str, Any],
    *,
    token: str,
    private: bool,
    create_pr: bool,
) -> PublishResult:
    from huggingface_hub import HfApi

    api = HfApi(token=token)
    repo_id, revision = result["repo_id"], result["revision"]
    method = _method(upload, create_pr)
    with hub_errors(repo_id, stage="creating the repo"):
        repo_url = retrying(
            lambda: api.create_repo(repo_id, private=private, exist_ok=True, repo_type="model")
        )
        if revision != "main" and not revision.startswith("refs/pr/"):
            retrying(lambda: api.create_branch(repo_id, branch=revision, exist_ok=True))
    source, target = manifest["source"], manifest["target"]
    message = f"quantkit: {target['quant']} {target['format']} of {source.get('name')}"
    patterns = [glob.escape(f["name"]) for f in upload]

    def transfer():
        if method == "upload_large_folder":
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", FutureWarning)  # deprecated, still the
                api.upload_large_folder(  # resumable path without hf_xet
                    repo_id=repo_id,
                    folder_path=folder,
                    repo_type="model",
                    revision=revision,
                    allow_patterns=patterns,
                    print_report=False,
                )
            return None
        return api.upload_folder(
            repo_id=repo_id,
            folder_path=folder,
            commit_message=message,
            commit_description="Uploaded by `quantkit upload`; manifest.json lists every file.",
            revision=None if create_pr else revision,
            create_pr=create_pr,
            allow_patterns=patterns,
        )

    with hub_errors(repo_id, stage="uploading"):
        commit = retrying(transfer)
    where = commit.pr_revision if commit is not None and commit.pr_revision else revision
    with hub_errors(repo_id, stage="verifying the upload"):
        mismatches, upload = _verify(api, repo_id, where, folder, upload)
    if mismatches:
        raise UploadVerificationError(
            f"The files on the Hub ({repo_id}@{where}) differ from the manifest: "
            + "; ".join(mismatches)
            + ".",
            hint="Run the upload again; if it persists, check the local files with their "
            "sha256 in manifest.json.",
        )
    return PublishResult(
        **{**result, "files": upload, "revision": where},
        method=method,
        repo_url=str(repo_url),
        commit_url=commit.commit_url if commit is not None else None,
        pr_url=commit.pr_url if commit is not None else None,
        verified=True,
    )


def _verify(api, repo_id: str, revision: str, folder: Path, upload: list[dict[str, Any]]):
    """Compare the repo tree with what was meant to arrive: sizes always; the sha256 (LFS
    oid) of LFS files with the manifest's (or the local file's); the git blob id of small
    files with the local file's."""
    from huggingface_hub.hf_api import RepoFile

    remote = {
        entry.path: entry
        for entry in api.list_repo_tree(repo_id, revision=revision, recursive=True)
        if isinstance(entry, RepoFile)
    }
    problems, checked = [], []
    for item in upload:
        name, path = item["name"], folder / item["name"]
        entry = remote.get(name)
        if entry is None:
            problems.append(f"{name} is missing")
            continue
        if entry.size != item["bytes"]:
            problems.append(f"{name}: {entry.size} bytes on the Hub, {item['bytes']} expected")
            continue
        expected = item["sha256"]
        if entry.lfs is not None:
            expected = expected or _sha256(path)
            if entry.lfs.sha256 != expected:
                problems.append(
                    f"{name}: sha256 {entry.lfs.sha256} on the Hub, {expected} expected"
                )
        else:
            local_sha = _sha256(path)
            if expected and local_sha != expected:
                problems.append(f"{name}: the local file's sha256 differs from the manifest")
            if entry.blob_id != _git_blob_id(path):
                problems.append(f"{name}: git blob {entry.blob_id} differs from the local file")
            expected = local_sha
        checked.append({**item, "sha256": expected, "lfs": entry.lfs is not None})
    return problems, checked


def _sha256(path: Path) -> str:
    from ..artifact.manifest import sha256_file

    return sha256_file(path)


def _git_blob_id(path: Path) -> str:
    data = path.read_bytes()  # only small (non-LFS) files come here
    return hashlib.sha1(b"blob %d\0" % len(data) + data, usedforsecurity=False).hexdigest()
