"""The GPU acceptance run: what only a GPU can show, measured in one command and appended to docs/benchmarks.md.

    .venv/bin/python bench/gpu/acceptance.py                 # on one GPU, about 8 minutes; --out FILE to write elsewhere

Parts, each one line of result (on a machine without CUDA each says it skipped, and nothing is written):
  gpu-tests     pytest -m gpu (tests/gpu)
  full-ft       bf16 full fine-tuning of a starcoderbase-1b-shaped GPTBigCode (random init), SDPA and, where
                flash-attn is installed, FlashAttention-2: tokens/s, MFU, peak GPU memory
  lora-qlora    LoRA vs QLoRA tokens/s on the same model
  fsdp-qlora    a QLoRA model's logits before and after FSDP1 wrapping (and FSDP2's fully_shard) on one rank: equal,
                or the largest difference (bitsandbytes#1945)
  vllm          generation of HumanEval's 164 prompts, vLLM vs transformers (bench/generation_engines.py)
  planner       `launch plan`'s planned allocation against torch's measured peak, for each training part's run;
                the training parts' MFU is appended as the table the planner reads (docs/planning.md)

Every training part runs the real `launch ... --local` chain (prepare, train) in a scratch runs root.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
BASE_1B = ROOT / "recipes" / "starcoderbase-1b" / "config.json"
TRAIN_STEPS = 20


def cuda() -> bool:
    import torch

    return torch.cuda.is_available()


def launch_train(runs: Path, method: str, name: str, *overrides: str) -> dict[str, float]:
    """`launch METHOD tiny-starcoder` on the 1B shape, prepare and train only; the train run's last metrics."""
    command = [sys.executable, "-m", "launchers.cli.main", method, "tiny-starcoder", "--local", "--nproc", "1",
               "--name", name, "--runs-dir", str(runs), "--stages", "prepare,train", f"model.config={BASE_1B}",
               "model.dtype=bfloat16", "data.seq_length=2048", "training.per_device_batch_size=4",
               f"training.max_steps={TRAIN_STEPS}", "training.logging_steps=5", "training.save_steps=1000",
               "training.gradient_checkpointing=true", *overrides]
    subprocess.run(command, check=True, cwd=ROOT, timeout=900)
    run = runs / "tiny-starcoder" / name
    metrics = {**json.loads((run / "last_metrics.json").read_text())["metrics"], "peak_memory_gb": peak_memory(run)}
    CASES.append(Case(name, method, tuple(command[command.index("--stages") + 2:]), metrics))
    return metrics


@dataclass(frozen=True)
class Case:
    """A training part's run, for the planner part: what was launched and what it measured."""

    name: str
    method: str
    overrides: tuple[str, ...]
    metrics: dict[str, float]


CASES: list[Case] = []


def peak_memory(run: Path) -> float:
    import mlflow

    ids = json.loads((run / "mlflow.json").read_text())
    client = mlflow.MlflowClient(f"sqlite:///{run.parent.parent / 'mlflow.db'}")
    history = client.get_metric_history(ids["train"], "train/peak_memory_gb")
    return max((m.value for m in history), default=float("nan"))


def gpu_tests(_: Path) -> str:
    done = subprocess.run([sys.executable, "-m", "pytest", "-m", "gpu", "tests/gpu", "-q"], cwd=ROOT, timeout=600,
                          capture_output=True, text=True)
    return done.stdout.strip().splitlines()[-1] if done.stdout.strip() else f"exit {done.returncode}"


def full_ft(runs: Path) -> str:
    import importlib.util

    rows = []
    kinds = ["sdpa"] + (["flash_attention_2"] if importlib.util.find_spec("flash_attn") else [])
    for attention in kinds:
        m = launch_train(runs, "full-ft", f"full-{attention}", f"model.attn_implementation={attention}")
        rows.append(f"{attention}: {m.get('train/tokens_per_s', float('nan')):.0f} tok/s, "
                    f"MFU {m.get('train/mfu', float('nan')):.2f}, peak {m['peak_memory_gb']:.1f} GB")
    return "; ".join(rows) + ("" if len(kinds) > 1 else " (flash-attn not installed)")


def lora_qlora(runs: Path) -> str:
    lora = launch_train(runs, "lora", "lora", "method.lora.target_modules=[c_attn,c_proj,c_fc]")
    qlora = launch_train(runs, "qlora", "qlora", "method.lora.target_modules=[c_attn,c_proj,c_fc]",
                         "method.quantization.compute_dtype=bfloat16", "method.quantization.storage_dtype=bfloat16")
    ratio = qlora["train/tokens_per_s"] / lora["train/tokens_per_s"]
    return (f"LoRA {lora['train/tokens_per_s']:.0f} tok/s, QLoRA {qlora['train/tokens_per_s']:.0f} tok/s "
            f"({ratio:.2f}×); peak {lora['peak_memory_gb']:.1f} vs {qlora['peak_memory_gb']:.1f} GB")


def fsdp_qlora(_: Path) -> str:
    """Logits of a 4-bit (nf4, double quant, bf16 storage) model before and after wrapping, one rank."""
    import os

    import torch
    import torch.distributed as dist
    from torch.distributed.fsdp import FullyShardedDataParallel, fully_shard
    from transformers import AutoConfig, AutoModelForCausalLM, BitsAndBytesConfig

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT="29517", RANK="0", WORLD_SIZE="1")
    dist.init_process_group("nccl")
    quant = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
                               bnb_4bit_compute_dtype=torch.bfloat16, bnb_4bit_quant_storage=torch.bfloat16)
    with tempfile.TemporaryDirectory() as tmp:
        torch.manual_seed(0)
        AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(BASE_1B), dtype=torch.bfloat16).save_pretrained(tmp)
        ids = torch.randint(0, 1000, (2, 128), device="cuda")
        results = []
        for name, wrap in (("FSDP1", lambda m: FullyShardedDataParallel(m, device_id=0, use_orig_params=False)),
                           ("FSDP2", lambda m: fully_shard(m))):
            model = AutoModelForCausalLM.from_pretrained(tmp, quantization_config=quant, device_map={"": 0}).eval()
            with torch.no_grad():
                before = model(ids).logits.float()
                after = wrap(model)(ids).logits.float()
            difference = (before - after).abs().max().item()
            results.append(f"{name} {'equal' if difference == 0 else f'max |Δ| {difference:.3g}'}")
            del model
    dist.destroy_process_group()
    return ", ".join(results)


def vllm(_: Path) -> str:
    done = subprocess.run([sys.executable, "bench/generation_engines.py", "--recipe", "full-ft", "tiny-starcoder",
                           "--problems", "164", "--repeats", "1", f"model.config={BASE_1B}", "model.dtype=bfloat16"],
                          cwd=ROOT, timeout=900, capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"bench/generation_engines.py exit {done.returncode}: {done.stderr[-300:]}")
    rows = [" ".join(line.split()) for line in done.stdout.splitlines()[-2:]]  # transformers, vllm
    return " / ".join(rows)


def planner(_: Path) -> str:
    """`launch plan` for each training part's run on this GPU: its planned allocation against torch's peak."""
    import torch

    from jobs.spec.gpus import gpu_of_device

    gpu = gpu_of_device(torch.cuda.get_device_name(0))
    if gpu is None or not CASES:
        raise Skip("this GPU is not in the catalog (jobs/spec/gpus.py)" if gpu is None else "no training part ran")
    rows = []
    for case in CASES:
        command = [sys.executable, "-m", "launchers.cli.main", "plan", case.method, "tiny-starcoder", *case.overrides,
                   "-N", "1", "--gpus-per-node", "1", "--gpu", gpu.key, "--format", "json"]
        figures = json.loads(subprocess.run(command, cwd=ROOT, check=True, capture_output=True, text=True).stdout)
        planned = figures["per_gpu_gb"]["allocated"]
        measured = case.metrics["peak_memory_gb"] * 1e9 / 2**30
        rows.append(f"{case.name} planned {planned:.1f} vs measured {measured:.1f} GiB ({planned / measured:.2f}×)")
    return "; ".join(rows)


def mfu_table(device: str) -> list[str]:
    """The training parts' measured MFU as the table the planner reads (launchers/planner/estimate.py)."""
    from jobs.spec.gpus import gpu_of_device

    gpu = gpu_of_device(device)
    measured = [case for case in CASES if "train/mfu" in case.metrics and "flash" not in case.name]
    if gpu is None or not measured:
        return []
    rows = ["\n## MFU measured on GPUs (acceptance run, read by `launch plan`)\n",
            "| GPU | method | checkpointing | MFU | run |", "|---|---|---|---|---|"]
    kind = {"full-ft": "full", "lora": "lora", "qlora": "qlora"}
    rows += [f"| {gpu.key} | {kind[case.method]} | gc | {case.metrics['train/mfu']:.3f} | {case.name} |"
             for case in measured]
    return rows


class Skip(Exception):
    """A part that cannot run here, with the reason."""


PARTS: dict[str, Callable[[Path], str]] = {"gpu-tests": gpu_tests, "full-ft": full_ft, "lora-qlora": lora_qlora,
                                           "fsdp-qlora": fsdp_qlora, "vllm": vllm, "planner": planner}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "benchmarks.md", help="where results are appended")
    parser.add_argument("--parts", default=",".join(PARTS), help=f"comma-separated subset of {','.join(PARTS)}")
    args = parser.parse_args()
    results: dict[str, str] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.parts.split(","):
            started = time.monotonic()
            try:
                if not cuda():
                    raise Skip("no CUDA device here")
                results[name] = PARTS[name](Path(tmp) / "runs")
                print(f"[acceptance] {name}: {results[name]} ({time.monotonic() - started:.0f} s)", flush=True)
            except Skip as reason:
                print(f"[acceptance] {name}: skipped: {reason}", flush=True)
            except Exception as err:  # noqa: BLE001 - one part failing must not hide the others' figures
                results[name] = f"FAILED: {type(err).__name__}: {err}"
                print(f"[acceptance] {name}: {results[name]}", flush=True)
    if results:
        import torch

        lines = [f"\n## GPU acceptance run ({time.strftime('%Y-%m-%d')}, {torch.cuda.get_device_name(0)})\n",
                 "`.venv/bin/python bench/gpu/acceptance.py`\n"] + [f"- **{k}**: {v}" for k, v in results.items()]
        lines += mfu_table(torch.cuda.get_device_name(0))
        with args.out.open("a", encoding="utf-8") as handle:
            handle.write("\n".join(lines) + "\n")
        print(f"[acceptance] appended to {args.out}")
    return 1 if any(v.startswith("FAILED") for v in results.values()) else 0


if __name__ == "__main__":
    sys.exit(main())
