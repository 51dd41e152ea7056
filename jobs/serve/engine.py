"""What writes the completions `launch serve` streams: transformers in this process (this file), or vLLM's own
OpenAI server in a child process (jobs.serve.vllm_server), behind one interface.

    engine = TransformersEngine(model, tokenizer)
    for text, finish, tokens in respond(engine, prompt, sampling):   # prompt: jobs.serve.prompts.Prompt
        ...   # text to send now; finish "stop"/"length" on the last one; completion tokens so far

The transformers engine runs `model.generate` (greedy when the temperature is 0, else nucleus sampling with
top_k off, as the eval stage samples) in a thread and passes the new token ids back through a queue; the text is
decoded as a whole each time, so a character split over tokens is sent once complete. One generation at a time: a
second request waits for the first. Closing the stream (a client that left, a stop string reached) stops the
generation at the next token.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Iterator
from contextlib import closing
from dataclasses import dataclass
from typing import Any, Protocol

from jobs.serve.prompts import Prompt
from jobs.serve.protocol import Sampling, StopText


@dataclass(frozen=True)
class Delta:
    text: str             # new text since the last delta
    tokens: int           # completion tokens so far
    finish: str | None    # on the last delta: "stop" (an end token) or "length" (max_tokens reached)


class Engine(Protocol):
    name: str
    context_length: int

    def stream(self, prompt: Prompt, sampling: Sampling) -> Iterator[Delta]:
        """The completion of `prompt` as it is written; closing the iterator stops the generation."""
        ...

    def close(self) -> None:
        ...


def respond(engine: Engine, prompt: Prompt, sampling: Sampling) -> Iterator[tuple[str, str | None, int]]:
    """(text, finish reason or None, completion tokens so far), cut at the first stop string (then the finish
    reason is "stop" and the generation is stopped)."""
    cut = StopText(sampling.stop)
    with closing(engine.stream(prompt, sampling)) as deltas:
        for delta in deltas:
            text, hit = cut.feed(delta.text)
            if hit:
                yield text, "stop", delta.tokens
                return
            if delta.finish is not None:
                yield text + cut.flush(), delta.finish, delta.tokens
                return
            if text:
                yield text, None, delta.tokens


def context_length(config: Any) -> int:
    """The longest sequence (prompt and completion) the model takes, from its transformers config."""
    return int(getattr(config, "max_position_embeddings", None) or config.n_positions)


class TransformersEngine:
    name = "transformers"

    def __init__(self, model: Any, tokenizer: Any) -> None:
        self.model, self.tokenizer = model, tokenizer
        self.context_length = context_length(model.config)
        eos = model.generation_config.eos_token_id
        self.eos = (eos if isinstance(eos, list) else [eos] if eos is not None else []) or [tokenizer.eos_token_id]
        self.lock = threading.Lock()

    def stream(self, prompt: Prompt, sampling: Sampling) -> Iterator[Delta]:
        with self.lock:
            pieces: queue.Queue[list[int] | BaseException | None] = queue.Queue()
            stop = threading.Event()
            thread = threading.Thread(target=self._generate, args=(prompt, sampling, pieces, stop), daemon=True)
            thread.start()
            try:
                yield from self._deltas(prompt, pieces)
            finally:
                stop.set()
                thread.join()

    def _deltas(self, prompt: Prompt, pieces: queue.Queue[list[int] | BaseException | None]) -> Iterator[Delta]:
        ends = set(self.eos) | set(prompt.end_ids)
        ids: list[int] = []
        sent = ""
        while (piece := pieces.get()) is not None:
            if isinstance(piece, BaseException):
                raise piece
            ids += piece
            text = self.tokenizer.decode(ids, skip_special_tokens=True)
            if text.endswith("\ufffd"):  # a character whose remaining bytes come with the next token
                continue
            yield Delta(text[len(sent):], len(ids), None)
            sent = text
        text = self.tokenizer.decode(ids, skip_special_tokens=True)
        yield Delta(text[len(sent):], len(ids), "stop" if ids and ids[-1] in ends else "length")

    def _generate(self, prompt: Prompt, sampling: Sampling, pieces: queue.Queue[Any], stop: threading.Event) -> None:
        import torch
        from transformers import StoppingCriteria, StoppingCriteriaList
        from transformers.generation.streamers import BaseStreamer

        class Streamer(BaseStreamer):
            def __init__(self) -> None:
                self.prompt_seen = False

            def put(self, value: Any) -> None:
                if self.prompt_seen:  # the first call carries the prompt
                    pieces.put(value.reshape(-1).tolist())
                self.prompt_seen = True

            def end(self) -> None:
                pass

        class Stopped(StoppingCriteria):
            def __call__(self, input_ids: Any, scores: Any, **kwargs: Any) -> Any:
                return torch.full((input_ids.shape[0],), stop.is_set(), dtype=torch.bool, device=input_ids.device)

        sampled = sampling.temperature > 0
        options: dict[str, Any] = {"max_new_tokens": prompt.max_tokens, "do_sample": sampled,
                                   "pad_token_id": self.tokenizer.pad_token_id}
        if sampled:
            options |= {"temperature": sampling.temperature, "top_p": sampling.top_p, "top_k": 0}
        if prompt.end_ids:
            options["eos_token_id"] = [*self.eos, *prompt.end_ids]
        try:
            device = next(self.model.parameters()).device
            ids = torch.tensor([prompt.ids], device=device)
            if sampling.seed is not None:
                torch.manual_seed(sampling.seed)
            with torch.no_grad():
                self.model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), streamer=Streamer(),
                                    stopping_criteria=StoppingCriteriaList([Stopped()]), **options)
        except BaseException as err:  # handed to the request's thread, which answers a 500
            pieces.put(err)
        finally:
            pieces.put(None)

    def close(self) -> None:
        pass
