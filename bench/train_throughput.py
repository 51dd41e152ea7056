"""Training throughput of our train job vs bare TRL SFTTrainer, same tiny model, data and hyperparameters.

    .venv/bin/python bench/train_throughput.py               # median of 3 pairs, 60 steps each
    .venv/bin/python bench/train_throughput.py --steps 40 --repeats 1

Ours: `launch lora tiny-starcoder --debug --stages prepare,train` (in-process, one rank: prepared cache, progress
and MLflow callbacks, verified checkpoints). Bare: a plain script building the same random-init model (the run's
base/ directory), tokenizer and prompt/completion data, calling SFTTrainer with the same SFTConfig numbers and no
callbacks of ours. Each run is a fresh process; pairs alternate so load drifts hit both. The figure compared is the
Trainer's own train_runtime (the training loop, not imports or model loading): steps/s and tokens/s.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT / "recipes" / "assets" / "data" / "prompt_completion.jsonl"
TOKENIZER = ROOT / "recipes" / "assets" / "tokenizer"

BARE = """
import json, sys
from datasets import load_dataset
from peft import LoraConfig
from transformers import AutoModelForCausalLM, AutoTokenizer
from trl import SFTConfig, SFTTrainer
base, steps, out = sys.argv[1], int(sys.argv[2]), sys.argv[3]
tokenizer = AutoTokenizer.from_pretrained(base)
model = AutoModelForCausalLM.from_pretrained(base)
data = load_dataset("json", data_files=sys.argv[4], split="train")
config = SFTConfig(output_dir=out, max_length=256, learning_rate=3e-3, lr_scheduler_type="cosine", warmup_steps=3,
                   max_steps=steps, per_device_train_batch_size=4, logging_steps=10, save_strategy="no",
                   report_to="none", disable_tqdm=True, use_cpu=True, seed=42, data_seed=42)
peft = LoraConfig(r=8, lora_alpha=16, target_modules=["c_attn", "c_proj", "c_fc"], task_type="CAUSAL_LM")
trainer = SFTTrainer(model=model, args=config, train_dataset=data, processing_class=tokenizer, peft_config=peft)
result = trainer.train()
print(json.dumps({"runtime": result.metrics["train_runtime"], "steps": trainer.state.global_step}))
"""


def env() -> dict[str, str]:
    return {**os.environ, "HF_HUB_OFFLINE": "1", "MLFLOW_DISABLE_TELEMETRY": "true", "TOKENIZERS_PARALLELISM": "false"}


def run_ours(workdir: Path, steps: int, index: int) -> dict[str, float]:
    name = f"ours{index}"
    subprocess.run([sys.executable, "-m", "launchers.cli.main", "lora", "tiny-starcoder", "--debug", "--stages",
                    "prepare,train", "--name", name, f"training.max_steps={steps}", "training.save_steps=100000",
                    "training.eval_steps=100000", "data.eval_fraction=0", "training.logging_steps=10",
                    f"data.source={DATA}", "data.format=prompt_completion", "data.packing=false"],
                   cwd=workdir, env=env(), capture_output=True, text=True, check=True, timeout=1800)
    metrics = json.loads((workdir / "runs" / "tiny-starcoder" / name / "last_metrics.json").read_text())
    return {"runtime": metrics["metrics"]["summary/runtime"], "steps": metrics["step"]}


def run_bare(workdir: Path, base: Path, steps: int, index: int) -> dict[str, float]:
    out = subprocess.run([sys.executable, "-c", BARE, str(base), str(steps), str(workdir / f"bare{index}"),
                          str(DATA)], cwd=workdir, env=env(), capture_output=True, text=True, check=True,
                         timeout=1800)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        ours, bare = [], []
        for index in range(args.repeats):
            ours.append(run_ours(workdir, args.steps, index))
            base = workdir / "runs" / "tiny-starcoder" / "ours0" / "base"  # the same random-init weights
            bare.append(run_bare(workdir, base, args.steps, index))
        rate_ours = statistics.median(r["steps"] / r["runtime"] for r in ours)
        rate_bare = statistics.median(r["steps"] / r["runtime"] for r in bare)
        print(f"tiny-starcoder LoRA, {args.steps} steps × batch 4 × seq ≤256, CPU, median of {args.repeats}")
        print(f"{'run':6} {'steps/s':>8} {'runtimes (s)':>24}")
        for label, rate, runs in (("bare", rate_bare, bare), ("ours", rate_ours, ours)):
            runtimes = ", ".join(f"{r['runtime']:.2f}" for r in runs)
            print(f"{label:6} {rate:>8.2f} {runtimes:>24}")
        print(f"ours / bare: {rate_ours / rate_bare:.2f}x")


if __name__ == "__main__":
    main()
