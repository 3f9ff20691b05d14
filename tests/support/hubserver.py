"""A Hugging Face Hub look-alike on 127.0.0.1 for tests.

It speaks the part of the Hub protocol that the real ``huggingface_hub`` client
(2.4.0) and timm use to download files, so tests exercise the real client code:

- ``HEAD`` / ``GET`` ``[/datasets|/spaces]/{repo_id}/resolve/{revision}/{filename}``
  with ``X-Repo-Commit``, ``ETag`` (git blob id, quoted) and, for LFS files,
  ``X-Linked-Etag`` (sha256 of the content, which becomes the cache blob name) and
  ``X-Linked-Size``; ``GET`` honours ``Range: bytes=N-`` / ``bytes=N-M`` (206).
- ``GET /api/{models|datasets|spaces}/{repo_id}[/revision/{revision}]`` (repo info,
  used by ``snapshot_download`` / ``model_info``) and
  ``GET /api/{type}s/{repo_id}/tree/{revision}[/{path}]`` (tree listing, which lets
  ``snapshot_download`` write ``trees/<sha>.json`` for real).
- Errors the way the Hub reports them: ``X-Error-Code: RepoNotFound`` (401),
  ``RevisionNotFound`` (404), ``EntryNotFound`` (404, with ``X-Repo-Commit`` so the
  client writes its ``.no_exist`` marker); anything else is a plain JSON 404.

No redirects are issued: the file is served from the resolve URL itself, which the
client accepts (``location`` falls back to the request URL).

Fault switches for network tests (set on a dedicated server, not the shared session one):
``portal`` (answer 200 HTML without hub headers, like a captive portal: the client
raises ``FileMetadataError``), ``fail_status`` (answer every request with that status),
``delay`` (seconds to wait before answering, capped at 30), ``stall_after`` (file
bodies stop after that many bytes and the connection hangs until the switch is cleared,
the server stops, or 30 s pass: an interrupted download).

Usage::

    with HubServer() as hub:
        info = hub.add_file("org/tiny", "config.json", b"{}", lfs=False)
        env["HF_ENDPOINT"] = hub.url
        ...
        assert ("HEAD", "/org/tiny/resolve/main/config.json") in hub.requests
"""

from __future__ import annotations

import hashlib
import json
import re
import threading
import time
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import quote, unquote, urlsplit

__all__ = ["HubServer", "ServedFile", "RequestRecord", "commit_sha", "git_blob_id"]

_REPO_TYPES = {"model": "models", "dataset": "datasets", "space": "spaces"}
_TYPE_FROM_PLURAL = {v: k for k, v in _REPO_TYPES.items()}
_MAX_DELAY = 30.0
_CHUNK = 1 << 20


def commit_sha(repo_id: str, revision: str = "main", repo_type: str = "model") -> str:
    """The fixed 40-hex commit id the server reports for ``repo_id`` at ``revision``."""
    return hashlib.sha1(f"{repo_type}:{repo_id}@{revision}".encode()).hexdigest()


def git_blob_id(data: bytes) -> str:
    """Git's blob id of ``data`` (what the Hub sends as ETag for non-LFS files)."""
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


@dataclass(frozen=True)
class ServedFile:
    """One file the server serves, with the identifiers the client will see."""

    repo_id: str
    repo_type: str
    revision: str
    filename: str
    data: bytes
    lfs: bool
    commit: str
    sha256: str
    git_oid: str

    @property
    def size(self) -> int:
        return len(self.data)

    @property
    def etag(self) -> str:
        """The blob name the client stores the file under in ``blobs/``."""
        return self.sha256 if self.lfs else self.git_oid

    @property
    def repo_folder(self) -> str:
        """The cache folder name, e.g. ``models--org--name``."""
        return f"{_REPO_TYPES[self.repo_type]}--{self.repo_id.replace('/', '--')}"

    def __repr__(self) -> str:  # keep test failure output short (no 80 MiB of bytes)
        return (
            f"ServedFile({self.repo_type}:{self.repo_id}@{self.revision}/{self.filename},"
            f" size={self.size}, lfs={self.lfs}, commit={self.commit[:8]}, etag={self.etag[:12]})"
        )


@dataclass(frozen=True)
class RequestRecord:
    """One request the server answered."""

    method: str
    path: str
    headers: dict
    status: int


class _Repo:
    def __init__(self, repo_type: str, repo_id: str):
        self.repo_type = repo_type
        self.repo_id = repo_id
        self.revisions: dict[str, dict[str, ServedFile]] = {}

    def commit_of(self, revision: str) -> str:
        return commit_sha(self.repo_id, revision, self.repo_type)

    def find_revision(self, revision: str) -> str | None:
        """Branch/tag name for ``revision`` (a name or one of the repo's commit ids)."""
        if revision in self.revisions:
            return revision
        for name in self.revisions:
            if self.commit_of(name) == revision:
                return name
        return None


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "HubServer/1"
    timeout = 30  # idle keep-alive connections end; no handler thread waits forever
    hub: "HubServer"  # set on the subclass built per server

    def log_message(self, format, *args):  # noqa: A002 - silence stderr logging
        pass

    def do_HEAD(self):
        self._dispatch(head=True)

    def do_GET(self):
        self._dispatch(head=False)

    def _other(self):
        self.close_connection = True  # the request body (if any) is not read
        self._dispatch(head=False, allowed=False)

    do_POST = do_PUT = do_DELETE = do_PATCH = do_OPTIONS = _other

    # -- plumbing -------------------------------------------------------------------------
    def _dispatch(self, head: bool, allowed: bool = True) -> None:
        hub = self.hub
        try:
            delay = min(max(float(hub.delay or 0), 0.0), _MAX_DELAY)
            if delay:
                hub._stopping.wait(delay)
            if hub.portal:
                body = b"<html><body>Please log in to the network.</body></html>"
                self._send(200, {"Content-Type": "text/html"}, body, head)
            elif hub.fail_status:
                self._send_json(
                    int(hub.fail_status), {"error": "Service unavailable"}, head,
                    {"X-Error-Message": "Service unavailable"},
                )
            elif not allowed:
                self._error(405, None, "Method not allowed", head, {"Connection": "close"})
            else:
                self._route(head)
        except (BrokenPipeError, ConnectionResetError):
            self.close_connection = True

    def send_response(self, code, message=None):
        # Log before the response leaves, so a client that got its answer always finds
        # its request in `hub.requests`.
        headers = getattr(self, "headers", None)
        self.hub._record(self.command or "", getattr(self, "path", ""),
                         dict(headers.items()) if headers is not None else {}, code)
        super().send_response(code, message)

    def _send(self, status: int, headers: dict, body: bytes, head: bool, length: int | None = None) -> None:
        self.send_response(status)
        for key, value in headers.items():
            self.send_header(key, str(value))
        self.send_header("Content-Length", str(len(body) if length is None else length))
        self.end_headers()
        if not head and body:
            self.wfile.write(body)

    def _send_json(self, status: int, obj, head: bool, headers: dict | None = None) -> None:
        body = json.dumps(obj).encode()
        self._send(status, {"Content-Type": "application/json", **(headers or {})}, body, head)

    def _error(self, status: int, code: str | None, message: str, head: bool, extra: dict | None = None) -> None:
        headers = {"X-Error-Message": message, **(extra or {})}
        if code:
            headers["X-Error-Code"] = code
        self._send_json(status, {"error": message}, head, headers)

    # -- routing --------------------------------------------------------------------------
    def _route(self, head: bool) -> None:
        raw_path = urlsplit(self.path).path
        if raw_path.startswith("/api/"):
            return self._route_api(raw_path[len("/api/"):], head)
        if "/resolve/" in raw_path:
            return self._route_resolve(raw_path, head)
        self._error(404, None, "Not Found", head)

    def _repo_or_error(self, repo_type: str, repo_id: str, head: bool) -> _Repo | None:
        repo = self.hub._get_repo(repo_type, repo_id)
        if repo is None:
            self._error(401, "RepoNotFound", "Repository not found", head)
        return repo

    def _revision_or_error(self, repo: _Repo, revision: str, head: bool) -> str | None:
        name = repo.find_revision(revision)
        if name is None:
            self._error(404, "RevisionNotFound", f"Invalid rev id: {revision}", head)
        return name

    def _route_resolve(self, raw_path: str, head: bool) -> None:
        left, _, right = raw_path.lstrip("/").partition("/resolve/")
        repo_type = "model"
        for plural in ("datasets", "spaces"):
            if left.startswith(plural + "/"):
                repo_type, left = _TYPE_FROM_PLURAL[plural], left[len(plural) + 1:]
        repo_id = unquote(left)
        quoted_rev, _, quoted_file = right.partition("/")
        revision, filename = unquote(quoted_rev), unquote(quoted_file)
        repo = self._repo_or_error(repo_type, repo_id, head)
        if repo is None:
            return
        name = self._revision_or_error(repo, revision, head)
        if name is None:
            return
        commit = repo.commit_of(name)
        served = repo.revisions[name].get(filename)
        if served is None:
            self._error(404, "EntryNotFound", f"{filename} does not exist on \"{revision}\"", head,
                        {"X-Repo-Commit": commit})
            return
        self._serve_file(served, head)

    def _serve_file(self, served: ServedFile, head: bool) -> None:
        headers = {
            "X-Repo-Commit": served.commit,
            "ETag": f'"{served.etag}"',
            "Accept-Ranges": "bytes",
            "Content-Type": "application/octet-stream",
            "Content-Disposition": f'inline; filename="{served.filename.rsplit("/", 1)[-1]}"',
        }
        if served.lfs:
            headers["X-Linked-Etag"] = f'"{served.sha256}"'
            headers["X-Linked-Size"] = str(served.size)
        data, size = served.data, served.size
        start, end = 0, size - 1
        status = 200
        range_header = self.headers.get("Range")
        if range_header and not head:
            match = re.fullmatch(r"\s*bytes=(\d+)-(\d*)\s*", range_header)
            if match is None:
                return self._error(416, None, f"Unsupported range: {range_header}", head,
                                   {"Content-Range": f"bytes */{size}"})
            start = int(match.group(1))
            if match.group(2):
                end = min(int(match.group(2)), size - 1)
            if start >= size or start > end:
                return self._error(416, None, "Requested range not satisfiable", head,
                                   {"Content-Range": f"bytes */{size}"})
            status = 206
            headers["Content-Range"] = f"bytes {start}-{end}/{size}"
        length = end - start + 1 if size else 0
        self.send_response(status)
        for key, value in headers.items():
            self.send_header(key, value)
        self.send_header("Content-Length", str(length))
        self.end_headers()
        if head:
            return
        view = memoryview(data)[start:start + length]
        stall_after = self.hub.stall_after
        limit = length if stall_after is None else min(length, max(int(stall_after) - start, 0))
        for offset in range(0, limit, _CHUNK):
            self.wfile.write(view[offset:min(offset + _CHUNK, limit)])
        if limit < length:
            # Simulate a transfer that stops mid-body: hold the connection open (bounded)
            # until the switch is cleared or the server stops, then drop it.
            self.wfile.flush()
            deadline = time.monotonic() + _MAX_DELAY
            while self.hub.stall_after is not None and time.monotonic() < deadline:
                if self.hub._stopping.wait(0.05):
                    break
            self.close_connection = True

    def _route_api(self, rest: str, head: bool) -> None:
        plural, _, rest = rest.partition("/")
        if plural not in _TYPE_FROM_PLURAL or not rest:
            return self._error(404, None, "Not Found", head)
        repo_type = _TYPE_FROM_PLURAL[plural]
        # repo ids are "name" or "org/name"; find the longest registered prefix
        parts = rest.split("/")
        for n in (2, 1):
            repo_id = unquote("/".join(parts[:n]))
            if self.hub._get_repo(repo_type, repo_id) is not None:
                tail = parts[n:]
                break
        else:
            return self._error(401, "RepoNotFound", "Repository not found", head)
        repo = self.hub._get_repo(repo_type, repo_id)
        if not tail:
            return self._send_info(repo, "main", head)
        if tail[0] == "revision" and len(tail) == 2:
            name = self._revision_or_error(repo, unquote(tail[1]), head)
            return None if name is None else self._send_info(repo, name, head)
        if tail[0] == "tree" and len(tail) >= 2:
            name = self._revision_or_error(repo, unquote(tail[1]), head)
            if name is None:
                return None
            prefix = unquote("/".join(tail[2:]))
            return self._send_tree(repo, name, prefix, head)
        self._error(404, None, "Not Found", head)

    def _send_info(self, repo: _Repo, name: str, head: bool) -> None:
        files = repo.revisions[name]
        siblings = []
        for served in sorted(files.values(), key=lambda f: f.filename):
            sibling = {"rfilename": served.filename, "size": served.size, "blobId": served.git_oid}
            if served.lfs:
                sibling["lfs"] = {"size": served.size, "sha256": served.sha256, "pointerSize": 134}
            siblings.append(sibling)
        self._send_json(200, {
            "_id": repo.commit_of(name)[:24], "id": repo.repo_id, "modelId": repo.repo_id,
            "author": repo.repo_id.split("/")[0] if "/" in repo.repo_id else None,
            "sha": repo.commit_of(name), "private": False, "gated": False, "disabled": False,
            "lastModified": "2024-01-01T00:00:00.000Z", "tags": [], "siblings": siblings,
        }, head)

    def _send_tree(self, repo: _Repo, name: str, prefix: str, head: bool) -> None:
        recursive = "recursive=true" in (urlsplit(self.path).query or "").lower()
        entries, folders = [], set()
        for served in sorted(repo.revisions[name].values(), key=lambda f: f.filename):
            path = served.filename
            if prefix and not path.startswith(prefix.rstrip("/") + "/"):
                continue
            rel = path[len(prefix.rstrip("/")) + 1:] if prefix else path
            if "/" in rel and not recursive:
                folder = (prefix.rstrip("/") + "/" if prefix else "") + rel.split("/", 1)[0]
                folders.add(folder)
                continue
            if recursive:
                pieces = rel.split("/")[:-1]
                for i in range(1, len(pieces) + 1):
                    folders.add((prefix.rstrip("/") + "/" if prefix else "") + "/".join(pieces[:i]))
            entry = {"type": "file", "oid": served.git_oid, "size": served.size, "path": path}
            if served.lfs:
                entry["lfs"] = {"oid": served.sha256, "size": served.size, "pointerSize": 134}
            entries.append(entry)
        tree = [{"type": "directory", "oid": git_blob_id(f.encode()), "size": 0, "path": f}
                for f in sorted(folders)] + entries
        self._send_json(200, tree, head)


class HubServer:
    """A Hub look-alike serving in-memory files on ``http://127.0.0.1:<port>``.

    Starts on construction (port 0, daemon thread); use as a context manager or call
    :meth:`stop`. Thread-safe: files may be added while clients download.
    """

    def __init__(self, host: str = "127.0.0.1"):
        self._lock = threading.Lock()
        self._repos: dict[tuple[str, str], _Repo] = {}
        self._log: list[RequestRecord] = []
        self.portal = False
        self.fail_status: int | None = None
        self.delay = 0.0
        self.stall_after: int | None = None
        self._stopping = threading.Event()
        handler = type("_BoundHandler", (_Handler,), {"hub": self})
        self._httpd = ThreadingHTTPServer((host, 0), handler)
        self._httpd.daemon_threads = True
        self.host, self.port = self._httpd.server_address[:2]
        self.url = f"http://{self.host}:{self.port}"
        self._thread = threading.Thread(
            target=self._httpd.serve_forever, kwargs={"poll_interval": 0.1},
            name=f"hubserver-{self.port}", daemon=True,
        )
        self._thread.start()
        self._stopped = False

    # -- content --------------------------------------------------------------------------
    def add_file(self, repo_id: str, filename: str, data: bytes, revision: str = "main",
                 lfs: bool = True, repo_type: str = "model") -> ServedFile:
        """Serve ``data`` as ``filename`` of ``repo_id`` at ``revision``; returns what the client will see."""
        if repo_type not in _REPO_TYPES:
            raise ValueError(f"repo_type must be one of {sorted(_REPO_TYPES)}, got {repo_type!r}")
        data = bytes(data)
        served = ServedFile(
            repo_id=repo_id, repo_type=repo_type, revision=revision, filename=filename, data=data,
            lfs=bool(lfs), commit=commit_sha(repo_id, revision, repo_type),
            sha256=hashlib.sha256(data).hexdigest(), git_oid=git_blob_id(data),
        )
        with self._lock:
            repo = self._repos.setdefault((repo_type, repo_id), _Repo(repo_type, repo_id))
            repo.revisions.setdefault(revision, {})[filename] = served
        return served

    def add_repo(self, repo_id: str, revision: str = "main", repo_type: str = "model") -> str:
        """Make an (empty) repo/revision exist; returns its commit id."""
        with self._lock:
            repo = self._repos.setdefault((repo_type, repo_id), _Repo(repo_type, repo_id))
            repo.revisions.setdefault(revision, {})
        return commit_sha(repo_id, revision, repo_type)

    def remove_file(self, repo_id: str, filename: str, revision: str = "main", repo_type: str = "model") -> None:
        """Stop serving a file (the repo and revision stay)."""
        with self._lock:
            self._repos[(repo_type, repo_id)].revisions[revision].pop(filename, None)

    def file(self, repo_id: str, filename: str, revision: str = "main", repo_type: str = "model") -> ServedFile:
        """The :class:`ServedFile` previously added."""
        with self._lock:
            return self._repos[(repo_type, repo_id)].revisions[revision][filename]

    def commit(self, repo_id: str, revision: str = "main", repo_type: str = "model") -> str:
        """Commit id reported for ``repo_id`` at ``revision`` (same as :func:`commit_sha`)."""
        return commit_sha(repo_id, revision, repo_type)

    def resolve_url(self, repo_id: str, filename: str, revision: str = "main", repo_type: str = "model") -> str:
        """The URL the client requests for a file (what ``hf_hub_url`` builds)."""
        prefix = "" if repo_type == "model" else _REPO_TYPES[repo_type] + "/"
        return f"{self.url}/{prefix}{repo_id}/resolve/{quote(revision, safe='')}/{quote(filename)}"

    def _get_repo(self, repo_type: str, repo_id: str) -> _Repo | None:
        with self._lock:
            return self._repos.get((repo_type, repo_id))

    # -- request log ----------------------------------------------------------------------
    def _record(self, method: str, path: str, headers: dict, status: int) -> None:
        with self._lock:
            self._log.append(RequestRecord(method, path, headers, status))

    @property
    def requests(self) -> list[tuple[str, str]]:
        """Snapshot of ``(method, path)`` for every request answered so far, in order."""
        with self._lock:
            return [(r.method, r.path) for r in self._log]

    @property
    def log(self) -> list[RequestRecord]:
        """Snapshot of the full request records (method, path, headers, status)."""
        with self._lock:
            return list(self._log)

    def requests_for(self, needle: str) -> list[tuple[str, str]]:
        """Requests whose path contains ``needle`` (e.g. a repo id)."""
        return [r for r in self.requests if needle in r[1]]

    def clear_requests(self) -> None:
        with self._lock:
            self._log.clear()

    # -- lifecycle ------------------------------------------------------------------------
    def stop(self) -> None:
        """Stop serving and close the listening socket (idempotent)."""
        if self._stopped:
            return
        self._stopped = True
        self._stopping.set()
        self._httpd.shutdown()
        self._httpd.server_close()
        self._thread.join(timeout=5)

    def __enter__(self) -> "HubServer":
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    def __repr__(self) -> str:
        return f"HubServer({self.url}, repos={sorted(k[1] for k in self._repos)})"

