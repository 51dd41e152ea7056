"""Training throughput of our train job vs bare TRL SFTTrainer, same tiny model, data, hyperparameters and work.

    .venv/bin/python bench/train_throughput.py                 # 5 pairs, 60 steps, 1 thread
    .venv/bin/python bench/train_throughput.py --pairs 3 --steps 40 --threads 2

Ours: `launch lora tiny-starcoder --debug --stages prepare,train` run in the measuring process (one rank: prepared
cache, progress and MLflow callbacks, verified checkpoints). Bare: SFTTrainer built directly on the same random-init
model (ours' base/ directory), tokenizer and prompt/completion data, with the same SFTConfig numbers and no
callbacks of ours. The figure compared is the Trainer's own train_runtime (the training loop, not imports, data
preparation or model loading), as steps/s; beside it, the CPU seconds of the same span (process time, all
threads), which a neighbour's load disturbs less than wall time.

How it is kept honest:
- every measurement is a fresh process with its threads pinned (OMP/MKL/RAYON_NUM_THREADS in its environment,
  torch.set_num_threads inside), so a busy neighbour on a shared machine cannot hand one loop more cores;
- a warm-up pair (not counted) writes the base model and warms the caches; then `--pairs` pairs, the order switched
  every round (ours first, bare first, ...), the ratio taken within each pair; the median ratio and its min–max;
- the work is counted at TRL's collator in both loops (rows, real tokens, padded tokens, loss tokens, i.e. labels
  that are not -100), and the settings that decide the work per token are read off each Trainer (optimizer,
  precision, gradient checkpointing, schedule, batch, attention, dtype, trainable parameters); both are printed,
  and if any run's differ from the others' no ratio is printed (exit 1). (SFTConfig's defaults are not the
  recipe's: bf16 autocast, gradient checkpointing and fused AdamW; the bare loop sets the recipe's values.)
- the 1-minute load average is printed beside each run.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from pairs import alternate, load, pinned_env, spread

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT / "recipes" / "assets" / "data" / "prompt_completion.jsonl"
COUNTED = ("rows", "real_tokens", "padded_tokens", "loss_tokens")


def count_collated() -> dict[str, int]:
    """Wrap TRL's language-modeling collator (both loops use it) so that every batch it builds is counted."""
    from trl.trainer import sft_trainer

    counts = dict.fromkeys(COUNTED, 0)
    collate = sft_trainer.DataCollatorForLanguageModeling.torch_call

    def counted(self: object, examples: list[dict]) -> dict:
        batch = collate(self, examples)
        counts["rows"] += len(examples)
        counts["real_tokens"] += sum(len(example["input_ids"]) for example in examples)
        counts["padded_tokens"] += batch["input_ids"].numel()
        counts["loss_tokens"] += int((batch["labels"] != -100).sum())
        return batch

    sft_trainer.DataCollatorForLanguageModeling.torch_call = counted
    return counts


def watch_training_loop() -> dict[str, object]:
    """Record the settings that decide the training loop's work (optimizer, precision, gradient checkpointing,
    schedule, batch, attention), compared across loops, and the CPU seconds (all of the process's threads; less
    sensitive than wall time to a neighbour's load) over the span train_runtime times: from the callbacks'
    on_train_begin to the final metrics, so not the setup before it (accelerate's gc.collect, which costs more in
    the process that has run the launcher and the prepare stage)."""
    from transformers import Trainer
    from transformers.trainer_callback import CallbackHandler

    seen: dict[str, object] = {"cpu_s": 0.0}
    loop, begin, finalize = Trainer._inner_training_loop, CallbackHandler.on_train_begin, Trainer._finalize_training

    def watched(trainer: Trainer, *args: object, **kwargs: object) -> object:
        a = trainer.args
        seen["settings"] = {
            "optim": str(a.optim), "bf16": a.bf16, "fp16": a.fp16, "gradient_checkpointing": a.gradient_checkpointing,
            "learning_rate": a.learning_rate, "lr_scheduler": str(a.lr_scheduler_type), "warmup": a.warmup_steps,
            "max_steps": a.max_steps, "batch": a.per_device_train_batch_size, "ga": a.gradient_accumulation_steps,
            "max_grad_norm": a.max_grad_norm, "weight_decay": a.weight_decay, "seed": a.seed,
            "logging_steps": a.logging_steps, "logging_first_step": a.logging_first_step,
            "attention": trainer.model.config._attn_implementation,
            "dtype": str(next(trainer.model.parameters()).dtype),
            "trainable": sum(p.numel() for p in trainer.model.parameters() if p.requires_grad),
        }
        return loop(trainer, *args, **kwargs)

    def began(handler: CallbackHandler, *args: object) -> object:
        seen["started"] = time.process_time()
        return begin(handler, *args)

    def finalized(trainer: Trainer, *args: object) -> object:
        seen["cpu_s"] = time.process_time() - seen.pop("started")
        return finalize(trainer, *args)

    Trainer._inner_training_loop, CallbackHandler.on_train_begin, Trainer._finalize_training = watched, began, finalized
    return seen


def run_ours(workdir: Path, steps: int, name: str) -> dict[str, float]:
    from launchers.cli.main import main

    os.chdir(workdir)
    code = main(["lora", "tiny-starcoder", "--debug", "--stages", "prepare,train", "--name", name,
                 f"training.max_steps={steps}", "training.save_steps=100000", "training.eval_steps=100000",
                 "data.eval_fraction=0", "training.logging_steps=10", f"data.source={DATA}",
                 "data.format=prompt_completion", "data.packing=false"])
    if code:
        raise SystemExit(f"launch exited {code}")
    metrics = json.loads((workdir / "runs" / "tiny-starcoder" / name / "last_metrics.json").read_text())
    return {"runtime": metrics["metrics"]["summary/runtime"], "steps": metrics["step"]}


def run_bare(workdir: Path, steps: int, name: str) -> dict[str, float]:
    from datasets import load_dataset
    from peft import LoraConfig
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import SFTConfig, SFTTrainer

    base = workdir / "runs" / "tiny-starcoder" / "warmup" / "base"  # ours' random-init weights
    tokenizer = AutoTokenizer.from_pretrained(base)
    model = AutoModelForCausalLM.from_pretrained(base)
    data = load_dataset("json", data_files=str(DATA), split="train")
    # SFTConfig's own defaults differ from the recipe's (bf16 autocast, gradient checkpointing, fused AdamW): the
    # recipe's values are set, and the parent checks that both loops ran with the same settings
    config = SFTConfig(output_dir=str(workdir / name), max_length=256, learning_rate=3e-3, lr_scheduler_type="cosine",
                       warmup_steps=3, max_steps=steps, per_device_train_batch_size=4, logging_steps=10,
                       logging_first_step=True, bf16=False, gradient_checkpointing=False, optim="adamw_torch",
                       save_strategy="no", report_to="none", disable_tqdm=True, use_cpu=True, seed=42, data_seed=42)
    peft = LoraConfig(r=8, lora_alpha=16, target_modules=["c_attn", "c_proj", "c_fc"], task_type="CAUSAL_LM")
    trainer = SFTTrainer(model=model, args=config, train_dataset=data, processing_class=tokenizer, peft_config=peft)
    result = trainer.train()
    return {"runtime": result.metrics["train_runtime"], "steps": trainer.state.global_step}


def worker(args: argparse.Namespace) -> None:
    import torch

    torch.set_num_threads(args.threads)
    counts, cpu = count_collated(), watch_training_loop()
    run = run_ours if args.worker == "ours" else run_bare
    result = run(args.workdir, args.steps, args.name)
    print(json.dumps({**result, **counts, **cpu, "torch_threads": torch.get_num_threads()}), flush=True)


def measure(loop: str, args: argparse.Namespace, workdir: Path, name: str) -> dict[str, float]:
    env = pinned_env(args.threads, HF_HUB_OFFLINE="1", MLFLOW_DISABLE_TELEMETRY="true",
                     PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])))
    before = load()
    done = subprocess.run([sys.executable, __file__, "--worker", loop, "--workdir", str(workdir), "--name", name,
                           "--steps", str(args.steps), "--threads", str(args.threads)], cwd=workdir, env=env,
                          capture_output=True, text=True, timeout=1800)
    if done.returncode:
        raise SystemExit(f"{loop} {name} failed ({done.returncode}):\n{done.stderr[-3000:]}")
    result = json.loads(done.stdout.strip().splitlines()[-1])
    result["load"] = before
    print(f"  {name:8} {result['steps'] / result['runtime']:6.2f} steps/s  runtime {result['runtime']:6.2f} s  "
          f"cpu {result['cpu_s']:6.2f} s  "
          f"threads {result['torch_threads']}  load {before:.2f}  " + " ".join(f"{k}={result[k]}" for k in COUNTED),
          flush=True)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--pairs", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1, help="torch/OMP/MKL/tokenizer threads of every run")
    parser.add_argument("--worker", choices=["ours", "bare"], help=argparse.SUPPRESS)
    parser.add_argument("--workdir", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--name", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        worker(args)
        return
    print(f"tiny-starcoder LoRA, {args.steps} steps × batch 4 × seq ≤256, CPU, {args.threads} thread(s), "
          f"{args.pairs} alternating pairs after a warm-up pair", flush=True)
    with tempfile.TemporaryDirectory(prefix="train-bench-") as tmp:
        workdir = Path(tmp)
        measure("ours", args, workdir, "warmup")  # writes base/, which the bare loop loads
        measure("bare", args, workdir, "warmup-b")
        runs: dict[str, list[dict[str, float]]] = {"ours": [], "bare": []}
        for index, loop in alternate(args.pairs, "ours", "bare"):
            runs[loop].append(measure(loop, args, workdir, f"{loop}{index}"))
    counts = {tuple(r[k] for k in COUNTED) for rs in runs.values() for r in rs}
    settings = {json.dumps(r["settings"], sort_keys=True) for rs in runs.values() for r in rs}
    if len(counts) != 1 or len(settings) != 1:
        print(f"the loops did not do the same work ({', '.join(COUNTED)}: {sorted(counts)}; settings: "
              f"{sorted(settings)}): no ratio")
        sys.exit(1)
    rates = {loop: [r["steps"] / r["runtime"] for r in rs] for loop, rs in runs.items()}
    ratios = [o / b for o, b in zip(rates["ours"], rates["bare"], strict=True)]
    loads = [r["load"] for rs in runs.values() for r in rs]
    print(f"\nsettings (both loops): {settings.pop()}")
    print("work per run (both loops): " + ", ".join(f"{k} {v}" for k, v in zip(COUNTED, counts.pop(), strict=True)))
    print(f"steps/s, median (min–max) of {args.pairs}: bare {spread(rates['bare'])}, ours {spread(rates['ours'])}")
    cpu = [b["cpu_s"] / o["cpu_s"] for o, b in zip(runs["ours"], runs["bare"], strict=True)]
    print(f"ours / bare, per pair: {', '.join(f'{r:.2f}' for r in ratios)}")
    print(f"ours / bare: {spread(ratios)}x  (1-min load {min(loads):.2f}–{max(loads):.2f})")
    print(f"by CPU seconds of the training loop (bare's / ours): {spread(cpu)}x; per pair "
          f"{', '.join(f'{r:.2f}' for r in cpu)}")


if __name__ == "__main__":
    main()
