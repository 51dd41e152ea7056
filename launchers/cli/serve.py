"""`launch serve RUN`: serve a run's model to editors and OpenAI clients, here, until Ctrl-C.

    launch serve my-run                              # the merged export (else base + adapter) on 127.0.0.1:8000
    launch serve my-run --model adapter --port 8010  # base + adapter; --engine vllm: vLLM's server generates

Dispatched by launchers/cli/main.py. Checks the run (it exists, it has a trained model), the flags and the port
without importing torch, then execs `python -m jobs.serve` (jobs/serve/__main__.py), which loads the model and
serves the OpenAI-compatible API and the page (jobs/serve/api.py).
"""

from __future__ import annotations

import argparse
import errno
import importlib.util
import os
import socket
import sys
from collections.abc import Sequence
from pathlib import Path

from jobs.spec.errors import UserError
from launchers.cli.base import Parser, runs_arguments

PROJECT_ROOT = Path(__file__).resolve().parents[2]


def cmd_serve(argv: Sequence[str]) -> int:
    parser = Parser(prog="launch serve", description=(
        "Serve a run's model with an OpenAI-compatible API: /v1/completions (a `suffix` makes it fill in the\n"
        "middle, as editor plugins ask), /v1/chat/completions (the tokenizer's chat template), /v1/models, streamed\n"
        "or not; and a page at / to try it in a browser. Runs here, in the foreground, until Ctrl-C (on a cluster:\n"
        "inside srun --pty on a GPU node)."), formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run", metavar="RUN", help="run name, experiment/name, or a job id")
    parser.add_argument("--model", choices=("merged", "adapter", "base"), default="merged",
                        help="merged (default: the newest export, else base + adapter), adapter or base")
    parser.add_argument("--adapter-weight", type=float, default=1.0, metavar="W",
                        help="--model adapter: scale the LoRA by W")
    parser.add_argument("--host", default="127.0.0.1", help="interface to listen on (default 127.0.0.1: this machine "
                        "only)")
    parser.add_argument("--port", type=int, default=8000, help="default 8000")
    parser.add_argument("--engine", choices=("auto", "transformers", "vllm"), default="auto",
                        help="what generates: auto (default: vLLM's OpenAI server where vLLM is installed and a GPU "
                             "is there), transformers or vllm")
    runs_arguments(parser)
    args = parser.parse_args(argv)
    from jobs.spec.rundir import runs_root
    from launchers.recipe.load import resolve_saved
    from launchers.runs import find_run

    if not 0 < args.port < 65536:
        raise UserError(f"flag --port {args.port}: must be from 1 to 65535")
    if args.adapter_weight != 1.0 and args.model != "adapter":
        raise UserError(f"flag --adapter-weight {args.adapter_weight:g}: only with --model adapter (an export's "
                        "weight is set by launch export --weight)")
    if not 0 < args.adapter_weight <= 4:
        raise UserError(f"flag --adapter-weight {args.adapter_weight:g}: must be in (0, 4]")
    run = find_run(runs_root(args.runs_dir), args.run)
    resolve_saved(run.recipe_file)  # a damaged recipe is one line here, not a traceback in the server
    if args.model != "base":
        run.export_source(None)
    for package, why in (("torch", "the model runs here"), ("vllm", "flag --engine vllm")):
        if (package == "torch" or args.engine == "vllm") and not installed(package):
            raise UserError(f"{why}: {package} is not installed in {sys.executable} (pip install -e "
                            f"'.[{'train' if package == 'torch' else 'vllm'}]')")
    check_port(args.host, args.port)
    if not args.host.startswith("127.") and args.host not in ("localhost", "::1"):
        print(f"warning: listening on {args.host}: whoever reaches this port can use the model (no authentication; "
              "any API key is accepted)", file=sys.stderr)
    command = [sys.executable, "-m", "jobs.serve", str(run.path), "--model", args.model, "--adapter-weight",
               str(args.adapter_weight), "--host", args.host, "--port", str(args.port), "--engine", args.engine]
    path = os.pathsep.join(filter(None, [str(PROJECT_ROOT), os.environ.get("PYTHONPATH")]))  # this checkout's jobs
    sys.stdout.flush()
    sys.stderr.flush()
    os.execve(sys.executable, command, {**os.environ, "PYTHONPATH": path})


def installed(package: str) -> bool:
    try:
        return importlib.util.find_spec(package) is not None
    except ImportError:  # an import system that refuses it outright (tests/unit/test_layout.py's light install)
        return False


def check_port(host: str, port: int) -> None:
    """UserError unless `host`:`port` can be listened on now (as the server will: address reuse on)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, port))
        except OSError as err:
            reason = "in use" if err.errno == errno.EADDRINUSE else (err.strerror or str(err))
            raise UserError(f"flag --port {port}: cannot listen on {host}:{port}: {reason}") from None
