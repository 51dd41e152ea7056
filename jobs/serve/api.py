"""The HTTP side of `launch serve`: an OpenAI-compatible API and a page to try it, on the standard library's
ThreadingHTTPServer.

    server = ApiServer(("127.0.0.1", 8000))            # listening (OSError when the port is taken)
    server.api = Api(engine, prompter, ["my-run"])     # then the model loads; then
    server.serve_forever()

    GET  /                       the page (jobs/serve/page.html): a prompt box, a button, the streamed completion
    GET  /v1/models              the run's name (and /v1/models/NAME)
    POST /v1/completions         prompt (+ suffix: fill in the middle), max_tokens, temperature, top_p, stop, seed,
                                 stream; usage counts
    POST /v1/chat/completions    messages through the tokenizer's chat template; the same options

Streams are Server-Sent Events: `data: {chunk}` lines, then `data: [DONE]`. Errors are OpenAI's JSON shape (400
naming the bad field, 404 for an unknown model or path, 500 when the generation failed). Request bodies and headers
(an API key the client sends) are never logged; one line per request goes to stderr.
"""

from __future__ import annotations

import html
import json
import sys
import time
from collections.abc import Generator, Iterator, Sequence
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from jobs.serve import protocol
from jobs.serve.engine import Engine, respond
from jobs.serve.prompts import Prompter
from jobs.serve.protocol import ApiError
from jobs.spec.redaction import redact_text

MAX_BODY_BYTES = 8 * 1024 * 1024
PAGE = Path(__file__).with_name("page.html")


class Api:
    """What the handler calls: requests in, JSON bodies or stream chunks out."""

    def __init__(self, engine: Engine, prompter: Prompter, names: Sequence[str]) -> None:
        self.engine, self.prompter = engine, prompter
        self.names = tuple(names)  # the first is the one listed; the others (experiment/name) are accepted too
        self.created = int(time.time())
        self.page = PAGE.read_text(encoding="utf-8").replace("{{model}}", html.escape(self.names[0]))

    def check_model(self, model: str | None) -> None:
        if model is not None and model not in self.names:
            raise ApiError(404, f"model: {model!r} is not served here; this server serves {self.names[0]!r}",
                           "model", "model_not_found")

    def models(self, path: str) -> dict[str, Any]:
        name = path.removeprefix("/v1/models").strip("/")
        if not name:
            return protocol.models_body(self.names[:1], self.created)
        self.check_model(name)
        return protocol.model_card(name, self.created)

    def completion(self, body: Any) -> tuple[Generator[dict[str, Any]] | dict[str, Any], bool]:
        request = protocol.parse_completion(body)
        self.check_model(request.model)
        prompt = self.prompter.completion(request)
        request_id, model = protocol.new_id("cmpl"), self.names[0]
        pieces = respond(self.engine, prompt, request.sampling)
        if not request.stream:
            text, finish, tokens = _whole(pieces)
            return protocol.completion_body(request_id, model, text, finish,
                                            protocol.usage(len(prompt.ids), tokens)), False

        def chunks() -> Generator[dict[str, Any]]:
            tokens = 0
            for text, finish, tokens in pieces:
                yield protocol.completion_chunk(request_id, model, text, finish)
            if request.include_usage:
                counts = protocol.usage(len(prompt.ids), tokens)
                yield protocol.usage_chunk(request_id, model, "text_completion", counts)
        return chunks(), True

    def chat(self, body: Any) -> tuple[Generator[dict[str, Any]] | dict[str, Any], bool]:
        request = protocol.parse_chat(body)
        self.check_model(request.model)
        prompt = self.prompter.chat(request)
        request_id, model = protocol.new_id("chatcmpl"), self.names[0]
        pieces = respond(self.engine, prompt, request.sampling)
        if not request.stream:
            text, finish, tokens = _whole(pieces)
            return protocol.chat_body(request_id, model, text, finish,
                                      protocol.usage(len(prompt.ids), tokens)), False

        def chunks() -> Generator[dict[str, Any]]:
            yield protocol.chat_chunk(request_id, model, {"role": "assistant", "content": ""}, None)
            tokens = 0
            for text, finish, tokens in pieces:
                if text:
                    yield protocol.chat_chunk(request_id, model, {"content": text}, None)
                if finish is not None:
                    yield protocol.chat_chunk(request_id, model, {}, finish)
            if request.include_usage:
                counts = protocol.usage(len(prompt.ids), tokens)
                yield protocol.usage_chunk(request_id, model, "chat.completion.chunk", counts)
        return chunks(), True


def _whole(pieces: Iterator[tuple[str, str | None, int]]) -> tuple[str, str, int]:
    texts, finish, tokens = [], "length", 0
    for text, end, tokens in pieces:
        texts.append(text)
        finish = end or finish
    return "".join(texts), finish, tokens


class Handler(BaseHTTPRequestHandler):
    server: ApiServer
    server_version = "clusterft-serve"

    def handle(self) -> None:
        try:
            super().handle()
        except (BrokenPipeError, ConnectionResetError):  # the client left before its answer was written
            pass

    def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
        path = self.path.split("?", 1)[0]
        if path == "/":
            self._send(200, self.server.api.page.encode(), "text/html; charset=utf-8")
        elif path == "/v1/models" or path.startswith("/v1/models/"):
            self._answer(lambda: (self.server.api.models(path), False))
        else:
            self._error(ApiError(404, f"no such path: GET {path}", code="not_found"))

    def do_POST(self) -> None:  # noqa: N802
        path = self.path.split("?", 1)[0].rstrip("/")
        handlers = {"/v1/completions": self.server.api.completion, "/v1/chat/completions": self.server.api.chat}
        if path not in handlers:
            self._error(ApiError(404, f"no such path: POST {path}", code="not_found"))
            return
        self._answer(lambda: handlers[path](self._body()))

    def _body(self) -> Any:
        try:
            length = int(self.headers.get("Content-Length") or 0)
        except ValueError:
            raise ApiError(400, "Content-Length is not a number") from None
        if length > MAX_BODY_BYTES:
            raise ApiError(413, f"the request body is over {MAX_BODY_BYTES} bytes")
        try:
            return json.loads(self.rfile.read(length) or b"null")
        except (ValueError, UnicodeDecodeError) as err:
            raise ApiError(400, f"the request body is not JSON: {err}") from None

    def _answer(self, make: Any) -> None:
        try:
            answer, streamed = make()
        except ApiError as err:
            self._error(err)
            return
        except Exception as err:  # the generation failed: say so, keep serving
            self._error(ApiError(500, f"the generation failed: {type(err).__name__}: {err}"))
            return
        if streamed:
            self._stream(answer)
        else:
            self._send(200, json.dumps(answer).encode(), "application/json")

    def _stream(self, chunks: Generator[dict[str, Any]]) -> None:
        try:
            first = next(chunks, None)  # errors of the first token still get a status line
        except Exception as err:
            self._error(ApiError(500, f"the generation failed: {type(err).__name__}: {err}"))
            return
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.send_header("Cache-Control", "no-cache")
        self.end_headers()
        try:
            for chunk in ([first] if first is not None else []):
                self._event(json.dumps(chunk))
            for chunk in chunks:
                self._event(json.dumps(chunk))
            self._event("[DONE]")
        except (BrokenPipeError, ConnectionResetError):  # the client left: the generation stops with the stream
            pass
        except Exception as err:  # headers are sent: the error goes in the stream, as OpenAI's does
            self._event(json.dumps(ApiError(500, f"the generation failed: {type(err).__name__}: {err}").body()))
        finally:
            chunks.close()

    def _event(self, data: str) -> None:
        self.wfile.write(f"data: {data}\n\n".encode())
        self.wfile.flush()

    def _error(self, err: ApiError) -> None:
        self._send(err.status, json.dumps(err.body()).encode(), "application/json")

    def _send(self, status: int, payload: bytes, content_type: str) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 (http.server's signature)
        print(f"[serve] {self.address_string()} {redact_text(format % args)}", file=sys.stderr, flush=True)


class ApiServer(ThreadingHTTPServer):
    """Listens from the start (a taken port is known before the model loads); answers once `api` is set."""
    daemon_threads = True  # Ctrl-C does not wait for open streams
    api: Api

    def __init__(self, address: tuple[str, int]) -> None:
        super().__init__(address, Handler)
