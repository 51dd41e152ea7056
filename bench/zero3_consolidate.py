"""ZeRO-3 consolidation: jobs.export.consolidate vs DeepSpeed's zero_to_fp32 on the same checkpoint, peak RSS and time.

    .venv/bin/python bench/zero3_consolidate.py [--hidden 1024 --layers 8 --pairs 5 --threads 1]
    .venv/bin/python bench/zero3_consolidate.py --workdir /tmp/z3     # keep the checkpoint, reuse it next time

Trains a wide GPTBigCode (random init, the project's tokenizer) for one step on 2 CPU ranks with ZeRO-3 and the
16-bit gather off (`launch full-ft tiny-starcoder --local --nproc 2` with overrides), so final/ holds DeepSpeed's
per-rank shards only. Then each tool consolidates final/ in a fresh process with its threads pinned: ours
(consolidate_zero3 → safetensors) and DeepSpeed's convert_zero_checkpoint_to_fp32_state_dict (a pickled .bin: its
safetensors mode refuses the tied embeddings), in `--pairs` pairs, the order switched every round, the previous
output written back and removed before each run. The child reports its own peak RSS (ru_maxrss) after its imports
and at the end; the ratio is taken within each pair. The work is counted: both read the same optimizer files, and
the script checks that both outputs hold the same tensors (ours writes the tied lm_head once). Printed: a table of
medians with min–max, and the 1-minute load beside each run.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from pairs import alternate, load, pinned_env, settle, spread

ROOT = Path(__file__).resolve().parents[1]
CHILD = """
import resource, sys, time
import torch
torch.set_num_threads(int(sys.argv[3]))
{imports}
imported = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
start = time.perf_counter()
{call}
print(time.perf_counter() - start, imported, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)
"""
TOOLS = {
    "ours": CHILD.format(imports="from pathlib import Path\nfrom jobs.export.consolidate import consolidate_zero3",
                         call="consolidate_zero3(Path(sys.argv[1]), Path(sys.argv[2]))"),
    "zero_to_fp32": CHILD.format(
        imports="from deepspeed.utils.zero_to_fp32 import convert_zero_checkpoint_to_fp32_state_dict",
        call="convert_zero_checkpoint_to_fp32_state_dict(sys.argv[1], sys.argv[2])"),
}


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


def measure(tool: str, source: Path, target: Path, threads: int) -> dict[str, float]:
    settle(target)  # the previous run's output: written back, removed
    before = load()
    env = pinned_env(threads, PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])))
    done = subprocess.run([sys.executable, "-c", TOOLS[tool], str(source), str(target), str(threads)], cwd=ROOT,
                          capture_output=True, text=True, env=env)
    if done.returncode:
        sys.exit(f"{tool} failed:\n{done.stderr[-3000:]}")
    seconds, imported, peak = (float(x) for x in done.stdout.strip().splitlines()[-1].split())
    written = sum(p.stat().st_size for p in target.rglob("*") if p.is_file())
    result = {"seconds": seconds, "imports_mib": imported / 1024, "peak_mib": peak / 1024,
              "written_mib": written / 2**20, "load": before}
    print(f"  {tool:12} peak {result['peak_mib']:6.0f} MiB (imports {result['imports_mib']:4.0f})  "
          f"{seconds:6.2f} s  wrote {result['written_mib']:5.0f} MiB  load {before:.2f}", file=sys.stderr, flush=True)
    return result


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
    parser.add_argument("--pairs", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1, help="torch/OMP/MKL threads of every consolidation")
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
              f"{time.perf_counter() - started:.0f} s); {args.pairs} alternating pairs, {args.threads} thread(s)",
              file=sys.stderr)
        outputs = {"ours": work / "ours", "zero_to_fp32": work / "theirs"}
        results: dict[str, list[dict[str, float]]] = {"ours": [], "zero_to_fp32": []}
        for _, tool in alternate(args.pairs, "ours", "zero_to_fp32"):
            results[tool].append(measure(tool, final, outputs[tool], args.threads))
        identical = same_tensors(outputs["ours"], outputs["zero_to_fp32"])
        settle(*outputs.values())
    pairs = list(zip(results["ours"], results["zero_to_fp32"], strict=True))
    ratios = [o["peak_mib"] / t["peak_mib"] for o, t in pairs]
    seconds = [o["seconds"] / t["seconds"] for o, t in pairs]
    loads = [r["load"] for runs in results.values() for r in runs]
    print("| tool | peak RSS (MiB) | after imports (MiB) | seconds | wrote (MiB) |\n|---|---|---|---|---|")
    for name, runs in results.items():
        print(f"| {name} | {spread([r['peak_mib'] for r in runs], 0)} | "
              f"{spread([r['imports_mib'] for r in runs], 0)} | {spread([r['seconds'] for r in runs])} | "
              f"{statistics.median(r['written_mib'] for r in runs):.0f} |")
    print(f"\npeak RSS ours / zero_to_fp32, per pair: {spread(ratios)}x (goal <= 0.5x: "
          f"{'met' if statistics.median(ratios) <= 0.5 else 'MISSED'}); seconds: {spread(seconds)}x; "
          f"identical tensors: {identical}; 1-min load {min(loads):.2f}–{max(loads):.2f}")


if __name__ == "__main__":
    main()
