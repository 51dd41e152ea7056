"""The planner's CPU estimate against real training: peak RSS of each rank of a 2-rank gloo run (DDP and DeepSpeed
ZeRO-3) of GPTBigCode models of two sizes (≥ 50M parameters, random init, fp32), next to `launch plan --gpu cpu`.

    .venv/bin/python bench/planner_cpu.py [--sizes 768x8,1024x10] [--steps 3] [--allocators default,mmap-1MiB]
                                          [--backends ddp,deepspeed-zero3] [--repeats 3]

Each case is a real `launch full-ft tiny-starcoder --local --nproc 2 --stages train` with the model's config
(sequence 256, micro batch 2, no checkpoint before the final save) and one torch thread per rank, under glibc's
default malloc and with large blocks always mmap'ed (MALLOC_MMAP_THRESHOLD_: freed memory goes back to the system
instead of staying in a fragmented heap). The rank
processes' peak resident memory is their kernel high-water mark (VmHWM in /proc, read until they exit). The
planner's figure per rank is its CPU-rank memory (model states, activations, buffers) plus the rank's runtime;
rank 0 also writes the final model, the planner's "final save". The table shows measured, planned and their
ratio per rank (with --repeats N: the median of N runs, the min–max beside it, and the ratio to the median);
docs/benchmarks.md records it.
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

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from launchers.planner.shape import model_shape  # noqa: E402 (the repository on the path first)

GiB = 2**30
# glibc's malloc: its default (a dynamic mmap threshold: freed large blocks stay in the heap, fragmented), or large
# blocks always mmap'ed and returned on free
ALLOCATORS = {"default": {}, "mmap-1MiB": {"MALLOC_MMAP_THRESHOLD_": "1048576", "MALLOC_TRIM_THRESHOLD_": "1048576"}}


def config_for(hidden: int, layers: int, directory: Path) -> Path:
    config = json.loads((ROOT / "recipes" / "tiny-starcoder" / "config.json").read_text())
    config.update(n_embd=hidden, n_layer=layers, n_head=hidden // 64, n_inner=4 * hidden, n_positions=512)
    path = directory / f"gpt-{hidden}x{layers}.json"
    path.write_text(json.dumps(config))
    return path


def overrides(config: Path, backend: str, steps: int) -> list[str]:
    return [f"model.config={config}", f"distributed.backend={backend}", "data.seq_length=256",
            "training.per_device_batch_size=2", f"training.max_steps={steps}", "training.save_steps=1000",
            "training.eval_steps=1000", "training.logging_steps=1"]


def planned(config: Path, backend: str, steps: int) -> dict:
    command = [sys.executable, "-m", "launchers.cli.main", "plan", "full-ft", "tiny-starcoder",
               *overrides(config, backend, steps), "--gpu", "cpu", "--gpus-per-node", "2", "--format", "json"]
    return json.loads(subprocess.run(command, cwd=ROOT, capture_output=True, text=True, check=True).stdout)


def peak_hwm(pid: int) -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def descendants(pid: int) -> list[int]:
    children: dict[int, list[int]] = {}
    for status in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = status.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        children.setdefault(int(fields[1]), []).append(int(status.parent.name))
    found, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


def measured(config: Path, backend: str, steps: int, work: Path, allocator: str, repeat: int = 0) -> list[int]:
    """Peak RSS of each rank process (the two largest python descendants of the launch)."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false",
           "MLFLOW_DISABLE_TELEMETRY": "true", "CLUSTERFT_SYSTEM_METRICS_S": "0", **ALLOCATORS[allocator]}
    command = [sys.executable, "-m", "launchers.cli.main", "full-ft", "tiny-starcoder", *overrides(config, backend,
               steps), "--local", "--nproc", "2", "--stages", "train", "--runs-dir", str(work / "runs"),
               "--name", f"{backend}-{config.stem}-{allocator}-{repeat}"]
    launch = subprocess.Popen(command, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    peaks: dict[int, int] = {}
    while launch.poll() is None:
        for pid in descendants(launch.pid):
            peaks[pid] = max(peaks.get(pid, 0), peak_hwm(pid))
        time.sleep(0.05)
    output = launch.stdout.read() if launch.stdout else ""
    if launch.returncode != 0:
        raise SystemExit(f"launch failed:\n{output[-3000:]}")
    return sorted(peaks.values(), reverse=True)[:2]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="768x8,1024x10", help="HIDDENxLAYERS,... (GPTBigCode, 64-wide heads)")
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--backends", default="ddp,deepspeed-zero3")
    parser.add_argument("--allocators", default=",".join(ALLOCATORS), help=f"of {', '.join(ALLOCATORS)}")
    parser.add_argument("--repeats", type=int, default=1, help="runs per case: the median and min-max are shown")
    args = parser.parse_args()
    rows = [("model", "params", "backend", "glibc malloc", "rank", "measured GiB (min-max)", "planned GiB",
             "planned/measured")]
    with tempfile.TemporaryDirectory() as scratch:
        work = Path(scratch)
        for size in args.sizes.split(","):
            hidden, layers = (int(x) for x in size.split("x"))
            config = config_for(hidden, layers, work)
            for backend in args.backends.split(","):
                plan = planned(config, backend, args.steps)["cpu_per_node_gb"]
                per_rank = plan["checkpoint"] / 2  # the node's runtime and training, per rank
                rank0 = per_rank + plan["final_save"] - plan["checkpoint"]  # and the final model being written
                params = model_shape(json.loads(config.read_text())).parameters
                for allocator in args.allocators.split(","):
                    runs = [measured(config, backend, args.steps, work, allocator, i) for i in range(args.repeats)]
                    for rank, expected in enumerate((rank0, per_rank)):
                        peaks = sorted(run[rank] / GiB for run in runs)
                        median = statistics.median(peaks)
                        spread = f" ({peaks[0]:.2f}-{peaks[-1]:.2f})" if len(peaks) > 1 else ""
                        rows.append((config.stem, f"{params / 1e6:.0f}M", backend, allocator,
                                     "0 (final save)" if rank == 0 else "1", f"{median:.2f}{spread}",
                                     f"{expected:.2f}", f"{expected / median:.2f}"))
                    print(rows[-2], rows[-1], flush=True)
    widths = [max(len(str(row[i])) for row in rows) for i in range(len(rows[0]))]
    print("\n".join(" | ".join(str(cell).ljust(w) for cell, w in zip(row, widths)) for row in rows))


if __name__ == "__main__":
    main()
