"""A local stand-in for the Hugging Face Hub API, for push tests that must never leave loopback.

It answers the requests huggingface_hub's HfApi makes for create_repo, create_branch, repo_info,
list_repo_refs, whoami, README metadata validation, preupload (every file "regular", so content
arrives inline) and the NDJSON commit, and records what it saw: every request (method, path,
Authorization header) and every commit's files (path -> bytes).

Failure modes, to check how align reports them: `valid_token` (any other token gets 401, as the Hub
answers a bad token), `forbid_create` (403 on repo creation, as for someone else's namespace),
`commit_failures` (statuses returned by the first commit attempts, e.g. [429, 429]).
"""

from __future__ import annotations

import base64
import hashlib
import json
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import unquote, urlsplit


@dataclass
class Commit:
    repo_id: str
    revision: str
    summary: str
    description: str
    files: dict[str, bytes]
    oid: str


@dataclass
class FakeHub:
    valid_token: str | None = None
    forbid_create: bool = False
    commit_failures: list[int] = field(default_factory=list)

    def __post_init__(self):
        self.requests: list[dict] = []
        self.commits: list[Commit] = []
        self.repos: dict[str, dict] = {}  # repo_id -> {"private": bool, "branches": {name: oid}}
        self.lock = threading.Lock()
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    # -- lifecycle

    def start(self) -> "FakeHub":
        hub = self

        class Handler(_Handler):
            pass

        Handler.hub = hub
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.02},
                                        daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    def __enter__(self) -> "FakeHub":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    @property
    def url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    # -- what tests read

    def requests_to(self, fragment: str, method: str | None = None) -> list[dict]:
        return [r for r in self.requests
                if fragment in r["path"] and (method is None or r["method"] == method)]

    @property
    def authorizations(self) -> set[str | None]:
        return {r["authorization"] for r in self.requests}

    def files(self, repo_id: str, revision: str = "main") -> dict[str, bytes]:
        """The repo's content at `revision` after all commits."""
        out: dict[str, bytes] = {}
        for commit in self.commits:
            if commit.repo_id == repo_id and commit.revision == revision:
                out.update(commit.files)
        return out


class _Handler(BaseHTTPRequestHandler):
    hub: FakeHub
    protocol_version = "HTTP/1.0"  # one request per connection: nothing lingers after stop()

    def log_message(self, *args):  # keep test output quiet
        pass

    # -- plumbing

    def _body(self) -> bytes:
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
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length else b""

    def _send(self, status: int, payload=None, *, error_code: str | None = None,
              error_message: str | None = None) -> None:
        body = json.dumps(payload if payload is not None else {}).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.send_header("X-Request-Id", "fake-request")
        if error_code:
            self.send_header("X-Error-Code", error_code)
        if error_message:
            self.send_header("X-Error-Message", error_message)
        self.end_headers()
        self.wfile.write(body)

    def _error(self, status: int, message: str, code: str | None = None) -> None:
        self._send(status, {"error": message}, error_code=code, error_message=message)

    def do_GET(self):
        self._dispatch("GET")

    def do_POST(self):
        self._dispatch("POST")

    def do_HEAD(self):
        self._dispatch("HEAD")

    def _dispatch(self, method: str) -> None:
        hub = self.hub
        path = urlsplit(self.path).path
        body = self._body() if method == "POST" else b""
        auth = self.headers.get("Authorization")
        with hub.lock:
            hub.requests.append({"method": method, "path": path, "authorization": auth})
        if hub.valid_token is not None and auth != f"Bearer {hub.valid_token}":
            return self._error(401, "Invalid credentials in Authorization header")
        try:
            self._route(method, path, body)
        except Exception as err:  # a bug here should show as a 500, not hang the client
            self._error(500, f"fake hub error: {type(err).__name__}: {err}")

    # -- the API

    def _route(self, method: str, path: str, body: bytes) -> None:
        hub = self.hub
        parts = [unquote(p) for p in path.strip("/").split("/")]
        if method == "POST" and path == "/api/repos/create":
            return self._create_repo(json.loads(body or b"{}"))
        if method == "GET" and path == "/api/whoami-v2":
            return self._send(200, {"type": "user", "name": "tester", "orgs": [],
                                    "auth": {"accessToken": {"role": "write"}}})
        if method == "POST" and path == "/api/validate-yaml":
            return self._send(200, {"errors": [], "warnings": []})
        if len(parts) >= 4 and parts[:2] == ["api", "models"]:
            repo_id = f"{parts[2]}/{parts[3]}"
            rest = parts[4:]
            with hub.lock:
                repo = hub.repos.get(repo_id)
            if repo is None:
                return self._error(404, "Repository not found", "RepoNotFound")
            if method == "GET" and (not rest or rest[0] == "revision"):
                return self._send(200, {"id": repo_id, "modelId": repo_id, "private": repo["private"],
                                        "sha": repo["branches"]["main"], "siblings": []})
            if method == "GET" and rest == ["refs"]:
                branches = [{"name": n, "ref": f"refs/heads/{n}", "targetCommit": oid}
                            for n, oid in repo["branches"].items()]
                return self._send(200, {"branches": branches, "converts": [], "tags": [],
                                        "pullRequests": []})
            if method == "POST" and len(rest) == 2 and rest[0] == "branch":
                return self._create_branch(repo, rest[1], json.loads(body or b"{}"))
            if method == "POST" and len(rest) == 2 and rest[0] == "preupload":
                return self._preupload(repo, rest[1], json.loads(body))
            if method == "POST" and len(rest) == 2 and rest[0] == "commit":
                return self._commit(repo_id, repo, rest[1], body)
        return self._error(404, f"fake hub does not know {method} {path}")

    def _create_repo(self, payload: dict) -> None:
        hub = self.hub
        org, name = payload.get("organization"), payload.get("name")
        repo_id = f"{org or 'tester'}/{name}"
        if hub.forbid_create:
            return self._error(403, f'You don\'t have the rights to create a model under the '
                                    f'namespace "{org}"')
        with hub.lock:
            if repo_id in hub.repos:
                return self._send(409, {"error": "You already created this model repo",
                                        "url": f"{hub.url}/{repo_id}"},
                                  error_message="You already created this model repo")
            hub.repos[repo_id] = {"private": payload.get("visibility") == "private",
                                  "branches": {"main": _oid(repo_id.encode())}}
        self._send(200, {"url": f"{hub.url}/{repo_id}", "name": repo_id, "id": _oid(b"id")})

    def _create_branch(self, repo: dict, branch: str, payload: dict) -> None:
        with self.hub.lock:
            if branch in repo["branches"]:
                return self._error(409, "Reference already exists")
            start = payload.get("startingPoint") or "main"
            repo["branches"][branch] = repo["branches"].get(start, repo["branches"]["main"])
        self._send(200, {})

    def _preupload(self, repo: dict, revision: str, payload: dict) -> None:
        if revision not in repo["branches"]:
            return self._error(404, "Invalid rev id", "RevisionNotFound")
        files = [{"path": f["path"], "uploadMode": "regular", "shouldIgnore": False, "oid": None}
                 for f in payload.get("files", [])]
        self._send(200, {"files": files, "commitOid": repo["branches"][revision]})

    def _commit(self, repo_id: str, repo: dict, revision: str, body: bytes) -> None:
        hub = self.hub
        with hub.lock:
            if hub.commit_failures:
                status = hub.commit_failures.pop(0)
                message = "Too many requests" if status == 429 else "Internal error"
                return self._error(status, message)
        if revision not in repo["branches"]:
            return self._error(404, "Invalid rev id", "RevisionNotFound")
        lines = [json.loads(line) for line in body.splitlines() if line.strip()]
        header = lines[0]["value"] if lines and lines[0].get("key") == "header" else {}
        files: dict[str, bytes] = {}
        for line in lines[1:]:
            if line.get("key") != "file":
                return self._error(400, f"fake hub only takes inline files, got {line.get('key')}")
            value = line["value"]
            files[value["path"]] = base64.b64decode(value["content"])
        oid = _oid(body)
        with hub.lock:
            hub.commits.append(Commit(repo_id, revision, header.get("summary", ""),
                                      header.get("description", ""), files, oid))
            repo["branches"][revision] = oid
        self._send(200, {"commitUrl": f"{hub.url}/{repo_id}/commit/{oid}", "commitOid": oid,
                         "pullRequestUrl": None, "success": True})


def _oid(data: bytes) -> str:
    return hashlib.sha1(data).hexdigest()


def dead_endpoint() -> str:
    """An http URL on loopback where nothing listens (the port was just freed)."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"http://127.0.0.1:{port}"
