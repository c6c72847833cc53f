"""A small in-memory server speaking the Hugging Face Hub HTTP API, for offline push/download round trips.

It implements the calls `huggingface_hub` (checked against 2.4, httpx2 client) makes for `create_repo`,
`create_branch`, `create_commit`/`upload_folder` (preupload, NDJSON commit, Git-LFS batch + basic upload + verify),
`model_info`/`repo_info`, `list_repo_files`/`list_repo_tree`, `get_paths_info`, `list_repo_refs`, `whoami` and file
download (`HEAD`/`GET /{repo}/resolve/{revision}/{path}` with `X-Repo-Commit`, `ETag`/`X-Linked-Etag`, sizes and a
redirect to LFS storage for large files, as on the Hub). Unknown routes answer 404 with a message naming the route
(also recorded in `FakeHub.unknown_routes`) so that a new client call shows up clearly in a failing test.

Xet storage is not implemented: the server never sends Xet headers, and since `huggingface_hub` uploads LFS files
through Xet whenever `hf_xet` is installed (without asking the server), the `fake_hub` fixture sets
`huggingface_hub.constants.HF_HUB_DISABLE_XET` for the test process; subprocesses get `HF_HUB_DISABLE_XET=1` through
`FakeHub.client_env()`.

Pointing clients at the server: `huggingface_hub` reads `HF_ENDPOINT` once, at import, into
`huggingface_hub.constants.ENDPOINT`. In the pytest process the fixture patches that constant (HfApi reads it when
constructed) and code under test may also receive `endpoint=`; anything that downloads through transformers runs in
a subprocess whose environment comes from `FakeHub.client_env()` (HF_ENDPOINT, an empty HF_HOME, the token).

>>> hub = FakeHub(token="hf_test")
>>> hub.start()  # doctest: +SKIP
>>> HfApi(endpoint=hub.endpoint, token="hf_test").create_repo("tester/tiny")  # doctest: +SKIP
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
import threading
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, unquote, urlsplit

import pytest

USER = "tester"
# Files the Hub's default .gitattributes routes to LFS (subset), plus anything above the size threshold.
LFS_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".ckpt", ".pkl", ".gguf", ".h5", ".onnx", ".msgpack", ".npz")
DEFAULT_GITATTRIBUTES = "".join(f"*{suffix} filter=lfs diff=lfs merge=lfs -text\n" for suffix in LFS_SUFFIXES)
REPO_TYPE_PREFIXES = {"models": "model", "datasets": "dataset", "spaces": "space"}


def git_blob_sha1(data: bytes) -> str:
    """Git object id of a blob (what the Hub reports as `oid`/`ETag` for regular files)."""
    return hashlib.sha1(b"blob " + str(len(data)).encode() + b"\0" + data).hexdigest()


def lfs_pointer(sha256: str, size: int) -> bytes:
    return f"version https://git-lfs.github.com/spec/v1\noid sha256:{sha256}\nsize {size}\n".encode()


@dataclass(frozen=True)
class Blob:
    """One file version. LFS files keep their bytes in `FakeHub.lfs_objects`, addressed by `sha256`."""

    size: int
    content: bytes | None = None  # regular files only
    sha256: str | None = None  # LFS files only

    @property
    def is_lfs(self) -> bool:
        return self.sha256 is not None

    @property
    def oid(self) -> str:
        """Git oid (of the pointer file for LFS files, as git stores it)."""
        data = lfs_pointer(self.sha256, self.size) if self.is_lfs else self.content
        return git_blob_sha1(data)

    @property
    def preupload_oid(self) -> str:
        """What `/preupload` reports: sha256 for LFS files, git sha1 for regular ones (the client compares these)."""
        return self.sha256 if self.is_lfs else self.oid


@dataclass
class Commit:
    oid: str
    parent: str | None
    title: str
    description: str
    files: dict[str, Blob]
    date: str


@dataclass
class Repo:
    repo_id: str
    repo_type: str
    private: bool
    commits: dict[str, Commit] = field(default_factory=dict)
    branches: dict[str, str] = field(default_factory=dict)  # name -> commit oid
    num_prs: int = 0


class HubError(Exception):
    """An error answer: HTTP status, Hub `X-Error-Code` (drives huggingface_hub's exception type) and message."""

    def __init__(
        self,
        status: int,
        message: str,
        code: str | None = None,
        headers: dict[str, str] | None = None,
        extra: dict | None = None,
    ):
        super().__init__(message)
        self.status, self.message, self.code, self.headers = status, message, code, headers or {}
        self.extra = extra or {}


class FakeHub:
    """In-memory Hub. Thread-safe (one lock around all state); `requests` logs `(method, path, status)`.

    Args:
        token: the one valid write token (`None`: any bearer token is accepted, and anonymous writes too).
        lfs_threshold: files at least this large go to LFS even without an LFS suffix (the Hub uses 10 MB).
    """

    def __init__(self, token: str | None = "hf_fake_hub_token", lfs_threshold: int = 10 * 1024 * 1024):
        self.token = token
        self.lfs_threshold = lfs_threshold
        self.repos: dict[tuple[str, str], Repo] = {}
        self.lfs_objects: dict[str, bytes] = {}
        self.requests: list[tuple[str, str, int]] = []
        self.unknown_routes: list[str] = []
        self._lock = threading.RLock()
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    # ------------------------------------------------------------------ lifecycle
    @property
    def endpoint(self) -> str:
        if self._server is None:
            raise RuntimeError("FakeHub is not started; call start() first")
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    def start(self) -> FakeHub:
        hub = self

        class Handler(_HubRequestHandler):
            fake_hub = hub

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)  # port 0: the OS picks a free port
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, name="fake-hub", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    def client_env(self, hf_home: str, token: str | None = None) -> dict[str, str]:
        """Environment variables that point a fresh process (huggingface_hub / transformers) at this server."""
        env = {
            "HF_ENDPOINT": self.endpoint,
            "HF_HOME": hf_home,
            "HF_HUB_CACHE": f"{hf_home}/hub",
            "HF_HUB_DISABLE_XET": "1",
            "HF_HUB_OFFLINE": "0",
            "TRANSFORMERS_OFFLINE": "0",
            "HF_HUB_DISABLE_TELEMETRY": "1",
            "HF_HUB_DISABLE_PROGRESS_BARS": "1",
        }
        token = self.token if token is None else token
        if token:
            env["HF_TOKEN"] = token
        return env

    # ------------------------------------------------------------------ inspection helpers for tests
    def repo(self, repo_id: str, repo_type: str = "model") -> Repo:
        return self.repos[(repo_type, repo_id)]

    def files(self, repo_id: str, revision: str = "main", repo_type: str = "model") -> dict[str, bytes]:
        """Content of every file at `revision` (LFS files resolved)."""
        with self._lock:
            repo = self.repo(repo_id, repo_type)
            commit = repo.commits[self._resolve_revision(repo, revision)]
            return {path: self._blob_bytes(blob) for path, blob in commit.files.items()}

    def num_commits(self, repo_id: str, repo_type: str = "model") -> int:
        return len(self.repo(repo_id, repo_type).commits)

    # ------------------------------------------------------------------ state helpers
    def _blob_bytes(self, blob: Blob) -> bytes:
        return self.lfs_objects[blob.sha256] if blob.is_lfs else blob.content

    def _get_repo(self, repo_type: str, repo_id: str, token: str | None, write: bool = False) -> Repo:
        repo = self.repos.get((repo_type, repo_id))
        authorised = self._token_ok(token)
        if repo is None or (repo.private and not authorised):
            # The Hub hides private repos: same answer as a missing one.
            raise HubError(404, f"Repository {repo_type}/{repo_id} not found", "RepoNotFound")
        if write and not authorised:
            raise HubError(403, f"You don't have the rights to write to {repo_id}; pass a valid token")
        return repo

    def _token_ok(self, token: str | None) -> bool:
        return self.token is None or token == self.token

    def _resolve_revision(self, repo: Repo, revision: str) -> str:
        if revision in repo.branches:
            return repo.branches[revision]
        if revision in repo.commits:
            return revision
        matches = [oid for oid in repo.commits if len(revision) >= 7 and oid.startswith(revision)]
        if len(matches) == 1:
            return matches[0]
        raise HubError(404, f"Invalid rev id: {revision}", "RevisionNotFound")

    def _new_commit(self, repo: Repo, parent: str | None, title: str, description: str, files: dict[str, Blob]) -> str:
        seed = f"{repo.repo_id}\n{parent}\n{title}\n{len(repo.commits)}\n{time.time_ns()}"
        seed += "".join(f"\n{path}:{blob.oid}" for path, blob in sorted(files.items()))
        oid = hashlib.sha1(seed.encode()).hexdigest()
        date = datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.000Z")
        repo.commits[oid] = Commit(oid, parent, title, description, dict(files), date)
        return oid

    def _make_blob(self, data: bytes) -> Blob:
        return Blob(size=len(data), content=data)

    def _is_lfs_path(self, path: str, size: int) -> bool:
        return path.endswith(LFS_SUFFIXES) or size >= self.lfs_threshold

    # ------------------------------------------------------------------ API: repos, branches, refs
    def create_repo(self, body: dict, token: str | None, base: str) -> tuple[int, dict]:
        if not self._token_ok(token):
            raise HubError(401, "Invalid credentials in Authorization header")
        name, organization = body.get("name"), body.get("organization")
        if not name:
            raise HubError(400, "Missing 'name' in request body")
        repo_type = body.get("type") or "model"
        repo_id = f"{organization or USER}/{name}"
        private = body.get("visibility", "public") == "private" or bool(body.get("private", False))
        url = self._repo_url(base, repo_type, repo_id)
        if (repo_type, repo_id) in self.repos:
            # The Hub's 409 carries the url: `create_repo(exist_ok=True)` returns it.
            raise HubError(409, f"You already created this {repo_type} repo: {repo_id}", extra={"url": url})
        repo = Repo(repo_id=repo_id, repo_type=repo_type, private=private)
        # Like the Hub, a new repo has one commit holding the default .gitattributes.
        files = {".gitattributes": self._make_blob(DEFAULT_GITATTRIBUTES.encode())}
        repo.branches["main"] = self._new_commit(repo, None, "initial commit", "", files)
        self.repos[(repo_type, repo_id)] = repo
        return 200, {"url": url, "name": repo_id, "id": repo_id}

    def delete_repo(self, body: dict, token: str | None) -> tuple[int, dict]:
        repo_type = body.get("type") or "model"
        repo_id = f"{body.get('organization') or USER}/{body['name']}"
        self._get_repo(repo_type, repo_id, token, write=True)
        del self.repos[(repo_type, repo_id)]
        return 200, {}

    def create_branch(self, repo: Repo, branch: str, body: dict) -> tuple[int, dict]:
        if branch in repo.branches:
            raise HubError(409, f"Reference refs/heads/{branch} already exists")
        start = body.get("startingPoint") or "main"
        repo.branches[branch] = self._resolve_revision(repo, start)
        return 200, {}

    def refs(self, repo: Repo) -> dict:
        branches = [
            {"name": name, "ref": f"refs/heads/{name}", "targetCommit": oid}
            for name, oid in repo.branches.items()
            if not name.startswith("refs/pr/")
        ]
        prs = [
            {"name": name, "ref": name, "targetCommit": oid}
            for name, oid in repo.branches.items()
            if name.startswith("refs/pr/")
        ]
        return {"branches": branches, "converts": [], "tags": [], "pullRequests": prs}

    def list_commits(self, repo: Repo, revision: str) -> list[dict]:
        oid, out = self._resolve_revision(repo, revision), []
        while oid is not None:
            commit = repo.commits[oid]
            out.append(
                {"id": oid, "title": commit.title, "message": commit.description, "date": commit.date, "authors": []}
            )
            oid = commit.parent
        return out

    # ------------------------------------------------------------------ API: info and trees
    def repo_info(self, repo: Repo, revision: str, base: str) -> dict:
        sha = self._resolve_revision(repo, revision)
        commit = repo.commits[sha]
        siblings = []
        for path, blob in sorted(commit.files.items()):
            sibling = {"rfilename": path, "size": blob.size, "blobId": blob.oid}
            if blob.is_lfs:
                sibling["lfs"] = {
                    "size": blob.size,
                    "sha256": blob.sha256,
                    "pointerSize": len(lfs_pointer(blob.sha256, blob.size)),
                }
            siblings.append(sibling)
        card_data = _front_matter(commit.files.get("README.md"), self)
        info = {
            "_id": hashlib.md5(repo.repo_id.encode()).hexdigest()[:24],
            "id": repo.repo_id,
            "modelId": repo.repo_id,
            "author": repo.repo_id.split("/")[0],
            "sha": sha,
            "lastModified": commit.date,
            "createdAt": repo.commits[next(iter(repo.commits))].date,
            "private": repo.private,
            "gated": False,
            "disabled": False,
            "downloads": 0,
            "likes": 0,
            "tags": list(card_data.get("tags", []) or []),
            "siblings": siblings,
            "usedStorage": sum(blob.size for blob in commit.files.values()),
        }
        if card_data:
            info["cardData"] = card_data
            for key in ("library_name", "pipeline_tag"):
                if key in card_data:
                    info[key] = card_data[key]
        config_blob = commit.files.get("config.json")
        if config_blob is not None:
            try:
                info["config"] = json.loads(self._blob_bytes(config_blob))
            except ValueError:
                pass
        return info

    def tree_entries(self, repo: Repo, revision: str, path: str, recursive: bool) -> list[dict]:
        commit = repo.commits[self._resolve_revision(repo, revision)]
        prefix = path.strip("/")
        prefix = f"{prefix}/" if prefix else ""
        if prefix and not any(p.startswith(prefix) for p in commit.files):
            raise HubError(404, f"Path {path} not found in {repo.repo_id}@{revision}", "EntryNotFound")
        entries: dict[str, dict] = {}
        for file_path, blob in sorted(commit.files.items()):
            if not file_path.startswith(prefix):
                continue
            rest = file_path[len(prefix) :]
            parts = rest.split("/")
            # Folders on the way to the file (all of them when recursive, the first level otherwise).
            for depth in range(1, len(parts) if recursive else min(2, len(parts))):
                folder = prefix + "/".join(parts[:depth])
                entries.setdefault(
                    folder, {"type": "directory", "oid": git_blob_sha1(folder.encode()), "size": 0, "path": folder}
                )
            if recursive or len(parts) == 1:
                entries[file_path] = self._file_entry(file_path, blob)
        return list(entries.values())

    def _file_entry(self, path: str, blob: Blob) -> dict:
        entry = {"type": "file", "oid": blob.oid, "size": blob.size, "path": path}
        if blob.is_lfs:
            entry["lfs"] = {
                "oid": blob.sha256,
                "size": blob.size,
                "pointerSize": len(lfs_pointer(blob.sha256, blob.size)),
            }
        return entry

    def paths_info(self, repo: Repo, revision: str, paths: list[str]) -> list[dict]:
        commit = repo.commits[self._resolve_revision(repo, revision)]
        out = []
        for path in paths:
            path = path.strip("/")
            if path in commit.files:
                out.append(self._file_entry(path, commit.files[path]))
            elif any(p.startswith(path + "/") for p in commit.files):
                out.append({"type": "directory", "oid": git_blob_sha1(path.encode()), "path": path})
        return out

    # ------------------------------------------------------------------ API: uploads and commits
    def preupload(self, repo: Repo, revision: str, body: dict) -> dict:
        commit = repo.commits[self._resolve_revision(repo, revision)]
        files = []
        for item in body.get("files", []):
            path, size = item["path"], int(item["size"])
            existing = commit.files.get(path)
            files.append(
                {
                    "path": path,
                    "uploadMode": "lfs" if self._is_lfs_path(path, size) else "regular",
                    "shouldIgnore": False,
                    "oid": existing.preupload_oid if existing is not None else None,
                }
            )
        return {"files": files, "commitOid": commit.oid}

    def lfs_batch(self, repo: Repo, body: dict, base: str) -> dict:
        if body.get("operation") != "upload":
            raise HubError(400, f"Only the 'upload' LFS batch operation is implemented, got {body.get('operation')!r}")
        objects = []
        for obj in body.get("objects", []):
            oid, size = obj["oid"], int(obj["size"])
            entry: dict = {"oid": oid, "size": size, "authenticated": True}
            if oid not in self.lfs_objects:
                entry["actions"] = {
                    "upload": {"href": f"{base}/__lfs__/upload/{oid}?size={size}", "header": {}},
                    "verify": {"href": f"{base}/__lfs__/verify/{oid}", "header": {}},
                }
            objects.append(entry)
        return {"transfer": "basic", "objects": objects}

    def lfs_put(self, oid: str, data: bytes) -> None:
        if hashlib.sha256(data).hexdigest() != oid:
            raise HubError(400, f"LFS upload for {oid} has sha256 {hashlib.sha256(data).hexdigest()}")
        self.lfs_objects[oid] = data

    def commit(self, repo: Repo, revision: str, lines: list[dict], create_pr: bool, base: str) -> dict:
        if not lines or lines[0].get("key") != "header":
            raise HubError(400, "The first NDJSON line of a commit must be the 'header'")
        header = lines[0]["value"]
        if revision not in repo.branches:
            if revision in repo.commits or self._is_commit_prefix(repo, revision):
                raise HubError(400, f"Cannot commit on top of a commit id ({revision}); use a branch")
            raise HubError(404, f"Invalid rev id: {revision}", "RevisionNotFound")
        parent = repo.branches[revision]
        if header.get("parentCommit") and not parent.startswith(header["parentCommit"]):
            raise HubError(412, f"Parent commit {header['parentCommit']} is not the head of {revision} ({parent})")
        files = dict(repo.commits[parent].files)
        for line in lines[1:]:
            key, value = line.get("key"), line.get("value", {})
            path = value.get("path", "")
            if key == "file":
                if value.get("encoding") != "base64":
                    raise HubError(400, f"Unsupported encoding {value.get('encoding')!r} for {path}")
                files[path] = self._make_blob(base64.b64decode(value["content"]))
            elif key == "lfsFile":
                if value.get("algo", "sha256") != "sha256" or value["oid"] not in self.lfs_objects:
                    raise HubError(422, f"LFS object {value.get('oid')} for {path} was never uploaded")
                files[path] = Blob(size=int(value["size"]), sha256=value["oid"])
            elif key == "deletedFile":
                if path not in files:
                    raise HubError(404, f"A file with this name doesn't exist: {path}", "EntryNotFound")
                del files[path]
            elif key == "deletedFolder":
                prefix = path.rstrip("/") + "/"
                for file_path in [p for p in files if p.startswith(prefix)]:
                    del files[file_path]
            else:
                raise HubError(
                    400,
                    f"Unknown commit operation key {key!r} (implemented: file, lfsFile, deletedFile, deletedFolder)",
                )
        oid = self._new_commit(repo, parent, header.get("summary", ""), header.get("description", ""), files)
        pr_url = None
        if create_pr:
            repo.num_prs += 1
            repo.branches[f"refs/pr/{repo.num_prs}"] = oid
            pr_url = f"{self._repo_url(base, repo.repo_type, repo.repo_id)}/discussions/{repo.num_prs}"
        else:
            repo.branches[revision] = oid
        commit_url = f"{self._repo_url(base, repo.repo_type, repo.repo_id)}/commit/{oid}"
        return {"success": True, "commitOid": oid, "commitUrl": commit_url, "pullRequestUrl": pr_url}

    def _is_commit_prefix(self, repo: Repo, revision: str) -> bool:
        return len(revision) >= 7 and any(oid.startswith(revision) for oid in repo.commits)

    @staticmethod
    def _repo_url(base: str, repo_type: str, repo_id: str) -> str:
        return f"{base}/{repo_id}" if repo_type == "model" else f"{base}/{repo_type}s/{repo_id}"


def _front_matter(blob: Blob | None, hub: FakeHub) -> dict:
    """YAML metadata of a README (what the Hub exposes as `cardData`)."""
    if blob is None:
        return {}
    import yaml

    text = hub._blob_bytes(blob).decode("utf-8", errors="replace")
    match = re.match(r"^---\s*\n(.*?)\n---\s*\n", text, re.DOTALL)
    if not match:
        return {}
    data = yaml.safe_load(match.group(1))
    return data if isinstance(data, dict) else {}


# Route table: (method, regex over the URL path) -> handler method name. Repo ids are `namespace/name`.
_REPO = r"(?P<type>models|datasets|spaces)/(?P<repo>[^/]+/[^/]+)"
_ROUTES: list[tuple[str, re.Pattern, str]] = [
    (m, re.compile(p), h)
    for m, p, h in [
        ("GET", r"^/api/whoami-v2$", "h_whoami"),
        ("GET", r"^/api/agent-harnesses$", "h_agent_harnesses"),
        ("POST", r"^/api/repos/create$", "h_create_repo"),
        ("DELETE", r"^/api/repos/delete$", "h_delete_repo"),
        ("POST", r"^/api/validate-yaml$", "h_validate_yaml"),
        ("POST", rf"^/api/{_REPO}/preupload/(?P<rev>[^/]+)$", "h_preupload"),
        ("POST", rf"^/api/{_REPO}/commit/(?P<rev>[^/]+)$", "h_commit"),
        ("POST", rf"^/api/{_REPO}/branch/(?P<rev>[^/]+)$", "h_create_branch"),
        ("DELETE", rf"^/api/{_REPO}/branch/(?P<rev>[^/]+)$", "h_delete_branch"),
        ("GET", rf"^/api/{_REPO}/refs$", "h_refs"),
        ("GET", rf"^/api/{_REPO}/commits/(?P<rev>[^/]+)$", "h_commits"),
        ("GET", rf"^/api/{_REPO}/tree/(?P<rev>[^/]+)(?P<path>/.*)?$", "h_tree"),
        ("POST", rf"^/api/{_REPO}/paths-info/(?P<rev>[^/]+)$", "h_paths_info"),
        ("GET", rf"^/api/{_REPO}/revision/(?P<rev>[^/]+)$", "h_repo_info"),
        ("GET", rf"^/api/{_REPO}$", "h_repo_info"),
        (
            "POST",
            r"^/(?:(?P<type>datasets|spaces)/)?(?P<repo>[^/]+/[^/]+)\.git/info/lfs/objects/batch$",
            "h_lfs_batch",
        ),
        ("PUT", r"^/__lfs__/upload/(?P<oid>[0-9a-f]{64})$", "h_lfs_upload"),
        ("POST", r"^/__lfs__/verify/(?P<oid>[0-9a-f]{64})$", "h_lfs_verify"),
        ("GET", r"^/__lfs__/objects/(?P<oid>[0-9a-f]{64})$", "h_lfs_object"),
        ("HEAD", r"^/__lfs__/objects/(?P<oid>[0-9a-f]{64})$", "h_lfs_object"),
        (
            "GET",
            r"^/(?:(?P<type>datasets|spaces)/)?(?P<repo>[^/]+/[^/]+)/resolve/(?P<rev>[^/]+)/(?P<path>.+)$",
            "h_resolve",
        ),
        (
            "HEAD",
            r"^/(?:(?P<type>datasets|spaces)/)?(?P<repo>[^/]+/[^/]+)/resolve/(?P<rev>[^/]+)/(?P<path>.+)$",
            "h_resolve",
        ),
    ]
]


class _HubRequestHandler(BaseHTTPRequestHandler):
    fake_hub: FakeHub  # set on the per-server subclass
    protocol_version = "HTTP/1.1"  # keep-alive, as httpx expects

    def log_message(self, format, *args):
        pass

    # Every verb goes through one dispatcher.
    def do_GET(self):
        self._dispatch("GET")

    def do_HEAD(self):
        self._dispatch("HEAD")

    def do_POST(self):
        self._dispatch("POST")

    def do_PUT(self):
        self._dispatch("PUT")

    def do_DELETE(self):
        self._dispatch("DELETE")

    # ------------------------------------------------------------------ plumbing
    def _dispatch(self, method: str) -> None:
        hub = self.fake_hub
        url = urlsplit(self.path)
        self.query = parse_qs(url.query)
        self.body = self._read_body()
        status = 500
        try:
            for route_method, pattern, handler_name in _ROUTES:
                match = pattern.match(url.path)
                if route_method == method and match:
                    params = {k: unquote(v) if v is not None else None for k, v in match.groupdict().items()}
                    with hub._lock:
                        status = getattr(self, handler_name)(method, **params)
                    break
            else:
                hub.unknown_routes.append(f"{method} {self.path}")
                raise HubError(404, f"FakeHub: route not implemented: {method} {url.path} (see tests/hub_server.py)")
        except HubError as err:
            status = err.status
            headers = dict(err.headers)
            if err.code:
                headers["X-Error-Code"] = err.code
            headers["X-Error-Message"] = err.message
            self._send_json(err.status, {"error": err.message, **err.extra}, headers=headers, head=method == "HEAD")
        except Exception as err:  # a server bug must surface in the test, not hang the client
            status = 500
            self._send_json(500, {"error": f"FakeHub internal error: {type(err).__name__}: {err}"})
            raise
        finally:
            hub.requests.append((method, url.path, status))

    def _read_body(self) -> bytes:
        length = int(self.headers.get("Content-Length") or 0)
        if length:
            return self.rfile.read(length)
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            chunks = []
            while True:
                size = int(self.rfile.readline().strip().split(b";")[0], 16)
                if size == 0:
                    self.rfile.readline()
                    break
                chunks.append(self.rfile.read(size))
                self.rfile.readline()
            return b"".join(chunks)
        return b""

    @property
    def token(self) -> str | None:
        auth = self.headers.get("Authorization", "")
        return auth[len("Bearer ") :] if auth.startswith("Bearer ") else None

    @property
    def base(self) -> str:
        return f"http://{self.headers.get('Host')}"

    def _json_body(self) -> dict:
        try:
            return json.loads(self.body or b"{}")
        except ValueError as err:
            raise HubError(400, f"Request body is not JSON: {err}") from err

    def _send(self, status: int, body: bytes, headers: dict[str, str] | None = None, head: bool = False) -> int:
        self.send_response(status)
        headers = dict(headers or {})
        headers.setdefault("Content-Length", str(len(body)))
        for key, value in headers.items():
            self.send_header(key, value)
        self.end_headers()
        if not head:
            self.wfile.write(body)
        return status

    def _send_json(self, status: int, data, headers: dict[str, str] | None = None, head: bool = False) -> int:
        headers = {"Content-Type": "application/json", **(headers or {})}
        return self._send(status, json.dumps(data).encode(), headers, head)

    def _repo(self, type: str | None, repo: str, write: bool = False) -> Repo:
        return self.fake_hub._get_repo(REPO_TYPE_PREFIXES.get(type or "models", "model"), repo, self.token, write)

    # ------------------------------------------------------------------ handlers
    def h_whoami(self, method):
        if self.token is None or not self.fake_hub._token_ok(self.token):
            raise HubError(401, "Invalid credentials in Authorization header")
        return self._send_json(
            200,
            {
                "type": "user",
                "id": "0" * 24,
                "name": USER,
                "fullname": "Fake Hub Tester",
                "orgs": [],
                "auth": {"type": "access_token", "accessToken": {"displayName": "fake", "role": "write"}},
            },
        )

    def h_agent_harnesses(self, method):
        """Registry huggingface_hub fetches to tag its user agent; empty means no harness is detected."""
        return self._send_json(200, {"standardEnvVars": [], "harnesses": {}})

    def h_create_repo(self, method):
        status, data = self.fake_hub.create_repo(self._json_body(), self.token, self.base)
        return self._send_json(status, data)

    def h_delete_repo(self, method):
        return self._send_json(*self.fake_hub.delete_repo(self._json_body(), self.token))

    def h_validate_yaml(self, method):
        body = self._json_body()
        import yaml

        try:
            _front_matter(self.fake_hub._make_blob(body.get("content", "").encode()), self.fake_hub)
        except yaml.YAMLError as err:  # the Hub answers 400 with the parser's message
            return self._send_json(400, {"errors": [{"message": str(err)}], "warnings": []})
        return self._send_json(200, {"errors": [], "warnings": []})

    def h_preupload(self, method, type, repo, rev):
        repo_obj = self._repo(type, repo, write=True)
        return self._send_json(200, self.fake_hub.preupload(repo_obj, rev, self._json_body()))

    def h_commit(self, method, type, repo, rev):
        repo_obj = self._repo(type, repo, write=True)
        lines = [json.loads(line) for line in self.body.splitlines() if line.strip()]
        create_pr = self.query.get("create_pr", ["0"])[0] in ("1", "true", "True")
        return self._send_json(200, self.fake_hub.commit(repo_obj, rev, lines, create_pr, self.base))

    def h_create_branch(self, method, type, repo, rev):
        repo_obj = self._repo(type, repo, write=True)
        return self._send_json(*self.fake_hub.create_branch(repo_obj, rev, self._json_body()))

    def h_delete_branch(self, method, type, repo, rev):
        repo_obj = self._repo(type, repo, write=True)
        if rev not in repo_obj.branches or rev == "main":
            raise HubError(404, f"Branch {rev} cannot be deleted", "RevisionNotFound")
        del repo_obj.branches[rev]
        return self._send_json(200, {})

    def h_refs(self, method, type, repo):
        return self._send_json(200, self.fake_hub.refs(self._repo(type, repo)))

    def h_commits(self, method, type, repo, rev):
        return self._send_json(200, self.fake_hub.list_commits(self._repo(type, repo), rev))

    def h_tree(self, method, type, repo, rev, path=None):
        recursive = self.query.get("recursive", ["False"])[0].lower() in ("1", "true")
        entries = self.fake_hub.tree_entries(self._repo(type, repo), rev, path or "", recursive)
        return self._send_json(200, entries)

    def h_paths_info(self, method, type, repo, rev):
        content_type = self.headers.get("Content-Type", "")
        if "json" in content_type:
            paths = self._json_body().get("paths", [])
        else:  # form-encoded, `paths` repeated
            paths = parse_qs(self.body.decode()).get("paths", [])
        return self._send_json(200, self.fake_hub.paths_info(self._repo(type, repo), rev, paths))

    def h_repo_info(self, method, type, repo, rev=None):
        return self._send_json(200, self.fake_hub.repo_info(self._repo(type, repo), rev or "main", self.base))

    def h_lfs_batch(self, method, type, repo):
        repo_obj = self._repo(type, repo, write=True)
        data = self.fake_hub.lfs_batch(repo_obj, self._json_body(), self.base)
        return self._send_json(200, data, headers={"Content-Type": "application/vnd.git-lfs+json"})

    def h_lfs_upload(self, method, oid):
        self.fake_hub.lfs_put(oid, self.body)
        return self._send(200, b"")

    def h_lfs_verify(self, method, oid):
        body = self._json_body()
        data = self.fake_hub.lfs_objects.get(oid)
        if data is None or len(data) != int(body.get("size", -1)):
            raise HubError(404, f"LFS object {oid} not found or wrong size")
        return self._send_json(200, {"success": True})

    def h_lfs_object(self, method, oid):
        """LFS storage (the Hub's CDN): the file bytes, addressed by sha256."""
        data = self.fake_hub.lfs_objects.get(oid)
        if data is None:
            raise HubError(404, f"LFS object {oid} not found", "EntryNotFound")
        headers = {"ETag": f'"{oid}"', "Content-Type": "application/octet-stream", "Accept-Ranges": "bytes"}
        # The client follows same-host redirects and reads the commit from the final response.
        if "commit" in self.query:
            headers["X-Repo-Commit"] = self.query["commit"][0]
        return self._send_range(data, headers, head=method == "HEAD")

    def h_resolve(self, method, type, repo, rev, path):
        hub = self.fake_hub
        repo_obj = self._repo(type, repo)
        sha = hub._resolve_revision(repo_obj, rev)
        blob = repo_obj.commits[sha].files.get(path)
        if blob is None:
            raise HubError(404, f"Entry {path} not found in {repo}@{rev}", "EntryNotFound", {"X-Repo-Commit": sha})
        headers = {"X-Repo-Commit": sha, "Accept-Ranges": "bytes"}
        if blob.is_lfs:
            # The Hub redirects LFS files to storage and names the real file in X-Linked-* headers.
            location = f"{self.base}/__lfs__/objects/{blob.sha256}?commit={sha}"
            headers.update(
                {
                    "Location": location,
                    "ETag": f'"{blob.oid}"',
                    "X-Linked-Etag": f'"{blob.sha256}"',
                    "X-Linked-Size": str(blob.size),
                }
            )
            return self._send(302, b"", headers, head=method == "HEAD")
        headers["ETag"] = f'"{blob.oid}"'
        headers["Content-Type"] = "application/octet-stream"
        return self._send_range(blob.content, headers, head=method == "HEAD")

    def _send_range(self, data: bytes, headers: dict[str, str], head: bool) -> int:
        match = re.match(r"bytes=(\d+)-(\d*)$", self.headers.get("Range", ""))
        if match:
            start = int(match.group(1))
            end = int(match.group(2)) if match.group(2) else len(data) - 1
            headers["Content-Range"] = f"bytes {start}-{end}/{len(data)}"
            return self._send(206, data[start : end + 1], headers, head)
        return self._send(200, data, headers, head)


@pytest.fixture()
def fake_hub(tmp_path, monkeypatch):
    """A started `FakeHub`; this process's huggingface_hub points at it (endpoint, token, no Xet, empty HF_HOME)."""
    import huggingface_hub.constants as hf_constants

    hub = FakeHub().start()
    hf_home = tmp_path / "hf_home"
    hf_home.mkdir()
    monkeypatch.setattr(hf_constants, "ENDPOINT", hub.endpoint)
    monkeypatch.setattr(
        hf_constants, "HUGGINGFACE_CO_URL_TEMPLATE", hub.endpoint + "/{repo_id}/resolve/{revision}/{filename}"
    )
    monkeypatch.setattr(hf_constants, "HF_HUB_DISABLE_XET", True)
    # No cached login of the machine may leak in: the token comes from HF_TOKEN only.
    monkeypatch.setattr(hf_constants, "HF_TOKEN_PATH", str(hf_home / "token"))
    monkeypatch.setattr(hf_constants, "HF_STORED_TOKENS_PATH", str(hf_home / "stored_tokens"))
    for key, value in hub.client_env(str(hf_home)).items():
        monkeypatch.setenv(key, value)
    try:
        yield hub
    finally:
        hub.stop()


__all__ = ["FakeHub", "fake_hub", "git_blob_sha1"]
