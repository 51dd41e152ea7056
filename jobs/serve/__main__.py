"""What `launch serve` execs once it has checked the run, the flags and the port: load the run's model, listen, serve
until Ctrl-C (or SIGTERM), which stops it with one line.

    python -m jobs.serve RUN_DIR [--model merged|adapter|base] [--adapter-weight W] [--host H] [--port P]
                                 [--engine auto|transformers|vllm]

The port is taken before the model loads (a port in use: exit 2 with one line, as any bad input). The engine is
transformers in this process, or vLLM's own OpenAI server (jobs.serve.vllm_server) where `auto` finds vLLM and a GPU;
what vLLM cannot serve as trained (jobs.eval.vllm_engine.unsupported, or an adapter weight other than 1) is served
with transformers under auto, and refused under vllm. Prints the URLs and an example request once it answers.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
from pathlib import Path
from typing import Any

from jobs.serve.api import Api, ApiServer
from jobs.spec.errors import UserError
from jobs.spec.rundir import RunDir


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m jobs.serve", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run_dir", metavar="RUN_DIR")
    parser.add_argument("--model", choices=("merged", "adapter", "base"), default="merged")
    parser.add_argument("--adapter-weight", type=float, default=1.0)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--engine", choices=("auto", "transformers", "vllm"), default="auto")
    args = parser.parse_args(argv)
    run = RunDir(Path(args.run_dir).resolve())
    try:
        server = ApiServer((args.host, args.port))
    except OSError as err:
        raise UserError(f"flag --port {args.port}: cannot listen on {args.host}:{args.port}: "
                        f"{err.strerror or err}") from None
    engine = None
    try:
        engine, prompter, described = load(run, args.model, args.adapter_weight, args.engine)
        server.api = Api(engine, prompter, [run.name, f"{run.experiment}/{run.name}"])
        print(banner(run.name, described, engine.name, args.host, server.server_address[1]), flush=True)
        server.serve_forever()
    finally:
        server.server_close()
        if engine is not None:
            engine.close()
    return 0


def load(run: RunDir, which: str, adapter_weight: float, requested: str) -> tuple[Any, Any, str]:
    """(the engine, the prompter, what is served)."""
    import yaml

    from jobs.common.run_models import choose_run_model, load_chosen
    from jobs.common.tokenizer import load_tokenizer
    from jobs.eval.generation import engine_name
    from jobs.eval.vllm_engine import unsupported
    from jobs.serve.engine import TransformersEngine, context_length
    from jobs.serve.prompts import Prompter
    from jobs.spec.context import RankContext
    from jobs.spec.schema import Recipe

    recipe = Recipe.model_validate(yaml.safe_load(run.recipe_file.read_text(encoding="utf-8")))
    tokenizer = load_tokenizer(recipe)
    chosen = choose_run_model(run, recipe, which)
    engine: Any
    if engine_name(requested) == "vllm":
        reason = unsupported(chosen, recipe) or (f"vLLM does not scale an adapter (--adapter-weight "
                                                 f"{adapter_weight:g})" if adapter_weight != 1.0 else None)
        if reason and requested == "vllm":
            raise UserError(f"flag --engine vllm: {reason}; use --engine transformers")
        if reason is None:
            from transformers import AutoConfig

            from jobs.serve.vllm_server import VllmEngine

            print(f"[serve] starting vLLM's server for the {chosen.described}", file=sys.stderr, flush=True)
            engine = VllmEngine(chosen, recipe, context_length(AutoConfig.from_pretrained(chosen.path)))
            return engine, Prompter(tokenizer, engine.context_length), chosen.described
        print(f"[serve] transformers, not vLLM: {reason}", file=sys.stderr, flush=True)
    print(f"[serve] loading the {chosen.described}", file=sys.stderr, flush=True)
    model, described = load_chosen(chosen, recipe, RankContext(run.path), adapter_weight)
    engine = TransformersEngine(model, tokenizer)
    return engine, Prompter(tokenizer, engine.context_length), described


def banner(name: str, described: str, engine: str, host: str, port: int) -> str:
    """Where to point a browser, an editor plugin or an OpenAI client, and a request to try."""
    where = f"http://{host}:{port}"
    example = {"model": name, "prompt": "def fib(n):", "max_tokens": 32, "temperature": 0}
    return "\n".join([
        f"launch serve: {name} ({described}, {engine}) on {where}",
        f"  page:             {where}/",
        f"  OpenAI base URL:  {where}/v1   (model \"{name}\", any API key)",
        f"  try:  curl {where}/v1/completions -H 'Content-Type: application/json' \\",
        f"          -d '{json.dumps(example)}'",
        f"  fill in the middle (openai client): OpenAI(base_url=\"{where}/v1\", api_key=\"none\").completions.create(",
        f"          model=\"{name}\", prompt=\"def f(x):\\n    \", suffix=\"\\n    return y\\n\", max_tokens=32)",
        "Ctrl-C stops it.",
    ])


def stop(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt


if __name__ == "__main__":
    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, signal.default_int_handler)  # even when started in the background (SIG_IGN)
    try:
        code = main(sys.argv[1:])
    except UserError as err:
        print(f"launch: error: {err}", file=sys.stderr)
        code = err.exit_code
    except KeyboardInterrupt:
        print("launch serve: stopped", file=sys.stderr)
        code = 0
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)  # never wait on generation threads or torch's teardown: nothing is left to write
