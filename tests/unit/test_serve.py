"""`launch serve`'s parts without a server: request checks (400 naming the field), stop strings cut across streamed
pieces, the FIM and chat prompts on the project's tokenizer, the transformers engine on a tiny random Llama (greedy
is the model's own generate), the vLLM server's command, and the launcher's bad input (exit 2, one line). The served
API end to end, with the openai client and a browser: tests/integration/test_serve.py.

    .venv/bin/python -m pytest tests/unit/test_serve.py -q
"""

from __future__ import annotations

import importlib.util
import json
import socket
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from jobs.common.run_models import RunModel
from jobs.serve.protocol import ApiError, Sampling, StopText, parse_chat, parse_completion
from jobs.spec.rundir import COMPLETE_MARKER
from launchers.recipe.load import RECIPES_ROOT, resolve
from tests.unit.launch_harness import CliResult, assert_one_error_line

TOKENIZER = RECIPES_ROOT / "assets" / "tokenizer"


def test_an_editors_fim_request_is_read_whole() -> None:
    request = parse_completion({"model": "r1", "prompt": ["def f(x):\n    "], "suffix": "\n    return y\n",
                                "max_tokens": 32, "temperature": 0, "top_p": 0.9, "stop": "\n\n", "n": 1,
                                "stream": True, "stream_options": {"include_usage": True}, "user": "ignored"})
    assert (request.model, request.prompt, request.suffix) == ("r1", "def f(x):\n    ", "\n    return y\n")
    assert request.sampling == Sampling(32, 0.0, 0.9, None, ("\n\n",))
    assert request.stream and request.include_usage
    defaults = parse_completion({"prompt": "x"})  # OpenAI's defaults; no model means the served one
    assert defaults.sampling == Sampling(16, 1.0, 1.0, None, ()) and defaults.model is None and not defaults.stream
    chat = parse_chat({"messages": [{"role": "user", "content": [{"type": "text", "text": "hi"}]}],
                       "max_completion_tokens": 5})
    assert chat.messages == ({"role": "user", "content": "hi"},) and chat.sampling.max_tokens == 5
    assert parse_chat({"messages": [{"role": "user", "content": "hi"}]}).sampling.max_tokens is None  # the context
    assert parse_completion({"prompt": [[5, 9, 0]]}).prompt == [5, 9, 0]  # token ids, as the vLLM front sends them


@pytest.mark.parametrize(("body", "field"), [
    ({"prompt": 3}, "prompt"), ({"prompt": ["a", "b"]}, "prompt"), ({"prompt": "x", "suffix": 1}, "suffix"),
    ({"prompt": "x", "n": 2}, "n"), ({"prompt": "x", "max_tokens": 0}, "max_tokens"),
    ({"prompt": "x", "max_tokens": "8"}, "max_tokens"), ({"prompt": "x", "temperature": 2.5}, "temperature"),
    ({"prompt": "x", "temperature": True}, "temperature"), ({"prompt": "x", "top_p": 0}, "top_p"),
    ({"prompt": "x", "stop": ["a", "b", "c", "d", "e"]}, "stop"), ({"prompt": "x", "stop": [""]}, "stop"),
    ({"prompt": "x", "stream": "yes"}, "stream"), ({"prompt": "x", "echo": True}, "echo"),
    ({"prompt": "x", "logprobs": 5}, "logprobs"), ({"prompt": "x", "best_of": 3}, "best_of"),
    ({"prompt": "x", "seed": 1.5}, "seed"), ({"prompt": "x", "model": 7}, "model"),
    ({"prompt": [1, -2]}, "prompt"), ({"prompt": []}, "prompt"), ({"prompt": [1, 2], "suffix": "x"}, "suffix"),
])
def test_a_bad_completion_field_is_a_400_naming_it(body: dict[str, Any], field: str) -> None:
    with pytest.raises(ApiError) as caught:
        parse_completion(body)
    error = caught.value.body()["error"]
    assert caught.value.status == 400 and error["param"] == field and error["message"].startswith(f"{field}: ")
    assert error["type"] == "invalid_request_error"


@pytest.mark.parametrize(("body", "field"), [
    ({"messages": []}, "messages"), ({"messages": "hi"}, "messages"),
    ({"messages": [{"role": "robot", "content": "x"}]}, "messages[0]"),
    ({"messages": [{"role": "user", "content": None}]}, "messages[0].content"),
    ({"messages": [{"role": "user", "content": "x"}], "n": 3}, "n"),
])
def test_a_bad_chat_field_is_a_400_naming_it(body: dict[str, Any], field: str) -> None:
    with pytest.raises(ApiError) as caught:
        parse_chat(body)
    assert caught.value.status == 400 and caught.value.param == field
    with pytest.raises(ApiError, match="JSON object"):
        parse_chat([body])


def test_a_stop_string_is_never_emitted_even_split_over_pieces() -> None:
    cut = StopText(["\ndef ", "###"])
    assert cut.feed("    return x\n") == ("    return x", False)  # "\n" may start "\ndef ": held back
    assert cut.feed("de") == ("", False)
    assert cut.feed("f g():") == ("", True)  # reached: nothing of it, nothing after it
    other = StopText(["\ndef "])
    assert other.feed("a\n") == ("a", False) and other.feed("b") == ("\nb", False) and other.flush() == ""
    held = StopText(["##"])
    assert held.feed("x#") == ("x", False) and held.flush() == "#"  # the end of the generation lets it out
    assert StopText([]).feed("anything\n") == ("anything\n", False)


@pytest.fixture(scope="module")
def tokenizer() -> Any:
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(TOKENIZER)


def test_fim_is_the_evals_psm_prompt_and_chat_the_template(tokenizer: Any) -> None:
    from jobs.eval.fim_eval import psm_prompt
    from jobs.serve.prompts import Prompter

    prompter = Prompter(tokenizer, context_length=256)
    request = parse_completion({"prompt": "def f(x):\n    ", "suffix": "\n    return y\n", "max_tokens": 8})
    prompt = prompter.completion(request)
    text = psm_prompt("def f(x):\n    ", "\n    return y\n", tokenizer)
    assert text == "<fim_prefix>def f(x):\n    <fim_suffix>\n    return y\n<fim_middle>"
    assert prompt.ids == tokenizer(text, add_special_tokens=False)["input_ids"] and prompt.max_tokens == 8
    assert prompt.ids[0] == tokenizer.convert_tokens_to_ids("<fim_prefix>") and prompt.end_ids == ()
    plain = prompter.completion(parse_completion({"prompt": "<fim_prefix>", "max_tokens": 1}))
    assert plain.ids == tokenizer("<fim_prefix>", add_special_tokens=False)["input_ids"]

    chat = prompter.chat(parse_chat({"messages": [{"role": "system", "content": "Be brief."},
                                                  {"role": "user", "content": "hi"}]}))
    expected = "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n"
    assert tokenizer.decode(chat.ids) == expected
    assert chat.end_ids == (tokenizer.convert_tokens_to_ids("<|im_end|>"),)
    assert chat.max_tokens == 256 - len(chat.ids)  # no max_tokens: the rest of the context
    assert prompter.completion(parse_completion({"prompt": [7, 8], "max_tokens": 1})).ids == [7, 8]
    with pytest.raises(ApiError, match=f"^prompt: token id {len(tokenizer)} is not in the vocabulary"):
        prompter.completion(parse_completion({"prompt": [len(tokenizer)]}))


def test_a_prompt_that_does_not_fit_is_a_400(tokenizer: Any) -> None:
    from jobs.serve.prompts import Prompter

    prompter = Prompter(tokenizer, context_length=16)
    with pytest.raises(ApiError, match=r"^max_tokens: 15 does not fit: the prompt takes \d+ of the model's 16"):
        prompter.completion(parse_completion({"prompt": "def f():", "max_tokens": 15}))
    with pytest.raises(ApiError, match="^prompt: .* tokens, the model's context is 16") as caught:
        prompter.completion(parse_completion({"prompt": "x = 1\n" * 20}))
    assert caught.value.param == "prompt"


@pytest.fixture(scope="module")
def engine(tokenizer: Any) -> Any:
    import torch
    from transformers import AutoModelForCausalLM, LlamaConfig

    from jobs.serve.engine import TransformersEngine

    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128,
                         eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)
    return TransformersEngine(AutoModelForCausalLM.from_config(config).eval(), tokenizer)


def test_greedy_streaming_is_the_models_own_greedy_generate(engine: Any, tokenizer: Any) -> None:
    import torch

    from jobs.serve.engine import respond
    from jobs.serve.prompts import Prompter

    request = parse_completion({"prompt": "def add(a, b):\n", "max_tokens": 12, "temperature": 0})
    prompt = Prompter(tokenizer, engine.context_length).completion(request)
    pieces = list(respond(engine, prompt, request.sampling))
    ids = torch.tensor([prompt.ids])
    with torch.no_grad():
        reference = engine.model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=12,
                                          do_sample=False, pad_token_id=tokenizer.pad_token_id)[0, ids.shape[1]:]
    assert "".join(text for text, _, _ in pieces) == tokenizer.decode(reference, skip_special_tokens=True)
    assert [finish for _, finish, _ in pieces][-1] == ("length" if len(reference) == 12 else "stop")
    assert pieces[-1][2] == len(reference) and all(finish is None for _, finish, _ in pieces[:-1])

    whole = "".join(text for text, _, _ in pieces)
    stop = whole[len(whole) // 2:][:3]
    if stop:  # the same request with a stop string: cut before it, finish "stop", the generation ended early
        stopped = parse_completion({"prompt": "def add(a, b):\n", "max_tokens": 12, "temperature": 0, "stop": stop})
        cut = list(respond(engine, prompt, stopped.sampling))
        assert "".join(t for t, _, _ in cut) == whole[:whole.find(stop)] and cut[-1][1] == "stop"
    assert engine.lock.acquire(blocking=False)  # released: the next request may run
    engine.lock.release()


def test_sampling_with_a_seed_is_reproducible(engine: Any, tokenizer: Any) -> None:
    from jobs.serve.engine import respond
    from jobs.serve.prompts import Prompter

    request = parse_completion({"prompt": "x", "max_tokens": 10, "temperature": 1.0, "top_p": 0.9, "seed": 7})
    prompt = Prompter(tokenizer, engine.context_length).completion(request)
    first, again = ("".join(t for t, _, _ in respond(engine, prompt, request.sampling)) for _ in range(2))
    assert first == again


def test_vllm_serves_the_model_as_the_eval_stage_gives_it(tmp_path: Path) -> None:
    from jobs.serve.vllm_server import vllm_command

    merged = resolve("full-ft", "tiny-starcoder").recipe
    command = vllm_command(RunModel(tmp_path / "model", None, False, "merged"), merged, 8123)
    assert command[:3] == [sys.executable, "-m", "vllm.entrypoints.openai.api_server"]
    flags = dict(zip(command[3::2], command[4::2], strict=True))
    assert flags["--host"] == "127.0.0.1" and flags["--port"] == "8123" and flags["--served-model-name"] == "base"
    assert flags["--model"] == str(tmp_path / "model") and flags["--dtype"] == "float32"
    assert flags["--tokenizer"] == str(TOKENIZER) and flags["--gpu-memory-utilization"] == "0.85"
    assert "--enable-lora" not in command and "--trust-remote-code" not in command

    adapter = tmp_path / "final"
    adapter.mkdir()
    (adapter / "adapter_config.json").write_text(json.dumps({"r": 8}))
    qlora = resolve("qlora", "tiny-starcoder").recipe
    command = vllm_command(RunModel(tmp_path / "base", adapter, True, "base + adapter"), qlora, 8123)
    assert "--enable-lora" in command
    text = " ".join(command)
    assert "--quantization bitsandbytes" in text and "--max-lora-rank 8" in text and "--max-loras 1" in text
    assert command[-2:] == ["--lora-modules", f"adapter={adapter}"]


def make_served_run(tmp_path: Path) -> Any:
    from tests.unit.test_export import make_run

    run, _ = make_run(tmp_path, "lora")
    return run


@pytest.mark.parametrize(("args", "message"), [
    (["nope"], "no run 'nope' under "),
    (["r1", "--port", "70000"], "flag --port 70000: must be from 1 to 65535"),
    (["r1", "--adapter-weight", "0.5"], "flag --adapter-weight 0.5: only with --model adapter"),
    (["r1", "--model", "adapter", "--adapter-weight", "9"], "flag --adapter-weight 9: must be in (0, 4]"),
    (["r1", "--model", "best"], "serve: argument --model: invalid choice: 'best'"),
    (["r1", "--bogus"], "serve: unrecognized arguments: --bogus"),
    (["r1", "--host", "203.0.113.9"], "flag --port 8000: cannot listen on 203.0.113.9:8000"),
])
def test_bad_serve_requests_exit_2(tmp_path: Path, launch: Callable[..., CliResult], args: list[str],
                                   message: str) -> None:
    make_served_run(tmp_path)
    assert message in assert_one_error_line(launch("serve", *args))


def test_a_run_without_a_trained_model_or_vllm_or_a_free_port_is_refused(tmp_path: Path,
                                                                          launch: Callable[..., CliResult]) -> None:
    run = make_served_run(tmp_path)
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = str(taken.getsockname()[1])
        line = assert_one_error_line(launch("serve", "r1", "--port", port))
        assert f"flag --port {port}: cannot listen on 127.0.0.1:{port}: in use" in line
    if importlib.util.find_spec("vllm") is None:
        line = assert_one_error_line(launch("serve", "r1", "--engine", "vllm"))
        assert "flag --engine vllm: vllm is not installed in " in line
    (run.final / COMPLETE_MARKER).unlink()
    line = assert_one_error_line(launch("serve", "r1"))
    assert "run r1: no complete final model in " in line


def test_launch_serve_checks_everything_without_the_training_stack(tmp_path: Path) -> None:
    """On a machine without torch (a login node): --help, and the checks up to the one that needs the model."""
    from tests.unit.test_layout import run_light

    make_served_run(tmp_path)
    code = """
import contextlib, io, sys
from launchers.cli.main import main
with contextlib.redirect_stdout(io.StringIO()):
    try:
        main(["serve", "--help"])
    except SystemExit as exit:
        assert exit.code == 0
code = main(["serve", "r1"])
assert not {"torch", "transformers"} & set(sys.modules)
sys.exit(code)
"""
    done = run_light(code, tmp_path)
    assert done.returncode == 2, done.stderr
    (line,) = done.stderr.splitlines()
    assert line.startswith("launch: error: the model runs here: torch is not installed in ") and "[train]" in line
