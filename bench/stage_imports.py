"""What a stage pays to import its job module in a fresh interpreter (every stage on SLURM), with the modules its
recipe never uses left out (jobs/spec/imports.py: bitsandbytes for a LoRA or a full fine-tune) and without.

    .venv/bin/python bench/stage_imports.py                       # the train stage and the floor, 7 pairs
    .venv/bin/python bench/stage_imports.py --stages prepare,train,export,eval,floor --pairs 5

Each measurement is a fresh `python -c` importing `launchers.submit.stage` and the stage's job module, as a rank
does, with its threads pinned to 1; both sides import the same code, one after `leave_out('bitsandbytes')`. The two
run in alternating pairs, the order switched every pair, and each ratio (left out / everything) is taken within a
pair. Printed per stage: wall seconds and peak RSS (the child's own ru_maxrss), median (min–max), the ratio with
its spread, and the work counted: how many modules each side imported, and whether bitsandbytes was among them.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

from pairs import alternate, load, pinned_env, spread

from launchers.submit.stage import JOB_MODULES

ROOT = Path(__file__).resolve().parents[1]
# the stages' job modules, and the floor: what any stage that builds a transformers model imports
MODULES = {**JOB_MODULES, "floor": "transformers.modeling_utils"}
PROBE = ("import sys, json\n"
         "import launchers.submit.stage\n"
         "from jobs.spec.imports import leave_out\n"
         "if {leave!r}: leave_out('bitsandbytes')\n"
         "import {module}\n"
         "print(json.dumps({{'modules': sum(m is not None for m in sys.modules.values()),"
         " 'bitsandbytes': sys.modules.get('bitsandbytes') is not None}}))\n")


def measure(module: str, leave: bool) -> dict[str, float]:
    """One fresh interpreter: wall seconds, its own peak RSS in MiB (reaped with wait4), the modules it imported."""
    started = time.monotonic()
    process = subprocess.Popen([sys.executable, "-c", PROBE.format(leave=leave, module=module)], cwd=ROOT,
                               env=pinned_env(1, HF_HUB_OFFLINE="1", PYTHONPATH=str(ROOT)),
                               stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    assert process.stdout is not None
    out = process.stdout.read()
    _, status, usage = os.wait4(process.pid, 0)
    seconds = time.monotonic() - started
    process.returncode = os.waitstatus_to_exitcode(status)  # reaped here: Popen must not wait for it again
    if process.returncode:
        raise SystemExit(f"importing {module} failed ({process.returncode})")
    seen = json.loads(out.strip().splitlines()[-1])
    if seen["bitsandbytes"] and leave:
        raise SystemExit(f"{module}: bitsandbytes imported although left out")
    return {"seconds": seconds, "peak": usage.ru_maxrss / 1024, "modules": seen["modules"],
            "bitsandbytes": seen["bitsandbytes"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--stages", default="train,floor", help="comma-separated, of " + ", ".join(MODULES)
                        + " (floor: transformers.modeling_utils alone, below every stage that builds a model)")
    parser.add_argument("--pairs", type=int, default=7)
    args = parser.parse_args()
    stages = [name.strip() for name in args.stages.split(",") if name.strip()]
    unknown = [name for name in stages if name not in MODULES]
    if unknown or not stages or args.pairs < 1:
        print(f"stage_imports: --stages {args.stages!r} (allowed: {', '.join(MODULES)}) and --pairs >= 1",
              file=sys.stderr)
        sys.exit(2)
    print(f"fresh-interpreter imports, 1 thread, {args.pairs} alternating pairs per stage; load {load():.2f}")
    print(f"{'stage':8} {'side':13} {'seconds':18} {'peak MiB':20} {'modules':>7} {'bitsandbytes':>12}   "
          "left out / everything")
    for stage in stages:
        runs: dict[str, list[dict[str, float]]] = {"left out": [], "everything": []}
        measure(MODULES[stage], True)  # warm-up: the page cache holds the libraries for both sides
        for _, side in alternate(args.pairs, "left out", "everything"):
            runs[side].append(measure(MODULES[stage], side == "left out"))
        ratio = [a["seconds"] / b["seconds"] for a, b in zip(runs["left out"], runs["everything"], strict=True)]
        for side, results in runs.items():
            print(f"{stage:8} {side:13} {spread([r['seconds'] for r in results]):18} "
                  f"{spread([r['peak'] for r in results], 0):20} {int(results[0]['modules']):>7} "
                  f"{'imported' if results[0]['bitsandbytes'] else 'no':>12}"
                  + (f"   {spread(ratio)}x" if side == "left out" else ""))
    print(f"load after: {load():.2f}")


if __name__ == "__main__":
    main()
