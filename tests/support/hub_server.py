"""A local stand-in for the Hugging Face Hub, for the real huggingface_hub client.

It implements the endpoints the client calls to publish a model (whoami, repo creation,
branch creation, README metadata validation, pre-upload, the git-LFS batch API with basic
and multipart transfers and verify, the NDJSON commit endpoint, repo info and the tree
listing) and to download one (repo info, the tree listing, and HEAD / GET on
/{repo}/resolve/{revision}/{path} with the headers hf_hub_download reads and HTTP Range
requests) closely enough that the client cannot tell, and it keeps what arrives so tests
can compare it byte for byte. Faults can be injected for the next N matching requests: an
HTTP status (500, 401, 403), a connection closed without an answer ("close"), or a file
body cut after N bytes ("truncate:N").

It listens on 127.0.0.1 only. Its accept loop is bounded (a request budget and a lifetime)
and stops by itself; idle keep-alive connections time out.
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
import secrets
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

LFS_SUFFIXES = (".gguf", ".safetensors", ".bin", ".pt")
REGULAR_MAX = 10 * 1024 * 1024
_GITATTRIBUTES = b"*.gguf filter=lfs diff=lfs merge=lfs -text\n"


@dataclass
class TokenInfo:
    user: str
    role: str = "write"  # write | read | fineGrained
    orgs: dict[str, str] = field(default_factory=dict)  # org -> roleInOrg
    scoped: list[dict[str, Any]] = field(default_factory=list)  # fine-grained grants


@dataclass(frozen=True)
class StoredFile:
    size: int
    sha256: str
    lfs: bool
    content: bytes | None = None  # regular files only; LFS bytes live in the object store

    @property
    def pointer(self) -> bytes:
        return (
            f"version https://git-lfs.github.com/spec/v1\noid sha256:{self.sha256}\n"
            f"size {self.size}\n"
        ).encode()

    @property
    def git_oid(self) -> str:
        data = self.pointer if self.lfs else (self.content or b"")
        return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


@dataclass
class Commit:
    id: str
    title: str
    parent: str | None
    files: dict[str, StoredFile]


@dataclass
class Repo:
    private: bool
    refs: dict[str, str] = field(default_factory=dict)
    commits: dict[str, Commit] = field(default_factory=dict)
    prs: int = 0


@dataclass
class Fault:
    method: str
    path: re.Pattern[str]
    action: str  # an HTTP status ("500", "401", "403"), "close" or "truncate:N"
    times: int = 1
    hits: int = 0
    # False: a request for a closed byte range (bytes=a-b, how a client reads a
    # safetensors header) passes untouched; downloads (no Range, or bytes=N-) are hit.
    closed_ranges: bool = True


@dataclass(frozen=True)
class Request:
    method: str
    path: str
    status: int | None  # None: connection closed without an answer
    user: str | None
    body_bytes: int
    headers: dict[str, str]  # lower-case names, e.g. "range" for a resumed download
    sent_bytes: int = 0  # body bytes the server wrote back (a cut download: fewer than asked)


class FakeHub:
    def __init__(
        self,
        tokens: dict[str, TokenInfo],
        *,
        multipart_above: int | None = None,
        chunk_size: int = 8 * 1024 * 1024,
        max_requests: int = 20_000,
        lifetime_s: float = 900.0,
    ) -> None:
        self.tokens = tokens
        self.multipart_above = multipart_above
        self.chunk_size = chunk_size
        self.max_requests = max_requests
        self.lifetime_s = lifetime_s
        self.lock = threading.RLock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.reset()

    # --- control ------------------------------------------------------------------------

    def reset(self) -> None:
        with self.lock:
            self.repos: dict[str, Repo] = {}
            self.objects: dict[str, bytes] = {}  # LFS store: sha256 -> bytes
            self.pending: dict[str, dict[str, Any]] = {}
            self.faults: list[Fault] = []
            self.requests: list[Request] = []
            self.validated: list[str] = []

    def start(self) -> None:
        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
        self.httpd.daemon_threads = True
        self.httpd.block_on_close = False
        self.httpd.timeout = 0.2
        self.httpd.hub = self  # type: ignore[attr-defined]
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self._thread = threading.Thread(target=self._serve, name="fake-hub", daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        deadline = time.monotonic() + self.lifetime_s
        while (
            not self._stop.is_set()
            and len(self.requests) < self.max_requests
            and time.monotonic() < deadline
        ):
            self.httpd.handle_request()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        self.httpd.server_close()

    def add_fault(
        self, method: str, path_regex: str, action: str, times: int = 1, *,
        closed_ranges: bool = True,
    ) -> Fault:  # fmt: skip
        fault = Fault(method, re.compile(path_regex), action, times, closed_ranges=closed_ranges)
        with self.lock:
            self.faults.append(fault)
        return fault

    # --- what arrived ---------------------------------------------------------------------

    def files(self, repo_id: str, revision: str = "main") -> dict[str, StoredFile]:
        repo = self.repos[repo_id]
        return repo.commits[repo.refs[revision]].files

    def file_bytes(self, repo_id: str, path: str, revision: str = "main") -> bytes:
        stored = self.files(repo_id, revision)[path]
        return self.objects[stored.sha256] if stored.lfs else (stored.content or b"")

    def seed_repo(self, repo_id: str, files: dict[str, bytes], *, private: bool = False) -> str:
        """A repo whose main branch holds `files` (path -> bytes), as if uploaded: weights
        and other binaries in the LFS store. Returns the commit id. Faster than an upload
        through the client, for tests about downloading."""
        with self.lock:
            repo = Repo(private=private)
            stored = {".gitattributes": StoredFile(len(_GITATTRIBUTES), "", False, _GITATTRIBUTES)}
            for path, data in files.items():
                sha = hashlib.sha256(data).hexdigest()
                if _is_lfs(path, data[:512], len(data)):
                    self.objects[sha] = data
                    stored[path] = StoredFile(len(data), sha, True)
                else:
                    stored[path] = StoredFile(len(data), sha, False, data)
            commit = self.new_commit(repo, None, "seed", stored)
            repo.refs["main"] = commit.id
            self.repos[repo_id] = repo
            return commit.id

    def replace_object(self, repo_id: str, path: str, data: bytes, revision: str = "main"):
        """Corrupt what the Hub holds (tests of the after-upload comparison)."""
        repo = self.repos[repo_id]
        commit = repo.commits[repo.refs[revision]]
        sha = hashlib.sha256(data).hexdigest()
        self.objects[sha] = data
        commit.files[path] = StoredFile(len(data), sha, True)

    # --- the state machine behind the endpoints ---------------------------------------------

    def new_commit(self, repo: Repo, parent: str | None, title: str, files) -> Commit:
        commit = Commit(secrets.token_hex(20), title, parent, files)
        repo.commits[commit.id] = commit
        return commit

    def resolve(self, repo: Repo, revision: str) -> Commit | None:
        if revision in repo.refs:
            return repo.commits[repo.refs[revision]]
        return repo.commits.get(revision)


def _is_lfs(path: str, sample: bytes, size: int) -> bool:
    """The Hub's rule for what goes to LFS: weights by name, binaries, big files."""
    return path.endswith(LFS_SUFFIXES) or b"\0" in sample or size > REGULAR_MAX


def is_closed_range(header: str | None) -> bool:
    """A Range of both ends (bytes=a-b): a header read, not a download or its resumption."""
    return bool(header) and re.fullmatch(r"bytes=\d+-\d+", header.strip()) is not None


def _byte_range(header: str | None, size: int) -> tuple[int, int] | None:
    """(first, last) of a "bytes=first-[last]" Range header, clipped to the file; None
    when there is no header, (size, size - 1) when the range starts past the end."""
    match = re.fullmatch(r"bytes=(\d+)-(\d*)", (header or "").strip())
    if match is None:
        return None
    first = int(match.group(1))
    last = min(int(match.group(2)), size - 1) if match.group(2) else size - 1
    return (first, last) if first < size and first <= last else (size, size - 1)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    timeout = 15  # idle keep-alive connections end by themselves

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
        return None

    def do_GET(self) -> None:  # noqa: N802
        self._dispatch("GET")

    def do_POST(self) -> None:  # noqa: N802
        self._dispatch("POST")

    def do_PUT(self) -> None:  # noqa: N802
        self._dispatch("PUT")

    def do_HEAD(self) -> None:  # noqa: N802
        self._dispatch("HEAD")

    # --- plumbing -------------------------------------------------------------------------

    @property
    def hub(self) -> FakeHub:
        return self.server.hub  # type: ignore[attr-defined]

    def _dispatch(self, method: str) -> None:
        parts = urlsplit(self.path)
        self.query = {k: v[-1] for k, v in parse_qs(parts.query).items()}
        self.body = self._read_body()
        self.status: int | None = None
        self.sent_bytes = 0
        self.cut_after: int | None = None  # a "truncate:N" fault: body bytes to send
        self.token_info = self._token_info()
        try:
            if not self._inject_fault(method, parts.path):
                self._route(method, parts.path)
        finally:
            with self.hub.lock:
                self.hub.requests.append(
                    Request(
                        method,
                        parts.path,
                        self.status,
                        self.token_info.user if self.token_info else None,
                        len(self.body),
                        {k.lower(): v for k, v in self.headers.items()},
                        self.sent_bytes,
                    )
                )

    def _read_body(self) -> bytes:
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            chunks = []
            while True:
                size = int(self.rfile.readline().split(b";")[0].strip() or b"0", 16)
                if size == 0:
                    self.rfile.readline()
                    return b"".join(chunks)
                chunks.append(self.rfile.read(size))
                self.rfile.readline()
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length else b""

    def _inject_fault(self, method: str, path: str) -> bool:
        with self.hub.lock:
            fault = next(
                (
                    f
                    for f in self.hub.faults
                    if f.method == method and f.path.search(path) and f.hits < f.times
                    and (f.closed_ranges or not is_closed_range(self.headers.get("Range")))
                ),
                None,
            )
            if fault is None:
                return False
            fault.hits += 1
        if fault.action.startswith("truncate:"):
            self.cut_after = int(fault.action.split(":", 1)[1])  # answered, body cut short
            return False
        if fault.action == "close":
            self.close_connection = True  # no answer: the client sees the connection drop
            return True
        self._error(int(fault.action), f"injected {fault.action}")
        return True

    def _token_info(self) -> TokenInfo | None:
        auth = self.headers.get("Authorization", "")
        if not auth.startswith("Bearer "):
            return None
        return self.hub.tokens.get(auth[len("Bearer ") :])

    def _send(self, status: int, payload: Any = None, headers: dict[str, str] | None = None):
        body = b"" if payload is None else json.dumps(payload).encode()
        self.status = status
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        for key, value in (headers or {}).items():
            self.send_header(key, value)
        self.end_headers()
        if self.command != "HEAD":  # a HEAD answer has the headers only, even an error's
            self.wfile.write(body)

    def _error(self, status: int, message: str, code: str | None = None) -> None:
        headers = {"X-Error-Message": message}
        if code:
            headers["X-Error-Code"] = code
        self._send(status, {"error": message}, headers)

    def _json(self) -> Any:
        return json.loads(self.body or b"{}")

    # --- auth ---------------------------------------------------------------------------

    def _may_write(self, namespace: str, repo_id: str | None = None) -> bool:
        """Answers 401/403 itself when the caller may not write; True when it may."""
        info = self.token_info
        if info is None:
            self._error(401, "Invalid credentials in Authorization header")
            return False
        if info.role == "read":
            self._error(403, "You don't have the rights to write with a read token")
            return False
        if info.role == "fineGrained":
            granted = any(
                (g.get("entity") or {}).get("name") in (namespace, repo_id)
                and "repo.write" in g.get("permissions", [])
                for g in info.scoped
            )
            if not granted:
                self._error(403, "This fine-grained token may not write here")
                return False
        if namespace != info.user and info.orgs.get(namespace) not in ("write", "admin"):
            self._error(403, f"You don't have the rights to create a repo under {namespace}")
            return False
        return True

    def _repo(self, namespace: str, name: str, *, write: bool = False) -> Repo | None:
        repo_id = f"{namespace}/{name}"
        if write and not self._may_write(namespace, repo_id):
            return None
        repo = self.hub.repos.get(repo_id)
        info = self.token_info
        visible = repo is not None and (
            not repo.private
            or (info is not None and (info.user == namespace or namespace in info.orgs))
        )
        if not visible:
            self._error(404, "Repository not found", "RepoNotFound")
            return None
        return repo

    # --- routes ---------------------------------------------------------------------------

    _ROUTES = (
        ("GET", r"/api/whoami-v2", "whoami"),
        ("POST", r"/api/repos/create", "create_repo"),
        ("POST", r"/api/validate-yaml", "validate_yaml"),
        ("GET", r"/api/models/([^/]+)/([^/]+)(?:/revision/([^/]+))?", "repo_info"),
        ("POST", r"/api/models/([^/]+)/([^/]+)/preupload/([^/]+)", "preupload"),
        ("POST", r"/api/models/([^/]+)/([^/]+)/commit/([^/]+)", "commit"),
        ("POST", r"/api/models/([^/]+)/([^/]+)/branch/([^/]+)", "branch"),
        ("GET", r"/api/models/([^/]+)/([^/]+)/tree/([^/]+)(?:/(.*))?", "tree"),
        ("HEAD", r"/([^/]+)/([^/]+)/resolve/([^/]+)/(.+)", "resolve"),
        ("GET", r"/([^/]+)/([^/]+)/resolve/([^/]+)/(.+)", "resolve"),
        ("POST", r"/([^/]+)/([^/]+)\.git/info/lfs/objects/batch", "lfs_batch"),
        ("PUT", r"/lfs-upload/([0-9a-f]{64})/([0-9a-f]+)", "lfs_put"),
        ("PUT", r"/lfs-upload/([0-9a-f]{64})/([0-9a-f]+)/part/(\d+)", "lfs_put_part"),
        ("POST", r"/lfs-upload/([0-9a-f]{64})/([0-9a-f]+)", "lfs_complete"),
        ("POST", r"/lfs-verify/([0-9a-f]{64})", "lfs_verify"),
    )

    def _route(self, method: str, path: str) -> None:
        for verb, pattern, name in self._ROUTES:
            match = re.fullmatch(pattern, path)
            if verb == method and match:
                args = [unquote(g) if g is not None else None for g in match.groups()]
                self.file_body: memoryview | None = None
                with self.hub.lock:
                    getattr(self, "r_" + name)(*args)
                if self.file_body is not None:  # outside the lock: a big file takes a while
                    self._write_file_body(self.file_body)
                return
        self._error(404, f"no route for {method} {path}")

    def r_whoami(self) -> None:
        info = self.token_info
        if info is None:
            self._error(401, "Invalid credentials in Authorization header")
            return
        access: dict[str, Any] = {"displayName": f"{info.user}-token", "role": info.role}
        if info.role == "fineGrained":
            access["fineGrained"] = {"global": [], "scoped": info.scoped}
        self._send(
            200,
            {
                "type": "user",
                "name": info.user,
                "orgs": [{"name": o, "roleInOrg": r} for o, r in info.orgs.items()],
                "auth": {"type": "access_token", "accessToken": access},
            },
        )

    def r_create_repo(self) -> None:
        payload = self._json()
        info = self.token_info
        namespace = payload.get("organization") or (info.user if info else "")
        repo_id = f"{namespace}/{payload['name']}"
        if not self._may_write(namespace, repo_id):
            return
        if repo_id in self.hub.repos:
            url = f"{self.hub.url}/{repo_id}"
            self._send(409, {"error": "You already created this model repo", "url": url})
            return
        private = payload.get("visibility") == "private" or bool(payload.get("private"))
        repo = Repo(private=private)
        attrs = StoredFile(len(_GITATTRIBUTES), "", False, _GITATTRIBUTES)
        first = self.hub.new_commit(repo, None, "initial commit", {".gitattributes": attrs})
        repo.refs["main"] = first.id
        self.hub.repos[repo_id] = repo
        self._send(200, {"url": f"{self.hub.url}/{repo_id}", "name": repo_id, "id": repo_id})

    def r_validate_yaml(self) -> None:
        import yaml

        content = self._json().get("content", "")
        self.hub.validated.append(content)
        match = re.match(r"^---\s*\n(.*?)\n---", content, re.DOTALL)
        try:
            meta = yaml.safe_load(match.group(1)) if match else {}
        except yaml.YAMLError as exc:
            self._send(400, {"errors": [{"message": str(exc)}], "warnings": []})
            return
        if not isinstance(meta, dict):
            self._send(400, {"errors": [{"message": "metadata is not a mapping"}]})
            return
        self._send(200, {"errors": [], "warnings": []})

    def r_repo_info(self, namespace: str, name: str, revision: str | None) -> None:
        repo = self._repo(namespace, name)
        if repo is None:
            return
        commit = self.hub.resolve(repo, revision or "main")
        if commit is None:
            self._error(404, "Revision not found", "RevisionNotFound")
            return
        self._send(
            200,
            {
                "id": f"{namespace}/{name}",
                "sha": commit.id,
                "private": repo.private,
                "siblings": [{"rfilename": p} for p in sorted(commit.files)],
            },
        )

    def r_preupload(self, namespace: str, name: str, revision: str) -> None:
        repo = self._repo(namespace, name, write=True)
        if repo is None:
            return
        commit = self.hub.resolve(repo, revision)
        existing = commit.files if commit is not None else {}
        answers = []
        for f in self._json()["files"]:
            sample = base64.b64decode(f["sample"])
            lfs = _is_lfs(f["path"], sample, f["size"])
            old = existing.get(f["path"])
            oid = None
            if old is not None:
                oid = old.sha256 if old.lfs else old.git_oid
            answers.append(
                {
                    "path": f["path"],
                    "uploadMode": "lfs" if lfs else "regular",
                    "shouldIgnore": False,
                    "oid": oid,
                }
            )
        self._send(200, {"files": answers, "commitOid": commit.id if commit else None})

    def r_lfs_batch(self, namespace: str, name: str) -> None:
        if self._repo(namespace, name, write=True) is None:
            return
        payload = self._json()
        objects, multipart = [], False
        for obj in payload["objects"]:
            oid, size = obj["oid"], obj["size"]
            if oid in self.hub.objects and len(self.hub.objects[oid]) == size:
                objects.append({"oid": oid, "size": size})  # present: nothing to send
                continue
            key = secrets.token_hex(8)
            self.hub.pending[oid] = {"key": key, "size": size, "parts": {}}
            href = f"{self.hub.url}/lfs-upload/{oid}/{key}"
            upload: dict[str, Any] = {"href": href}
            if self.hub.multipart_above is not None and size > self.hub.multipart_above:
                multipart = True
                n_parts = -(-size // self.hub.chunk_size)
                header = {"chunk_size": str(self.hub.chunk_size)}
                for part in range(1, n_parts + 1):
                    header[f"{part:05d}"] = f"{href}/part/{part}"
                upload["header"] = header
            objects.append(
                {
                    "oid": oid,
                    "size": size,
                    "authenticated": True,
                    "actions": {
                        "upload": upload,
                        "verify": {"href": f"{self.hub.url}/lfs-verify/{oid}"},
                    },
                }
            )
        self._send(200, {"transfer": "multipart" if multipart else "basic", "objects": objects})

    def _pending(self, oid: str, key: str) -> dict[str, Any] | None:
        entry = self.hub.pending.get(oid)
        if entry is None or entry["key"] != key:
            self._error(403, "unknown or expired upload URL")
            return None
        return entry

    def _store(self, oid: str, data: bytes, size: int) -> bool:
        if len(data) != size or hashlib.sha256(data).hexdigest() != oid:
            self._error(400, f"content does not match oid {oid} / size {size}")
            return False
        self.hub.objects[oid] = data
        self.hub.pending.pop(oid, None)
        return True

    def r_lfs_put(self, oid: str, key: str) -> None:
        entry = self._pending(oid, key)
        if entry is not None and self._store(oid, self.body, entry["size"]):
            self._send(200)

    def r_lfs_put_part(self, oid: str, key: str, part: str) -> None:
        entry = self._pending(oid, key)
        if entry is None:
            return
        entry["parts"][int(part)] = self.body
        self._send(200, headers={"ETag": hashlib.md5(self.body).hexdigest()})

    def r_lfs_complete(self, oid: str, key: str) -> None:
        entry = self._pending(oid, key)
        if entry is None:
            return
        parts = self._json().get("parts", [])
        for p in parts:
            data = entry["parts"].get(p["partNumber"])
            if data is None or hashlib.md5(data).hexdigest() != p["etag"]:
                self._error(400, f"part {p['partNumber']} missing or etag mismatch")
                return
        data = b"".join(entry["parts"][p["partNumber"]] for p in parts)
        if self._store(oid, data, entry["size"]):
            self._send(200)

    def r_lfs_verify(self, oid: str) -> None:
        size = self._json().get("size")
        if oid in self.hub.objects and len(self.hub.objects[oid]) == size:
            self._send(200, {"oid": oid, "size": size})
        else:
            self._error(404, "object not found")

    def r_commit(self, namespace: str, name: str, revision: str) -> None:
        repo = self._repo(namespace, name, write=True)
        if repo is None:
            return
        create_pr = self.query.get("create_pr") == "1"
        base = self.hub.resolve(repo, revision)
        if base is None:
            self._error(404, f"Invalid rev id: {revision}", "RevisionNotFound")
            return
        lines = [json.loads(line) for line in self.body.splitlines() if line.strip()]
        header = next((x["value"] for x in lines if x["key"] == "header"), {})
        parent = header.get("parentCommit")
        if parent and not create_pr and parent != base.id:
            self._error(412, "A commit has happened since. Please refresh and try again.")
            return
        files = dict(base.files)
        for line in lines:
            key, value = line["key"], line["value"]
            if key == "file":
                data = base64.b64decode(value["content"])
                sha = hashlib.sha256(data).hexdigest()
                files[value["path"]] = StoredFile(len(data), sha, False, data)
            elif key == "lfsFile":
                data = self.hub.objects.get(value["oid"])
                if data is None or len(data) != value.get("size", len(data)):
                    self._error(422, f"LFS object {value['oid']} was not uploaded")
                    return
                files[value["path"]] = StoredFile(len(data), value["oid"], True)
            elif key == "deletedFile":
                files.pop(value["path"], None)
            elif key == "deletedFolder":
                prefix = value["path"].rstrip("/") + "/"
                files = {p: f for p, f in files.items() if not p.startswith(prefix)}
        commit = self.hub.new_commit(repo, base.id, header.get("summary", ""), files)
        pr_url = None
        if create_pr:
            repo.prs += 1
            repo.refs[f"refs/pr/{repo.prs}"] = commit.id
            pr_url = f"{self.hub.url}/{namespace}/{name}/discussions/{repo.prs}"
        else:
            repo.refs[revision] = commit.id
        self._send(
            200,
            {
                "success": True,
                "commitOid": commit.id,
                "commitUrl": f"{self.hub.url}/{namespace}/{name}/commit/{commit.id}",
                "pullRequestUrl": pr_url,
            },
        )

    def r_branch(self, namespace: str, name: str, branch: str) -> None:
        repo = self._repo(namespace, name, write=True)
        if repo is None:
            return
        if branch in repo.refs:
            self._send(409, {"error": "Reference already exists"})
            return
        start = self._json().get("startingPoint") or "main"
        commit = self.hub.resolve(repo, start)
        if commit is None:
            self._error(404, "Revision not found", "RevisionNotFound")
            return
        repo.refs[branch] = commit.id
        self._send(200, {})

    def _commit(self, namespace: str, name: str, revision: str) -> Commit | None:
        """The commit `revision` names in the repo; None once a 404 has been sent."""
        repo = self._repo(namespace, name)
        if repo is None:
            return None
        commit = self.hub.resolve(repo, revision)
        if commit is None:
            self._error(404, "Revision not found", "RevisionNotFound")
        return commit

    def r_tree(self, namespace: str, name: str, revision: str, path: str | None) -> None:
        commit = self._commit(namespace, name, revision)
        if commit is None:
            return
        recursive = self.query.get("recursive", "false").lower() == "true"
        prefix = (path.strip("/") + "/") if path else ""
        entries, folders = [], set()
        for file_path, stored in sorted(commit.files.items()):
            if not file_path.startswith(prefix):
                continue
            rest = file_path[len(prefix) :]
            if "/" in rest and not recursive:
                folders.add(prefix + rest.split("/")[0])
                continue
            for i in range(rest.count("/")):
                folders.add(prefix + "/".join(rest.split("/")[: i + 1]))
            entry: dict[str, Any] = {
                "type": "file",
                "oid": stored.git_oid,
                "size": stored.size,
                "path": file_path,
            }
            if stored.lfs:
                entry["lfs"] = {
                    "oid": stored.sha256,
                    "size": stored.size,
                    "pointerSize": len(stored.pointer),
                }
            entries.append(entry)
        dirs = [
            {"type": "directory", "oid": hashlib.sha1(d.encode()).hexdigest(), "size": 0, "path": d}
            for d in sorted(folders)
        ]
        self._send(200, dirs + entries)

    # --- downloads ------------------------------------------------------------------------

    def r_resolve(self, namespace: str, name: str, revision: str, path: str) -> None:
        """A file as hf_hub_download fetches it: X-Repo-Commit, the ETag it names the cached
        blob after (X-Linked-Etag: the sha256 for LFS files, as on the Hub), X-Linked-Size,
        and Range requests answered with 206 Partial Content."""
        commit = self._commit(namespace, name, revision)
        if commit is None:
            return
        stored = commit.files.get(path)
        if stored is None:
            headers = {"X-Error-Message": "Entry not found", "X-Error-Code": "EntryNotFound"}
            self._send(404, {"error": "Entry not found"}, {**headers, "X-Repo-Commit": commit.id})
            return
        data = memoryview(self.hub.objects[stored.sha256] if stored.lfs else stored.content or b"")
        headers = {"X-Repo-Commit": commit.id, "Accept-Ranges": "bytes"}
        if stored.lfs:
            etag = f'"{stored.sha256}"'
            headers.update({"X-Linked-Etag": etag, "X-Linked-Size": str(stored.size)})
        else:
            etag = f'"{stored.git_oid}"'
        headers["ETag"] = etag
        self._send_file(data, headers)

    def _send_file(self, data: memoryview, headers: dict[str, str]) -> None:
        size = len(data)
        status, first, last = 200, 0, size - 1
        wanted = _byte_range(self.headers.get("Range"), size)
        if wanted is not None:
            first, last = wanted
            if first >= size:
                self._send(416, None, {"Content-Range": f"bytes */{size}"})
                return
            status = 206
            headers["Content-Range"] = f"bytes {first}-{last}/{size}"
        self.status = status
        self.send_response(status)
        self.send_header("Content-Type", "application/octet-stream")
        self.send_header("Content-Length", str(last + 1 - first))
        for key, value in headers.items():
            self.send_header(key, value)
        self.end_headers()
        if self.command == "GET":
            self.file_body = data[first : last + 1]

    def _write_file_body(self, body: memoryview) -> None:
        if self.cut_after is not None:
            body = body[: self.cut_after]
            self.close_connection = True  # fewer bytes than Content-Length, then EOF
        step = 1024 * 1024
        try:
            for start in range(0, len(body), step):
                self.wfile.write(body[start : start + step])
                self.sent_bytes += len(body[start : start + step])
        except (BrokenPipeError, ConnectionResetError):
            self.close_connection = True  # the client went away mid-body
