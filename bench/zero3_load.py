"""ZeRO-3 model loading: under zero.Init (the train stage's order: arguments first) vs a whole copy per rank (the
model loaded before the DeepSpeed config is registered), on 2 CPU ranks over gloo: peak RSS per rank and whether
every parameter is partitioned when loading returns.

    .venv/bin/python bench/zero3_load.py [--hidden 768 --layers 17 --repeats 3]

A GPTBigCode of --hidden × --layers (random init, the project's tokenizer; 768 × 17 is ~104M parameters, 420 MB
in fp32) is written once as the run's base. Each repeat starts two fresh `torchrun` worlds, one per mode, the
order switched every repeat; each rank reports its RSS after the imports and its peak (ru_maxrss) once loading
returned. Torch threads are pinned to 1 per rank. The table shows medians, min–max, and the ratio of the medians.

    --worker MODE RUN_DIR BASE OUT       one rank of one world (what torchrun starts; tests/integration use it)
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
MODES = ("zero_init", "whole_copy")


def recipe_for(base: Path):  # noqa: ANN201 - imports stay inside the worker
    """A full fine-tune of the fp32 checkpoint in `base`, trained in bf16 (as StarCoder's fp32 hub weights are)."""
    from launchers.recipe.load import resolve
    from launchers.recipe.plan import make_plan

    resolved = resolve("full-ft", "tiny-starcoder", [
        "model.init=pretrained", f"model.name_or_path={base}", f"model.config={base / 'config.json'}",
        "model.dtype=bfloat16", "distributed.backend=deepspeed-zero3", "resources.tasks_per_node=2",
        "data.seq_length=128"])
    return resolved.recipe, make_plan(resolved)


def write_base(config: Path, base: Path) -> Path:
    """A random-init fp32 checkpoint of `config` (and the project's tokenizer) in `base`."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    torch.manual_seed(0)
    AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(config), dtype=torch.float32).save_pretrained(base)
    AutoTokenizer.from_pretrained(ROOT / "recipes" / "assets" / "tokenizer").save_pretrained(base)
    return base


def worker(mode: str, run_dir: Path, base: Path, out: Path) -> None:
    """One rank: load the model as `mode` says and write what it measured to OUT.<rank>.json."""
    import torch

    from jobs.common.model import load_model
    from jobs.common.tokenizer import load_tokenizer
    from jobs.spec.context import RankContext
    from jobs.spec.rundir import RunDir
    from jobs.train.stage import load_for_training, sft_config

    torch.set_num_threads(1)
    rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    context = RankContext(run_dir, rank=rank, local_rank=int(os.environ["LOCAL_RANK"]), world_size=world,
                          local_world_size=world)
    recipe, plan = recipe_for(base)
    tokenizer = load_tokenizer(recipe)
    imported_kib = rss_kib()
    if mode == "zero_init":
        args, model = load_for_training(recipe, plan, context, tokenizer)
    else:  # what the train stage did before: the model first, then the arguments that register DeepSpeed
        model = load_model(recipe, str(base), context)
        args = sft_config(recipe, plan, RunDir(run_dir))
    peak_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    params = list(model.parameters())
    with torch.no_grad():  # read every weight, as wrapping the model does: mapped pages become resident
        touched = sum(float(p.float().sum()) for p in params)
    assert touched == touched  # not NaN
    record = {
        "mode": mode, "rank": rank, "imported_mib": imported_kib / 1024, "peak_mib": peak_kib / 1024,
        "pss_mib": pss_kib() / 1024, "dtype": str(params[0].dtype),
        "parameters": sum(getattr(p, "ds_numel", p.numel()) for p in params),
        "partitioned": sum(1 for p in params if hasattr(p, "ds_id") and p.numel() == 0), "tensors": len(params),
        "zero3_registered": bool(args.deepspeed),
    }
    Path(f"{out}.{rank}.json").write_text(json.dumps(record))


def pss_kib() -> int:
    """This process's proportional set size: pages shared with the other rank (a memory-mapped checkpoint) count
    half — the memory the node really spends on it."""
    for line in Path("/proc/self/smaps_rollup").read_text().splitlines():
        if line.startswith("Pss:"):
            return int(line.split()[1])
    return 0


def rss_kib() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def write_config(path: Path, hidden: int, layers: int) -> Path:
    config = json.loads((ROOT / "recipes" / "tiny-starcoder" / "config.json").read_text())
    config.update(n_embd=hidden, n_layer=layers, n_head=max(1, hidden // 64), n_inner=4 * hidden)
    path.write_text(json.dumps(config))
    return path


def run_world(mode: str, run_dir: Path, base: Path, out: Path, timeout_s: float = 900) -> list[dict]:
    """Two ranks of one mode, as torchrun starts them; their records, rank 0 first."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}
    subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                    __file__, "--worker", mode, str(run_dir), str(base), str(out)],
                   check=True, cwd=run_dir.parent, env=env, timeout=timeout_s)
    return [json.loads(Path(f"{out}.{rank}.json").read_text()) for rank in (0, 1)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--hidden", type=int, default=768)
    parser.add_argument("--layers", type=int, default=17)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--worker", nargs=4, metavar=("MODE", "RUN_DIR", "BASE", "OUT"))
    args = parser.parse_args()
    if args.worker:
        mode, run_dir, base, out = args.worker
        worker(mode, Path(run_dir), Path(base), Path(out))
        return
    records: dict[str, list[dict]] = {mode: [] for mode in MODES}
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        run_dir = work / "runs" / "bench" / "load"
        run_dir.mkdir(parents=True)
        base = write_base(write_config(work / "model.json", args.hidden, args.layers), work / "base")
        run_world("zero_init", run_dir, base, work / "warm")  # builds DeepSpeed's ops, warms the page cache
        for repeat in range(args.repeats):
            for mode in MODES if repeat % 2 == 0 else MODES[::-1]:
                records[mode] += run_world(mode, run_dir, base, work / f"{mode}-{repeat}")
    params = records["zero_init"][0]["parameters"]
    print(f"{params / 1e6:.0f}M parameters (fp32 checkpoint loaded as bf16), 2 CPU ranks, {args.repeats} repeats; "
          "MiB, median (min–max)")
    print("| mode | rank | peak RSS at load | PSS, every weight read | all parameters partitioned |\n|---|---|---|---|---|")
    for mode in MODES:
        for rank in (0, 1):
            mine = [r for r in records[mode] if r["rank"] == rank]
            print(f"| {mode} | {rank} | {spread([r['peak_mib'] for r in mine])} | {spread([r['pss_mib'] for r in mine])}"
                  f" | {'yes' if all(r['partitioned'] == r['tensors'] for r in mine) else 'no'} |")
    for key, what in (("peak_mib", "peak RSS"), ("pss_mib", "PSS")):
        ratio = (statistics.median(sum(r[key] for r in records["zero_init"][i:i + 2])
                                   for i in range(0, len(records["zero_init"]), 2))
                 / statistics.median(sum(r[key] for r in records["whole_copy"][i:i + 2])
                                     for i in range(0, len(records["whole_copy"]), 2)))
        print(f"zero_init / whole_copy, {what} of both ranks together: {ratio:.2f}×")


def spread(values: list[float]) -> str:
    return f"{statistics.median(values):.0f} ({min(values):.0f}–{max(values):.0f})"


if __name__ == "__main__":
    main()
