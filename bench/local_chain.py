"""The local chain's wall time, warm (one fork server) against cold (a fresh process per stage), stage by stage.

    .venv/bin/python bench/local_chain.py                  # 3 pairs of `launch lora tiny-starcoder --local`
    .venv/bin/python bench/local_chain.py --repeats 1 --method full-ft

Each pair runs the whole chain (prepare, train, export, eval) twice in one runs root, warm and cold
(CLUSTERFT_COLD_START=1: what every stage paid before the fork server, and still pays on SLURM), the order switched
every pair so load drift hits both. Torch, the tokenizer and OpenMP get the same threads in both (the machine's
cores; pinned by OMP_NUM_THREADS / RAYON_NUM_THREADS). A warm-up chain first fills the runs root's caches (prepared
data, the LoRA target check) so neither side pays them. The work is the same in both: 30 steps × 4 × 256 tokens;
the script checks both report the same final train loss.

Printed: per side the median (min–max) of the wall time, of the launcher's time before its first stage started,
and of each stage's "done in T s: a s start-up, b s imports, c s work" line; then the cold/warm ratio of the wall
time with its spread over the pairs. What a stage pays to import on SLURM, where it always starts cold:
bench/stage_imports.py.
"""

from __future__ import annotations

import argparse
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DONE = re.compile(r"^\[(\w+)\] done in ([\d.]+) s: ([\d.]+) s start-up, ([\d.]+) s imports, ([\d.]+) s work")
LOSS = re.compile(r"^\[launch\] train loss ([\d.]+)")


def environment(cold: bool) -> dict[str, str]:
    threads = str(len(os.sched_getaffinity(0)))
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false", "MLFLOW_DISABLE_TELEMETRY": "true",
           "OMP_NUM_THREADS": threads, "RAYON_NUM_THREADS": threads, "PYTHONPATH": str(ROOT)}
    env.pop("CLUSTERFT_COLD_START", None)
    return {**env, "CLUSTERFT_COLD_START": "1"} if cold else env


def chain(workdir: Path, method: str, name: str, cold: bool) -> dict[str, float]:
    """One whole chain: wall time, launcher time before the first stage, each stage's figures, the final loss."""
    started = time.monotonic()
    process = subprocess.Popen(
        [sys.executable, "-m", "launchers.cli.main", method, "tiny-starcoder", "--local", "--name", name],
        cwd=workdir, env=environment(cold), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    assert process.stdout is not None
    figures: dict[str, float] = {}
    lines = []
    for line in process.stdout:
        lines.append(line)
        if line.startswith("[prepare] rank 0/") and "launcher" not in figures:
            figures["launcher"] = time.monotonic() - started
        if match := DONE.match(line):
            stage = match.group(1)
            for part, value in zip(("total", "start-up", "imports", "work"), match.groups()[1:], strict=True):
                figures[f"{stage} {part}"] = float(value)
        if match := LOSS.match(line):
            figures["loss"] = float(match.group(1))
    if process.wait() != 0:
        raise SystemExit(f"{name} failed:\n{''.join(lines[-30:])}")
    figures["wall"] = time.monotonic() - started
    return figures


def spread(values: list[float]) -> str:
    return f"{statistics.median(values):6.1f} ({min(values):.1f}–{max(values):.1f})"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3, help="pairs (default 3)")
    parser.add_argument("--method", default="lora", help="full-ft, lora or qlora (default lora)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-chain-") as tmp:
        workdir = Path(tmp)
        chain(workdir, args.method, "warm-up", cold=False)
        sides: dict[bool, list[dict[str, float]]] = {True: [], False: []}
        for pair in range(args.repeats):
            for cold in ((True, False) if pair % 2 == 0 else (False, True)):
                sides[cold].append(chain(workdir, args.method, f"{'cold' if cold else 'warm'}{pair}", cold))
    losses = {round(run["loss"], 4) for runs in sides.values() for run in runs}
    assert len(losses) == 1, f"warm and cold chains trained differently: final losses {losses}"
    load = os.getloadavg()[0]
    keys = ["wall", "launcher"] + [f"{stage} {part}" for stage in ("prepare", "train", "export", "eval")
                                   for part in ("total", "start-up", "imports", "work")]
    print(f"launch {args.method} tiny-starcoder --local, {args.repeats} pair(s), load {load:.1f}, "
          f"final train loss {losses.pop()} on both sides; seconds, median (min–max)")
    print(f"{'':<22}{'cold (fresh process per stage)':>32}{'warm (fork server)':>26}")
    for key in keys:
        cold, warm = (spread([run[key] for run in sides[side]]) for side in (True, False))
        print(f"{key:<22}{cold:>32}{warm:>26}")
    ratios = [cold["wall"] / warm["wall"] for cold, warm in zip(sides[True], sides[False], strict=True)]
    print(f"wall, cold / warm: {spread(ratios).strip()}×")


if __name__ == "__main__":
    main()
