"""ZeRO-3 consolidation: jobs.export.consolidate vs DeepSpeed's zero_to_fp32 on the same checkpoint, peak RSS and time.

    .venv/bin/python bench/zero3_consolidate.py [--hidden 1024 --layers 8 --repeats 3]

Trains a wide GPTBigCode (random init, the project's tokenizer) for one step on 2 CPU ranks with ZeRO-3 and the
16-bit gather off (`launch full-ft tiny-starcoder --local --nproc 2` with overrides), so final/ holds DeepSpeed's
per-rank shards only. Then each tool consolidates final/ in a fresh process, alternating, `--repeats` times: ours
(consolidate_zero3 → safetensors) and DeepSpeed's convert_zero_checkpoint_to_fp32_state_dict (a pickled .bin: its
safetensors mode refuses the tied embeddings). The child reports its own peak RSS (ru_maxrss); the script checks
both outputs hold identical tensors and prints a table of medians.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
OURS = """
import resource, sys, time
from pathlib import Path
from jobs.export.consolidate import consolidate_zero3
start = time.perf_counter()
consolidate_zero3(Path(sys.argv[1]), Path(sys.argv[2]))
print(time.perf_counter() - start, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)
"""
THEIRS = """
import resource, sys, time
from deepspeed.utils.zero_to_fp32 import convert_zero_checkpoint_to_fp32_state_dict
start = time.perf_counter()
convert_zero_checkpoint_to_fp32_state_dict(sys.argv[1], sys.argv[2])
print(time.perf_counter() - start, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)
"""


def train_checkpoint(work: Path, hidden: int, layers: int) -> Path:
    config = json.loads((ROOT / "recipes" / "tiny-starcoder" / "config.json").read_text())
    config.update(n_embd=hidden, n_layer=layers, n_head=hidden // 64, n_inner=4 * hidden)
    (work / "wide.json").write_text(json.dumps(config))
    ds = json.loads((ROOT / "recipes" / "accelerate" / "deepspeed_zero3.json").read_text())
    ds["zero_optimization"]["stage3_gather_16bit_weights_on_model_save"] = False
    (work / "zero3.json").write_text(json.dumps(ds))
    accelerate = (ROOT / "recipes" / "accelerate" / "deepspeed_zero3.yaml").read_text()
    (work / "zero3.yaml").write_text(accelerate.replace("recipes/accelerate/deepspeed_zero3.json",
                                                        str(work / "zero3.json")))
    command = [sys.executable, "-m", "launchers.cli.main", "full-ft", "tiny-starcoder", "--local", "--nproc", "2",
               "--name", "wide", "--runs-dir", str(work / "runs"), "--stages", "prepare,train",
               f"model.config={work / 'wide.json'}", "distributed.backend=deepspeed-zero3",
               f"distributed.accelerate_config={work / 'zero3.yaml'}", "data.seq_length=128",
               "training.max_steps=1", "training.save_steps=1", "training.per_device_batch_size=1",
               "training.eval_steps=1000"]
    subprocess.run(command, check=True, cwd=work, env={**os.environ, "HF_HUB_OFFLINE": "1"},
                   stdout=subprocess.DEVNULL)
    return work / "runs" / "tiny-starcoder" / "wide" / "final"


def measure(code: str, source: Path, target: Path) -> tuple[float, float]:
    shutil.rmtree(target, ignore_errors=True)
    done = subprocess.run([sys.executable, "-c", code, str(source), str(target)], cwd=ROOT, capture_output=True,
                          text=True)
    if done.returncode:
        sys.exit(f"{code.splitlines()[2]} failed:\n{done.stderr[-3000:]}")
    seconds, kilobytes = done.stdout.strip().splitlines()[-1].split()
    return float(seconds), float(kilobytes) / 1024


def same_tensors(ours: Path, theirs: Path) -> bool:
    import torch
    from safetensors.torch import load_file

    mine = {k: v for p in ours.glob("*.safetensors") for k, v in load_file(p).items()}
    other = {k: v for p in theirs.glob("*.bin") for k, v in torch.load(p, map_location="cpu").items()}
    return all(torch.equal(mine[k], other[k]) for k in mine) and set(other) - set(mine) <= {"lm_head.weight"}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--hidden", type=int, default=1024)
    parser.add_argument("--layers", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--workdir", type=Path, help="keep the checkpoint here and reuse it on the next run")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="zero3-bench-") as tmp:
        work = args.workdir or Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        started = time.perf_counter()
        final = work / "runs" / "tiny-starcoder" / "wide" / "final"
        if not (final / "latest").is_file():
            final = train_checkpoint(work, args.hidden, args.layers)
        shards = sum(p.stat().st_size for p in final.rglob("*optim_states.pt"))
        print(f"checkpoint: {final} ({shards / 2**20:.0f} MiB of optimizer states; trained in "
              f"{time.perf_counter() - started:.0f} s)", file=sys.stderr)
        results: dict[str, list[tuple[float, float]]] = {"ours": [], "zero_to_fp32": []}
        for _ in range(args.repeats):
            results["ours"].append(measure(OURS, final, work / "ours"))
            results["zero_to_fp32"].append(measure(THEIRS, final, work / "theirs"))
        model_mib = sum(p.stat().st_size for p in (work / "ours").glob("*.safetensors")) / 2**20
        identical = same_tensors(work / "ours", work / "theirs")
    rss = {name: statistics.median(r for _, r in runs) for name, runs in results.items()}
    secs = {name: statistics.median(s for s, _ in runs) for name, runs in results.items()}
    print("| tool | peak RSS (MiB) | seconds | RSS vs zero_to_fp32 |\n|---|---|---|---|")
    for name in results:
        print(f"| {name} | {rss[name]:.0f} | {secs[name]:.2f} | {rss[name] / rss['zero_to_fp32']:.2f}× |")
    print(f"\nmodel: {model_mib:.0f} MiB of fp32 safetensors; identical tensors: {identical}; medians of "
          f"{args.repeats}")


if __name__ == "__main__":
    main()
