"""The OpenAI API as `launch serve` speaks it: request bodies checked field by field, responses and stream chunks
shaped like OpenAI's, and stop strings cut out of streamed text. No torch, no tokenizer: tests/unit/test_serve.py.

    request = parse_completion(body)        # CompletionRequest, or ApiError(400, "max_tokens: ...", "max_tokens")
    request = parse_chat(body)              # ChatRequest (messages checked; the template is applied elsewhere)
    cut = StopText(request.stop)            # text, hit = cut.feed(piece): never emits a stop string, even split
    body = completion_body(request_id, model, text, finish, usage)     # or completion_chunk / chat_body / chat_chunk

Fields editors and the openai client send that change nothing here (user, presence_penalty 0, ...) are accepted;
fields asking for what is not served (n > 1, echo, logprobs, best_of > 1) are a 400 naming the field. A missing
`model` means the served one.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

MAX_STOPS = 4  # as OpenAI
ROLES = ("system", "user", "assistant")


class ApiError(Exception):
    """An OpenAI-shaped error: HTTP status, message (naming the bad field), the field, and a code."""

    def __init__(self, status: int, message: str, param: str | None = None, code: str | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.param, self.code = status, message, param, code

    def body(self) -> dict[str, Any]:
        kind = "invalid_request_error" if self.status < 500 else "server_error"
        return {"error": {"message": self.message, "type": kind, "param": self.param, "code": self.code}}


@dataclass(frozen=True)
class Sampling:
    max_tokens: int | None      # None: up to the model's context
    temperature: float          # 0: greedy
    top_p: float
    seed: int | None
    stop: tuple[str, ...]


@dataclass(frozen=True)
class CompletionRequest:
    model: str | None
    prompt: str | list[int]     # text, or token ids
    suffix: str | None          # given: fill in the middle between prompt and suffix (a text prompt)
    sampling: Sampling
    stream: bool
    include_usage: bool         # stream_options.include_usage: a last chunk with the usage


@dataclass(frozen=True)
class ChatRequest:
    model: str | None
    messages: tuple[dict[str, str], ...]
    sampling: Sampling
    stream: bool
    include_usage: bool


def parse_completion(body: Any) -> CompletionRequest:
    body = _object(body)
    prompt = body.get("prompt")
    if isinstance(prompt, list) and len(prompt) == 1 and isinstance(prompt[0], str | list):  # a batch of one
        prompt = prompt[0]
    tokens = isinstance(prompt, list) and prompt and all(_integer(i) and i >= 0 for i in prompt)
    if not (isinstance(prompt, str) or tokens):
        raise _bad("prompt", "must be a string or a list of token ids (or a list of one of them)")
    suffix = body.get("suffix")
    if suffix is not None and not isinstance(suffix, str):
        raise _bad("suffix", "must be a string")
    if suffix is not None and tokens:
        raise _bad("suffix", "fill in the middle needs a text prompt, not token ids")
    if body.get("echo"):
        raise _bad("echo", "is not supported (the completion comes without its prompt)")
    if body.get("best_of") not in (None, 1):
        raise _bad("best_of", "only 1 is supported")
    stream, usage = _stream(body)
    return CompletionRequest(_model(body), prompt, suffix, _sampling(body, default_max_tokens=16), stream, usage)


def parse_chat(body: Any) -> ChatRequest:
    body = _object(body)
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise _bad("messages", "must be a non-empty list of {role, content} objects")
    checked = []
    for i, message in enumerate(messages):
        if not isinstance(message, dict) or message.get("role") not in ROLES:
            raise _bad(f"messages[{i}]", f"must be an object whose role is one of {', '.join(ROLES)}")
        checked.append({"role": message["role"], "content": _content(message.get("content"), i)})
    if body.get("max_completion_tokens") is not None and body.get("max_tokens") is None:
        body = {**body, "max_tokens": body["max_completion_tokens"]}
    stream, usage = _stream(body)
    return ChatRequest(_model(body), tuple(checked), _sampling(body, default_max_tokens=None), stream, usage)


def _content(content: Any, i: int) -> str:
    """A message's text: a string, or a list of {"type": "text", "text": ...} parts."""
    if isinstance(content, str):
        return content
    if isinstance(content, list) and all(isinstance(p, dict) and p.get("type") == "text"
                                         and isinstance(p.get("text"), str) for p in content):
        return "".join(p["text"] for p in content)
    raise _bad(f"messages[{i}].content", "must be a string or a list of text parts")


def _object(body: Any) -> Mapping[str, Any]:
    if not isinstance(body, dict):
        raise ApiError(400, "the request body must be a JSON object")
    return body


def _model(body: Mapping[str, Any]) -> str | None:
    model = body.get("model")
    if model is not None and not isinstance(model, str):
        raise _bad("model", "must be a string")
    return model


def _stream(body: Mapping[str, Any]) -> tuple[bool, bool]:
    stream = body.get("stream", False)
    if not isinstance(stream, bool):
        raise _bad("stream", "must be true or false")
    options = body.get("stream_options") or {}
    if not isinstance(options, dict):
        raise _bad("stream_options", "must be an object")
    return stream, bool(options.get("include_usage"))


def _sampling(body: Mapping[str, Any], default_max_tokens: int | None) -> Sampling:
    if body.get("n", 1) != 1:
        raise _bad("n", "only 1 is supported")
    if body.get("logprobs") not in (None, False, 0):
        raise _bad("logprobs", "is not supported")
    max_tokens = body.get("max_tokens", default_max_tokens)
    if max_tokens is not None and (not _integer(max_tokens) or max_tokens < 1):
        raise _bad("max_tokens", f"must be an integer of at least 1, got {max_tokens!r}")
    temperature = _number(body, "temperature", 1.0, 0.0, 2.0)
    top_p = _number(body, "top_p", 1.0, 0.0, 1.0)
    if top_p == 0:
        raise _bad("top_p", "must be greater than 0")
    seed = body.get("seed")
    if seed is not None and not _integer(seed):
        raise _bad("seed", "must be an integer")
    stop = body.get("stop")
    stops = [stop] if isinstance(stop, str) else stop if stop is not None else []
    if not isinstance(stops, list) or len(stops) > MAX_STOPS or not all(isinstance(s, str) and s for s in stops):
        raise _bad("stop", f"must be a non-empty string or a list of up to {MAX_STOPS} of them")
    return Sampling(max_tokens, temperature, top_p, seed, tuple(stops))


def _integer(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _number(body: Mapping[str, Any], field: str, default: float, low: float, high: float) -> float:
    value = body.get(field)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, int | float) or not low <= value <= high:
        raise _bad(field, f"must be a number from {low:g} to {high:g}, got {value!r}")
    return float(value)


def _bad(field: str, problem: str) -> ApiError:
    return ApiError(400, f"{field}: {problem}", field)


class StopText:
    """Cuts generated text at the first stop string. Text that could be the start of a stop string is held back
    until the next piece tells, so a stop split over two pieces is never emitted."""

    def __init__(self, stops: Sequence[str]) -> None:
        self.stops = tuple(stops)
        self.pending = ""

    def feed(self, piece: str) -> tuple[str, bool]:
        """(the text that can be emitted now, whether a stop string was reached: nothing after it is emitted)."""
        self.pending += piece
        hits = [i for i in (self.pending.find(s) for s in self.stops) if i >= 0]
        if hits:
            text, self.pending = self.pending[:min(hits)], ""
            return text, True
        held = max((k for s in self.stops for k in range(1, len(s)) if self.pending.endswith(s[:k])), default=0)
        text = self.pending[:len(self.pending) - held]
        self.pending = self.pending[len(text):]
        return text, False

    def flush(self) -> str:
        """What was held back, at the end of the generation."""
        text, self.pending = self.pending, ""
        return text


def new_id(kind: str) -> str:
    return f"{kind}-{uuid.uuid4().hex[:24]}"


def usage(prompt_tokens: int, completion_tokens: int) -> dict[str, int]:
    return {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens}


def completion_chunk(request_id: str, model: str, text: str, finish: str | None) -> dict[str, Any]:
    return {"id": request_id, "object": "text_completion", "created": int(time.time()), "model": model,
            "choices": [{"index": 0, "text": text, "logprobs": None, "finish_reason": finish}]}


def completion_body(request_id: str, model: str, text: str, finish: str, counts: dict[str, int]) -> dict[str, Any]:
    return completion_chunk(request_id, model, text, finish) | {"usage": counts}


def chat_chunk(request_id: str, model: str, delta: dict[str, str], finish: str | None) -> dict[str, Any]:
    return {"id": request_id, "object": "chat.completion.chunk", "created": int(time.time()), "model": model,
            "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}]}


def chat_body(request_id: str, model: str, text: str, finish: str, counts: dict[str, int]) -> dict[str, Any]:
    return {"id": request_id, "object": "chat.completion", "created": int(time.time()), "model": model,
            "choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "logprobs": None,
                         "finish_reason": finish}], "usage": counts}


def usage_chunk(request_id: str, model: str, kind: str, counts: dict[str, int]) -> dict[str, Any]:
    """The last chunk of a stream asked for with stream_options.include_usage: no choices, the usage."""
    return {"id": request_id, "object": kind, "created": int(time.time()), "model": model, "choices": [],
            "usage": counts}


def models_body(names: Sequence[str], created: int) -> dict[str, Any]:
    return {"object": "list", "data": [model_card(name, created) for name in names]}


def model_card(name: str, created: int) -> dict[str, Any]:
    return {"id": name, "object": "model", "created": created, "owned_by": "clusterft"}
