"""`launch recipes` and `launch show`: the recipe catalog, and one recipe resolved.

    launch recipes                                          # every catalog recipe, one row each, with its command
    launch show qlora starcoder15b training.max_steps=100   # the resolved recipe as YAML

Dispatched by launchers/cli/main.py; imports neither torch nor MLflow.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

from jobs.spec.errors import UserError
from launchers.cli.base import Parser
from launchers.text import printable, scientific, table


def cmd_recipes(argv: Sequence[str]) -> int:
    parser = Parser(prog="launch recipes", description="List the recipe catalog: models × methods.")
    parser.parse_args(argv)
    from launchers.recipe.load import list_methods, list_models, resolve

    rows = [("RECIPE", "METHOD", "BACKEND", "GPUS", "SEQ", "LENGTH", "LR", "RUN IT WITH")]
    broken = []
    for model in list_models():
        for method in list_methods(model):
            try:
                r = resolve(method, model).recipe
            except UserError as err:  # one bad file in a user catalog must not hide every other recipe
                broken.append(f"warning: {model}/{method} not listed: {printable(str(err))}")
                continue
            res = r.resources
            gpus = f"{res.nodes}×{res.gpus_per_node} {res.gpu_type or ''}".strip() if res.gpus_per_node else "CPU"
            length = f"{r.training.max_steps} steps" if r.training.max_steps else f"{r.training.epochs:g} epochs"
            rows.append((r.name, r.method.kind, r.distributed.backend, gpus, str(r.data.seq_length), length,
                         scientific(r.training.learning_rate), f"launch {method} {model}"))
    print("\n".join(table(rows)))
    for line in broken:
        print(line, file=sys.stderr)
    return 0


def cmd_show(argv: Sequence[str]) -> int:
    parser = Parser(prog="launch show", description="Print the resolved recipe as YAML.")
    parser.add_argument("method", metavar="METHOD")
    parser.add_argument("model", metavar="MODEL")
    parser.add_argument("overrides", nargs="*", metavar="key.path=value")
    args = parser.parse_args(argv)
    from launchers.recipe.load import resolve

    print(resolve(args.method, args.model, args.overrides).recipe.to_yaml(), end="")
    return 0
