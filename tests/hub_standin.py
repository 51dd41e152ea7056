"""A stand-in for the Hugging Face Hub's file API on 127.0.0.1, for tests: point HF_ENDPOINT at `hub.url`.

    with HubStandIn() as hub:
        sha = hub.add_model("org/tiny", files_of(model_dir))                 # public
        hub.add_model("org/gated", {"config.json": b"{}"}, gated_for={"hf_granted"})  # gated: only these tokens
        env = {"HF_ENDPOINT": hub.url, "HF_HUB_OFFLINE": "0", "HF_HOME": str(tmp / "hf")}
        ...
        hub.requests      # (time.time(), method, path) of every request, in order

It answers what huggingface_hub 1.x/2.x asks for, with the status codes and X-Error-Code headers the hub sends:
- GET /api/models/{repo}[/revision/{rev}]       model info: sha, siblings (with sizes)
- GET /api/models/{repo}/tree/{rev}[/{dir}]     the file listing (recursive or not)
- HEAD, GET /{repo}/resolve/{rev}/{file}        a file, with X-Repo-Commit, ETag and Content-Length
A gated repo answers 401 GatedRepo without a token and 403 GatedRepo with a token it does not grant; an unknown
repo answers 401 RepoNotFound (as the hub does for anonymous callers), an unknown revision 404 RevisionNotFound,
an unknown file 404 EntryNotFound. `cached_snapshot` writes a repo into a local HF cache, as a download would;
`catalog_stubs` are stand-ins for the shipped recipes' hub models. `python3 tests/hub_standin.py` serves those
stubs and prints its URL (.ci/light_install.sh). Stdlib only. Not a test module (no test_ prefix).
"""

from __future__ import annotations

import hashlib
import json
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

ROOT = Path(__file__).resolve().parents[1]
EMPTY_SAFETENSORS = (2).to_bytes(8, "little") + b"{}"  # a header of length 2, no tensors


@dataclass
class HubRepo:
    sha: str
    files: dict[str, bytes]
    gated_for: set[str] | None = None  # None: public; else the tokens granted access
    branches: dict[str, str] = field(default_factory=dict)


def files_of(directory: Path) -> dict[str, bytes]:
    """Every file under `directory`, by its path relative to it."""
    return {str(path.relative_to(directory)): path.read_bytes() for path in sorted(directory.rglob("*"))
            if path.is_file()}


def catalog_stubs() -> dict[str, dict[str, bytes]]:
    """A stub repo for every hub model of the shipped catalog: its config.json and an empty safetensors file (what
    the launch-time check looks at; nothing here can load them)."""
    import re

    stubs: dict[str, dict[str, bytes]] = {}
    for model_yaml in sorted((ROOT / "recipes").glob("*/model.yaml")):
        text = model_yaml.read_text()
        name = re.search(r"^  name_or_path: (\S+)$", text, re.M)
        if name is None or name.group(1).startswith((".", "/")) or re.search(r"^  init: random$", text, re.M):
            continue
        stubs[name.group(1)] = {"config.json": (model_yaml.parent / "config.json").read_bytes(),
                                "model.safetensors": EMPTY_SAFETENSORS}
    return stubs


def commit_sha(repo_id: str, files: dict[str, bytes]) -> str:
    digest = hashlib.sha1(repo_id.encode())
    for name in sorted(files):
        digest.update(name.encode() + hashlib.sha256(files[name]).digest())
    return digest.hexdigest()


def cached_snapshot(cache: Path, repo_id: str, files: dict[str, bytes], revision: str = "main") -> str:
    """Write `files` into the HF cache `cache` (HF_HUB_CACHE) as a download of `repo_id`@`revision` would."""
    sha = commit_sha(repo_id, files)
    repo = cache / f"models--{repo_id.replace('/', '--')}"
    snapshot = repo / "snapshots" / sha
    for name, content in files.items():
        blob = repo / "blobs" / hashlib.sha256(content).hexdigest()
        blob.parent.mkdir(parents=True, exist_ok=True)
        blob.write_bytes(content)
        target = snapshot / name
        target.parent.mkdir(parents=True, exist_ok=True)
        if not target.exists():
            target.symlink_to(blob)
    (repo / "refs").mkdir(exist_ok=True)
    (repo / "refs" / revision).write_text(sha)
    return sha


class HubStandIn:
    def __init__(self) -> None:
        self.repos: dict[str, HubRepo] = {}
        self.requests: list[tuple[float, str, str]] = []
        hub = self

        class Handler(BaseHTTPRequestHandler):
            def do_HEAD(self) -> None:  # noqa: N802 - http.server's naming
                hub.answer(self, head=True)

            def do_GET(self) -> None:  # noqa: N802 - http.server's naming
                hub.answer(self, head=False)

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def add_model(self, repo_id: str, files: dict[str, bytes], gated_for: set[str] | None = None) -> str:
        sha = commit_sha(repo_id, files)
        self.repos[repo_id] = HubRepo(sha, files, gated_for, {"main": sha})
        return sha

    def downloads(self) -> dict[str, int]:
        """GET requests per file path (HEADs and API calls not counted)."""
        counts: dict[str, int] = {}
        for _, method, path in self.requests:
            if method == "GET" and "/resolve/" in path:
                counts[path] = counts.get(path, 0) + 1
        return counts

    def __enter__(self) -> HubStandIn:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()

    # --- the API ---

    def answer(self, request: BaseHTTPRequestHandler, head: bool) -> None:
        url = urlsplit(request.path)
        path = unquote(url.path)
        self.requests.append((time.time(), "HEAD" if head else "GET", path))
        if path.startswith("/api/models/"):
            rest = path.removeprefix("/api/models/")
            for kind in ("/revision/", "/tree/"):
                if kind in rest:
                    repo_id, _, tail = rest.partition(kind)
                    return self._api(request, repo_id, kind.strip("/"), tail, parse_qs(url.query))
            return self._api(request, rest, "revision", "main", {})  # model info at the default branch
        if "/resolve/" in path:
            repo_id, _, tail = path.lstrip("/").partition("/resolve/")
            revision, _, name = tail.partition("/")
            return self._file(request, repo_id, revision, name, head)
        return self._error(request, 404, "", "not found")

    def _open(self, request: BaseHTTPRequestHandler, repo_id: str, revision: str) -> HubRepo | None:
        """The repo at `revision` if the caller may read it; else the hub's error is sent and None returned."""
        repo = self.repos.get(repo_id)
        if repo is None:
            self._error(request, 401, "RepoNotFound", "Repository not found")
            return None
        if repo.gated_for is not None:
            token = request.headers.get("Authorization", "").removeprefix("Bearer ").strip()
            if not token:
                self._error(request, 401, "GatedRepo", f"Access to model {repo_id} is restricted. You must have access "
                                                       "to it and be authenticated to access it. Please log in.")
                return None
            if token not in repo.gated_for:
                self._error(request, 403, "GatedRepo", f"Access to model {repo_id} is restricted and you are not in "
                                                       "the authorized list.")
                return None
        if revision != repo.sha and repo.branches.get(revision) != repo.sha:
            self._error(request, 404, "RevisionNotFound", f"Invalid rev id: {revision}")
            return None
        return repo

    def _api(self, request: BaseHTTPRequestHandler, repo_id: str, kind: str, tail: str,
             query: dict[str, list[str]]) -> None:
        revision, _, directory = tail.partition("/")
        repo = self._open(request, repo_id, revision)
        if repo is None:
            return
        if kind == "revision":
            siblings = [{"rfilename": name, "size": len(content)} for name, content in sorted(repo.files.items())]
            return self._json(request, {"id": repo_id, "modelId": repo_id, "sha": repo.sha, "private": False,
                                        "gated": "manual" if repo.gated_for is not None else False,
                                        "siblings": siblings})
        recursive = query.get("recursive", ["False"])[0].lower() == "true"
        prefix = f"{directory.strip('/')}/" if directory.strip("/") else ""
        entries: dict[str, dict[str, Any]] = {}
        for name, content in sorted(repo.files.items()):
            if not name.startswith(prefix):
                continue
            parts = name[len(prefix):].split("/")
            for depth in range(1, len(parts)):  # the folders on the way
                folder = prefix + "/".join(parts[:depth])
                if recursive or depth == 1:
                    entries.setdefault(folder, {"type": "directory", "oid": "0" * 40, "size": 0, "path": folder})
            if recursive or len(parts) == 1:
                entries[name] = {"type": "file", "oid": hashlib.sha1(content).hexdigest(), "size": len(content),
                                 "path": name}
        if prefix and not entries:
            return self._error(request, 404, "EntryNotFound", f"{directory} does not exist")
        self._json(request, list(entries.values()))

    def _file(self, request: BaseHTTPRequestHandler, repo_id: str, revision: str, name: str, head: bool) -> None:
        repo = self._open(request, repo_id, revision)
        if repo is None:
            return
        content = repo.files.get(name)
        if content is None:
            return self._error(request, 404, "EntryNotFound", f"{name} does not exist at {revision}")
        request.send_response(200)
        request.send_header("X-Repo-Commit", repo.sha)
        request.send_header("ETag", f'"{hashlib.sha256(content).hexdigest()}"')
        request.send_header("Content-Length", str(len(content)))
        request.send_header("Content-Type", "application/octet-stream")
        request.end_headers()
        if not head:
            request.wfile.write(content)

    def _json(self, request: BaseHTTPRequestHandler, payload: Any) -> None:
        data = json.dumps(payload).encode()
        request.send_response(200)
        request.send_header("Content-Type", "application/json")
        request.send_header("Content-Length", str(len(data)))
        request.end_headers()
        request.wfile.write(data)

    def _error(self, request: BaseHTTPRequestHandler, status: int, code: str, message: str) -> None:
        data = json.dumps({"error": message}).encode()
        request.send_response(status)
        if code:
            request.send_header("X-Error-Code", code)
        request.send_header("X-Error-Message", message)
        request.send_header("Content-Type", "application/json")
        request.send_header("Content-Length", str(len(data)))
        request.end_headers()
        if request.command != "HEAD":
            request.wfile.write(data)


if __name__ == "__main__":  # for shell scripts: serve the catalog's stubs, print the URL, run until killed
    import signal
    import sys

    with HubStandIn() as standin:
        for repo_id, files in catalog_stubs().items():
            standin.add_model(repo_id, files)
        print(standin.url, flush=True)
        signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
        signal.pause()
