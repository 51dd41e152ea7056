"""The vLLM engine of `launch serve` (a GPU and vLLM installed): vLLM's own OpenAI server, in a child process on a
private loopback port, generates; `launch serve`'s front (jobs.serve.api) keeps the one API, the FIM and chat
prompts and the page, and streams vLLM's answer through.

    engine = VllmEngine(chosen, recipe, context_length)   # starts `python -m vllm.entrypoints.openai.api_server`
    command = vllm_command(chosen, recipe, port)          # ... which is this command (tests/unit/test_serve.py)
    deltas = engine.stream(prompt, sampling)              # OpenAIStream: token ids in, streamed text out

The server is given the model as the eval stage gives vLLM (jobs.eval.vllm_engine.engine_options: weights,
tokenizer, dtype, seed, bitsandbytes for a QLoRA base, LoRA slots for an adapter, which it serves under the name
`adapter`), on the first GPU this process may use, with no torch.distributed world in its environment. Prompts go to
it as token ids, encoded here exactly as the transformers engine encodes them.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from typing import Any

from jobs.common.run_models import RunModel
from jobs.eval.vllm_engine import child_environment, engine_options
from jobs.serve.engine import Delta
from jobs.serve.prompts import Prompt
from jobs.serve.protocol import Sampling
from jobs.spec.schema import Recipe

BASE_NAME, ADAPTER_NAME = "base", "adapter"  # what vLLM serves the weights and the adapter as (private names)
START_TIMEOUT_S = 1800  # a large model's first start compiles kernels
REQUEST_TIMEOUT_S = 600


def vllm_command(chosen: RunModel, recipe: Recipe, port: int) -> list[str]:
    """vLLM's OpenAI server for `chosen` on 127.0.0.1:`port`: engine_options as command-line flags."""
    command = [sys.executable, "-m", "vllm.entrypoints.openai.api_server", "--host", "127.0.0.1", "--port",
               str(port), "--served-model-name", BASE_NAME]
    for key, value in engine_options(chosen, recipe).items():
        flag = "--" + key.replace("_", "-")
        if value is True:
            command.append(flag)
        elif value is not None and value is not False:
            command += [flag, str(value)]
    if chosen.adapter is not None:
        command += ["--lora-modules", f"{ADAPTER_NAME}={chosen.adapter}"]
    return command


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


class OpenAIStream:
    """Completions of token ids streamed from an OpenAI-compatible server: vLLM's, behind VllmEngine (or `launch
    serve`'s own, which tests/integration/test_serve.py checks this client against)."""

    def __init__(self, url: str, model: str, context_length: int) -> None:
        self.url, self.model, self.context_length = url, model, context_length

    def stream(self, prompt: Prompt, sampling: Sampling) -> Iterator[Delta]:
        body: dict[str, Any] = {
            "model": self.model, "prompt": prompt.ids, "max_tokens": prompt.max_tokens,
            "temperature": sampling.temperature, "top_p": sampling.top_p, "seed": sampling.seed, "stream": True,
            "stream_options": {"include_usage": True, "continuous_usage_stats": True},
            "skip_special_tokens": True, "stop_token_ids": list(prompt.end_ids)}
        request = urllib.request.Request(f"{self.url}/completions", data=json.dumps(body).encode(),
                                         headers={"Content-Type": "application/json"})
        tokens, finish = 0, None
        with urllib.request.urlopen(request, timeout=REQUEST_TIMEOUT_S) as response:  # closed: vLLM aborts it
            for line in response:
                data = line.strip().removeprefix(b"data: ")
                if not data or data == line.strip():  # blank lines between events, or not a data line
                    continue
                if data == b"[DONE]":
                    break
                chunk = json.loads(data)
                tokens = (chunk.get("usage") or {}).get("completion_tokens", tokens)
                for choice in chunk.get("choices", []):
                    finish = choice.get("finish_reason") or finish
                    yield Delta(choice.get("text", ""), tokens, None)
        yield Delta("", tokens, "stop" if finish == "stop" else "length")


class VllmEngine(OpenAIStream):
    name = "vllm"

    def __init__(self, chosen: RunModel, recipe: Recipe, context_length: int) -> None:
        port = free_port()
        super().__init__(f"http://127.0.0.1:{port}/v1", BASE_NAME if chosen.adapter is None else ADAPTER_NAME,
                         context_length)
        self.process = subprocess.Popen(vllm_command(chosen, recipe, port), env=child_environment(os.environ, 0))
        self._wait_until_ready()

    def _wait_until_ready(self) -> None:
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            code = self.process.poll()
            if code is not None:
                raise RuntimeError(f"vLLM's server exited ({code}) before it answered (its output is above): "
                                   "--engine transformers serves without it")
            try:
                with urllib.request.urlopen(f"{self.url}/models", timeout=5):
                    return
            except (urllib.error.URLError, OSError):
                time.sleep(1.0)
        self.close()
        raise RuntimeError(f"vLLM's server did not answer within {START_TIMEOUT_S} s")

    def close(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=60)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
