"""`launch serve` end to end: a tiny-starcoder full fine-tune trained on this CPU, served on a free loopback port, and
called as editors and scripts call it, with the openai client: fill-in-the-middle and plain completions (streamed
and not) and chat completions are exactly the model's own greedy `generate` for the same prompt; the models list;
OpenAI-shaped errors; a second server on the same port refused (exit 2, one line); the page driven in headless
Chromium (typed, clicked, streamed; serve-page.png in the test's temporary directory); Ctrl-C stops it with one line.

    .venv/bin/python -m pytest tests/integration/test_serve.py -q
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.integration.browser import Browser
from tests.integration.conftest import assert_ok, launch, launch_env
from tests.integration.mlflow_server import free_port

openai = pytest.importorskip("openai")
NAME = "served"
API_KEY = "sk-serve-test-0123456789abcdef"  # sent by the client; must never reach the server's output
START_TIMEOUT_S = 180


@dataclass
class Served:
    process: subprocess.Popen[str]
    port: int
    run: Path
    out: Path
    err: Path

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def client(self) -> Any:
        return openai.OpenAI(base_url=f"{self.url}/v1", api_key=API_KEY, max_retries=0, timeout=120)


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    """`launch serve` of a freshly trained run, answering; stopped (by its pid) after the module if still up."""
    home = tmp_path_factory.mktemp("serve")
    assert_ok(launch("full-ft", "tiny-starcoder", "--local", "--stages", "train", "--name", NAME,
                     "training.max_steps=6", "training.eval_steps=6", "training.save_steps=6", cwd=home))
    port = free_port()
    out, err = home / "serve.out", home / "serve.err"
    with out.open("w") as stdout, err.open("w") as stderr:
        process = subprocess.Popen([sys.executable, "-m", "launchers.cli.main", "serve", NAME, "--port", str(port)],
                                   cwd=home, env=launch_env(), stdout=stdout, stderr=stderr, text=True)
    server = Served(process, port, home / "runs" / "tiny-starcoder" / NAME, out, err)
    try:
        deadline = time.monotonic() + START_TIMEOUT_S
        while not answers(f"{server.url}/v1/models"):
            assert process.poll() is None, f"launch serve exited {process.returncode}: {err.read_text()[-3000:]}"
            assert time.monotonic() < deadline, f"launch serve did not answer in {START_TIMEOUT_S} s"
            time.sleep(0.5)
        yield server
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(timeout=30)


def answers(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=5):
            return True
    except (urllib.error.URLError, OSError):
        return False


@pytest.fixture(scope="module")
def reference(served: Served) -> Any:
    """The served model and its tokenizer, loaded here with transformers: what greedy output must be."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from launchers.recipe.load import RECIPES_ROOT

    tokenizer = AutoTokenizer.from_pretrained(RECIPES_ROOT / "assets" / "tokenizer")
    model = AutoModelForCausalLM.from_pretrained(served.run / "final", dtype="float32",
                                                 attn_implementation="sdpa").eval()
    return model, tokenizer


def greedy(reference: Any, text: str, max_new_tokens: int, end_tokens: tuple[str, ...] = ()) -> tuple[str, int, int]:
    """(the model's greedy completion of `text`, prompt tokens, completion tokens)."""
    import torch

    model, tokenizer = reference
    ids = torch.tensor([tokenizer(text, add_special_tokens=False)["input_ids"]])
    ends = {"eos_token_id": [tokenizer.eos_token_id, *tokenizer.convert_tokens_to_ids(list(end_tokens))]}
    with torch.no_grad():
        output = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=max_new_tokens,
                                do_sample=False, pad_token_id=tokenizer.pad_token_id, **(ends if end_tokens else {}))
    new = output[0, ids.shape[1]:]
    return tokenizer.decode(new, skip_special_tokens=True), ids.shape[1], len(new)


def test_completions_fim_and_streamed_are_the_models_greedy_output(served: Served, reference: Any) -> None:
    client = served.client()
    prefix, suffix = "def add(a, b):\n    ", "\n    return total\n"
    fim = client.completions.create(model=NAME, prompt=prefix, suffix=suffix, max_tokens=16, temperature=0)
    expected, prompt_tokens, tokens = greedy(reference, f"<fim_prefix>{prefix}<fim_suffix>{suffix}<fim_middle>", 16)
    assert fim.choices[0].text == expected
    assert (fim.usage.prompt_tokens, fim.usage.completion_tokens) == (prompt_tokens, tokens)
    assert fim.choices[0].finish_reason == ("length" if tokens == 16 else "stop") and fim.model == NAME

    prompt = "import os\n\ndef read(path):\n"
    chunks = list(client.completions.create(model=NAME, prompt=prompt, max_tokens=24, temperature=0, stream=True,
                                            stream_options={"include_usage": True}))
    expected, prompt_tokens, tokens = greedy(reference, prompt, 24)
    assert "".join(c.choices[0].text for c in chunks if c.choices) == expected
    assert len([c for c in chunks if c.choices and c.choices[0].text]) > 1  # streamed, not one piece
    assert chunks[-1].usage.completion_tokens == tokens and chunks[-1].usage.prompt_tokens == prompt_tokens
    whole = client.completions.create(model=NAME, prompt=prompt, max_tokens=24, temperature=0)
    assert whole.choices[0].text == expected

    stop = expected[len(expected) // 2:][:2]
    if stop.strip():  # a stop string from the middle of the answer: cut just before it
        cut = client.completions.create(model=NAME, prompt=prompt, max_tokens=24, temperature=0, stop=[stop])
        assert cut.choices[0].text == expected[:expected.find(stop)] and cut.choices[0].finish_reason == "stop"


def test_the_vllm_fronts_client_streams_token_ids_from_an_openai_server(served: Served, reference: Any) -> None:
    """The client the vLLM engine streams through (OpenAIStream), here against launch serve's own server: token ids
    in, the greedy completion out, with its finish reason and token count."""
    from jobs.serve.engine import respond
    from jobs.serve.prompts import Prompter
    from jobs.serve.protocol import parse_completion
    from jobs.serve.vllm_server import OpenAIStream

    prompt = "class Stack:\n    def push(self, item):\n"
    request = parse_completion({"prompt": prompt, "max_tokens": 20, "temperature": 0})
    ids = Prompter(reference[1], 1024).completion(request)
    pieces = list(respond(OpenAIStream(f"{served.url}/v1", NAME, 1024), ids, request.sampling))
    expected, _, tokens = greedy(reference, prompt, 20)
    assert "".join(text for text, _, _ in pieces) == expected and len(pieces) > 2
    assert pieces[-1][1:] == ("length" if tokens == 20 else "stop", tokens)


def test_chat_completions_go_through_the_chat_template(served: Served, reference: Any) -> None:
    client = served.client()
    messages = [{"role": "system", "content": "You write Python."}, {"role": "user", "content": "Sum a list."}]
    answer = client.chat.completions.create(model=NAME, messages=messages, max_tokens=12, temperature=0)
    template = reference[1].apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    expected, prompt_tokens, tokens = greedy(reference, template, 12, ("<|im_end|>",))
    assert answer.choices[0].message.content == expected and answer.choices[0].message.role == "assistant"
    assert (answer.usage.prompt_tokens, answer.usage.completion_tokens) == (prompt_tokens, tokens)
    streamed = list(client.chat.completions.create(model=NAME, messages=messages, max_tokens=12, temperature=0,
                                                   stream=True))
    assert streamed[0].choices[0].delta.role == "assistant"
    assert "".join(c.choices[0].delta.content or "" for c in streamed) == expected
    assert streamed[-1].choices[0].finish_reason == answer.choices[0].finish_reason


def test_models_and_openai_shaped_errors(served: Served) -> None:
    client = served.client()
    assert [m.id for m in client.models.list().data] == [NAME]
    with pytest.raises(openai.NotFoundError, match="'other' is not served here"):
        client.completions.create(model="other", prompt="x", max_tokens=2)
    with pytest.raises(openai.BadRequestError, match="n: only 1 is supported") as caught:
        client.completions.create(model=NAME, prompt="x", max_tokens=2, n=2)
    assert caught.value.body["param"] == "n"
    with pytest.raises(openai.BadRequestError, match="max_tokens: 5000 does not fit"):
        client.completions.create(model=NAME, prompt="x", max_tokens=5000)
    with pytest.raises(openai.BadRequestError, match=r"messages\[0\]: must be an object whose role"):
        client.chat.completions.create(model=NAME, messages=[{"role": "robot", "content": "x"}])
    request = urllib.request.Request(f"{served.url}/v1/completions", data=b"{not json", method="POST",
                                     headers={"Content-Type": "application/json"})
    with pytest.raises(urllib.error.HTTPError) as bad:
        urllib.request.urlopen(request, timeout=30)
    assert bad.value.code == 400 and "not JSON" in json.loads(bad.value.read())["error"]["message"]
    with pytest.raises(urllib.error.HTTPError) as missing:
        urllib.request.urlopen(f"{served.url}/v2/engines", timeout=30)
    assert missing.value.code == 404
    assert API_KEY not in served.out.read_text() + served.err.read_text()  # sent with every request, never logged


def test_the_page_streams_a_completion_typed_and_clicked_in_a_browser(served: Served, reference: Any,
                                                                    tmp_path: Path) -> None:
    browser = Browser.find_or_install()
    prompt = "def fibonacci(n):\n"
    with browser.page() as page:
        page.goto(f"{served.url}/")
        assert page.evaluate("document.title").startswith(NAME)
        page.type("#prompt", prompt)
        page.click("#complete")
        page.wait_for("document.getElementById('status').textContent.startsWith('done')", timeout=120)
        written = page.evaluate("document.querySelector('#output .completion').textContent")
        png = page.screenshot(tmp_path / "serve-page.png")
    assert written == greedy(reference, prompt, 64)[0]  # the page's defaults: 64 tokens, temperature 0
    assert png.read_bytes()[:4] == b"\x89PNG" and png.stat().st_size > 10_000
    print(f"screenshot: {png}")


def test_a_taken_port_is_refused_and_ctrl_c_stops_the_server(served: Served) -> None:
    second = launch("serve", NAME, "--port", str(served.port), "--runs-dir", str(served.run.parent.parent),
                    cwd=served.run)
    assert second.returncode == 2 and second.stdout == ""
    assert second.stderr.splitlines() == [f"launch: error: flag --port {served.port}: cannot listen on "
                                          f"127.0.0.1:{served.port}: in use"]

    banner = served.out.read_text()
    assert f"{served.url}/v1" in banner and f"curl {served.url}/v1/completions" in banner
    served.process.send_signal(signal.SIGINT)
    assert served.process.wait(timeout=60) == 0
    err = served.err.read_text()
    assert err.rstrip().endswith("launch serve: stopped") and "Traceback" not in err
    assert not answers(f"{served.url}/v1/models")
