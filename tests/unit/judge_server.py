"""A small deterministic judge for tests: an OpenAI-compatible POST /v1/chat/completions on 127.0.0.1.

    with JudgeServer(key="sk-test", mode="content") as judge:   # judge.url → http://127.0.0.1:PORT/v1
        ...                                                    # judge.asked: (question, first, second) per request

Modes: "content" prefers the answer with the smaller sha256 (position-independent: both orders agree), "first"
always answers [[A]] (maximally position-biased), "broken" answers HTTP 500. A request without the expected
Bearer key gets 401. GET /v1/models lists one model. Not a test module (no test_ prefix).
"""

from __future__ import annotations

import hashlib
import json
import re
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

ANSWER = re.compile(r"\[User Question\]\n(.*)\n\n\[The Start of Assistant A's Answer\]\n(.*)\n\[The End of Assistant "
                    r"A's Answer\]\n\n\[The Start of Assistant B's Answer\]\n(.*)\n\[The End of Assistant B's Answer\]",
                    re.S)


class JudgeServer:
    def __init__(self, key: str, mode: str = "content") -> None:
        self.key = key
        self.mode = mode
        self.asked: list[tuple[str, str, str]] = []
        self.authorizations: list[str] = []
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 - http.server's naming
                if self.path != "/v1/models":
                    return self._send(404, {"error": "not found"})
                if self.headers.get("Authorization") != f"Bearer {server.key}":
                    return self._send(401, {"error": "bad key"})
                if server.mode == "broken":
                    return self._send(500, {"error": "down"})
                return self._send(200, {"object": "list", "data": [{"id": "tiny-judge", "object": "model"}]})

            def do_POST(self) -> None:  # noqa: N802 - http.server's naming
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                server.authorizations.append(self.headers.get("Authorization", ""))
                if self.path != "/v1/chat/completions":
                    return self._send(404, {"error": "not found"})
                if self.headers.get("Authorization") != f"Bearer {server.key}":
                    return self._send(401, {"error": "bad key"})
                if server.mode == "broken":
                    return self._send(500, {"error": "down"})
                question, first, second = ANSWER.search(body["messages"][-1]["content"]).groups()  # type: ignore[union-attr]
                server.asked.append((question, first, second))
                return self._send(200, {"choices": [{"message": {"role": "assistant",
                                                                 "content": server.verdict(first, second)}}]})

            def _send(self, status: int, payload: dict[str, Any]) -> None:
                data = json.dumps(payload).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args: Any) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    def verdict(self, first: str, second: str) -> str:
        if self.mode == "first":
            return "Assistant A is better. [[A]]"
        a, b = (hashlib.sha256(text.encode()).hexdigest() for text in (first, second))
        return "Equal. [[C]]" if a == b else f"My verdict: [[{'A' if a < b else 'B'}]]"

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}/v1"

    def __enter__(self) -> JudgeServer:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=10)
