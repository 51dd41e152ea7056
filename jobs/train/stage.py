"""The train stage: one process per rank, TRL's SFTTrainer for full, LoRA and QLoRA fine-tunes.

Run through the launcher (`launch lora tiny-starcoder --local`), or directly from Python for a single rank:

    from jobs.spec.context import RankContext
    from jobs.train.stage import train
    train(recipe, plan, RankContext(run_dir=Path("runs/x/y")))

Writes <run>/checkpoints/ while training (resumed from the newest one on restart) and <run>/final/ at the end:
the whole model for full fine-tunes, the adapter for LoRA/QLoRA, with the tokenizer.
"""

from __future__ import annotations

import math
import os
import sys
import time
import warnings
from typing import Any

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("DS_ACCELERATOR", "cpu")  # say it, rather than have DeepSpeed warn that it guessed
# DeepSpeed calls torch's deprecated reduce_scatter_tensor every step: one warning per step drowns the rank logs.
warnings.filterwarnings("ignore", category=FutureWarning, module="torch.distributed")

from transformers import PrinterCallback, TrainerCallback, set_seed
from trl import SFTConfig, SFTTrainer

from jobs.common.device import claim_gpu
from jobs.common.model import base_model_path, load_model, peft_config
from jobs.common.tokenizer import load_tokenizer
from jobs.prepare.stage import ensure_prepared, load_prepared
from jobs.spec.context import DISTRIBUTED_VARIABLES, RankContext
from jobs.spec.plan import Plan
from jobs.spec.rundir import COMPLETE_MARKER, RunDir, write_atomic
from jobs.spec.schema import Recipe
from jobs.track.summary import train_summary
from jobs.track.system import peak_memory_gb
from jobs.track.tracker import Tracker
from jobs.train.checkpoints import (
    CompleteCheckpoints,
    expected_adapter_shapes,
    latest_verified,
    remove_incomplete,
    set_aside,
)
from jobs.train.flops import flops_per_token, mfu, peak_flops
from jobs.train.fsdp_state import save_final_model
from jobs.train.save_policy import RunTrainer, TimedSaves
from jobs.train.step_line import step_line

# accelerate's DistributedType names that each back end may run as
EXPECTED_DISTRIBUTED = {
    "single": {"NO"},
    "ddp": {"NO", "MULTI_GPU", "MULTI_CPU"},
    "deepspeed-zero3": {"DEEPSPEED"},
    "fsdp": {"FSDP"},
}


def sft_config(recipe: Recipe, plan: Plan, run: RunDir) -> SFTConfig:
    t, data = recipe.training, recipe.data
    has_eval = data.eval_fraction > 0 or data.eval_source is not None
    kwargs: dict[str, Any] = {
        "output_dir": str(run.checkpoints),
        # The prepare stage already tokenized, masked (labels), truncated and packed: packed rows are exactly
        # seq_length long and carry seq_lengths, which padding-free batches turn into per-document position ids
        # (no attention across documents); packed_attention row trains the rows as they are (causal over the row).
        "max_length": None if data.packing else data.seq_length,
        "packing": False,
        "padding_free": data.packing and data.packed_attention == "document",
        "learning_rate": t.learning_rate,
        "lr_scheduler_type": t.lr_scheduler,
        "warmup_steps": t.warmup_steps if t.warmup_steps is not None else (t.warmup_ratio or 0.0),
        "max_steps": t.max_steps or -1,
        "num_train_epochs": t.epochs or 1.0,
        "per_device_train_batch_size": t.per_device_batch_size,
        "per_device_eval_batch_size": t.per_device_batch_size,
        "gradient_accumulation_steps": plan.gradient_accumulation_steps,
        "gradient_checkpointing": t.gradient_checkpointing,
        "optim": t.optimizer,
        "weight_decay": t.weight_decay,
        "max_grad_norm": t.max_grad_norm,
        "seed": t.seed,
        "data_seed": t.seed,
        "logging_steps": t.logging_steps,
        "logging_first_step": True,
        "save_steps": t.save_steps,
        "save_total_limit": t.save_total_limit,
        "eval_strategy": "steps" if has_eval else "no",
        "eval_steps": t.eval_steps or t.save_steps,
        "bf16": plan.precision == "bf16",
        "fp16": plan.precision == "fp16",
        "report_to": "none",
        "disable_tqdm": True,
        "dataloader_num_workers": 0,
        "ddp_find_unused_parameters": False,  # every trainable weight (all, or the adapters) gets a gradient
    }
    if not torch.cuda.is_available():
        kwargs["use_cpu"] = True
        if plan.world_size > 1:  # one rank is one process (train() leaves it no torch.distributed world)
            kwargs["ddp_backend"] = "gloo"
    if recipe.distributed.backend == "deepspeed-zero3" and plan.deepspeed is not None:
        kwargs["deepspeed"] = plan.deepspeed
    if recipe.distributed.backend == "fsdp":
        fsdp = plan.accelerate.get("fsdp_config", {})
        kwargs["fsdp"] = "full_shard auto_wrap"
        kwargs["fsdp_config"] = {key.removeprefix("fsdp_"): value for key, value in fsdp.items()}
        kwargs["fsdp_config"]["version"] = plan.fsdp_version  # transformers 5 would take FSDP2 when unsaid
    if t.gradient_checkpointing:
        kwargs["gradient_checkpointing_kwargs"] = {"use_reentrant": False}
    return SFTConfig(**kwargs)


class ProgressCallback(TrainerCallback):
    """Rank 0: one readable line per log event on stdout, and the same numbers to MLflow."""

    def __init__(self, tracker: Tracker, tokens_per_step: int, run: RunDir, world_size: int = 1,
                 flops_per_token: float | None = None, peak_flops: float | None = None) -> None:
        self.tracker = tracker
        self.run = run
        self.tokens_per_step = tokens_per_step
        self.world_size = world_size
        self.flops_per_token = flops_per_token
        self.peak_flops = peak_flops  # per device; None on CPU or an unknown GPU: no MFU
        self.last: tuple[float, int] | None = None
        self.speeds: list[float] = []  # tokens/s of every logged window: the summary's median
        self.latest: dict[str, float] = {}  # the newest value of every metric, for `launch status`

    def on_train_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        self.last = (time.perf_counter(), state.global_step)

    def on_evaluate(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        self._restart_window(state)

    def on_save(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        self._restart_window(state)

    def _restart_window(self, state: Any) -> None:
        """An evaluation or a checkpoint just took its time: the next tokens/s and MFU count training alone."""
        self.last = (time.perf_counter(), state.global_step)

    def on_log(self, args: Any, state: Any, control: Any, logs: dict[str, float] | None = None, **kw: Any) -> None:
        if not state.is_world_process_zero or not logs:
            return
        metrics = {_metric_name(k): v for k, v in logs.items() if isinstance(v, (int, float)) and math.isfinite(v)}
        now = time.perf_counter()
        if self.last is not None and state.global_step > self.last[1] and "train/loss" in metrics:
            seconds = now - self.last[0]
            metrics["train/tokens_per_s"] = (state.global_step - self.last[1]) * self.tokens_per_step / seconds
            metrics["train/tokens_per_s_per_device"] = metrics["train/tokens_per_s"] / self.world_size
            self.speeds.append(metrics["train/tokens_per_s"])
            if self.flops_per_token and self.peak_flops:
                metrics["train/mfu"] = mfu(metrics["train/tokens_per_s_per_device"], self.flops_per_token,
                                           self.peak_flops)
            self.last = (now, state.global_step)
        self.tracker.log_metrics(metrics, state.global_step)
        self.latest.update(metrics)
        self.run.write_json(self.run.last_metrics_file,
                            {"step": state.global_step, "max_steps": state.max_steps, "metrics": self.latest})
        print(step_line(state.global_step, state.max_steps, metrics), flush=True)


def _metric_name(key: str) -> str:
    """Trainer log keys → MLflow names: loss → train/loss, eval_loss → eval/loss, and the end-of-training
    summary (train_loss, train_runtime, ...) → summary/loss, summary/runtime."""
    if key.startswith("eval_"):
        return "eval/" + key.removeprefix("eval_")
    if key.startswith("train_"):
        return "summary/" + key.removeprefix("train_")
    return "train/" + key


def train(recipe: Recipe, plan: Plan, context: RankContext) -> str:
    """Train on this rank; returns the final model/adapter directory."""
    run = RunDir(context.run_dir)
    if (run.final / COMPLETE_MARKER).exists():  # a requeue after training finished: nothing left to do
        if context.is_main:
            print(f"[train] already complete: {run.final}", flush=True)
        return str(run.final)
    if context.world_size != plan.world_size:
        raise RuntimeError(f"world size {context.world_size} but the plan asked for {plan.world_size}: "
                           "the launcher started the wrong number of ranks")
    claim_gpu(context)
    if plan.world_size == 1 and recipe.distributed.backend == "ddp":
        # accelerate wraps the model in DDP whenever LOCAL_RANK is set, even in a world of one (an all-reduce of
        # every gradient with itself): train as the one process it is
        for name in DISTRIBUTED_VARIABLES:
            os.environ.pop(name, None)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    set_seed(recipe.training.seed)
    with Tracker(context, "train", recipe, plan) as tracker:  # ends the MLflow run FINISHED, FAILED or KILLED
        trainer, tokenizer = build_trainer(recipe, plan, context, tracker)
        resume, passed = latest_verified(run.checkpoints)
        if context.is_main:
            removed = remove_incomplete(run.checkpoints)
            if removed:
                print(f"[train] removed incomplete checkpoints left by a crash: {', '.join(removed)}", flush=True)
            for name, problem in passed:
                aside = set_aside(run.checkpoints, name)
                print(f"[train] skipped {name}: {problem}: it no longer holds what was saved (kept as {aside.name})",
                      flush=True)
            if resume is not None:
                print(f"[train] resuming from {resume.name}", flush=True)
        trainer.train(resume_from_checkpoint=str(resume) if resume else None)
        save_final_model(trainer, run.final, context)
        if context.is_main:
            tokenizer.save_pretrained(str(run.final))
            write_atomic(run.final / COMPLETE_MARKER, f"{recipe.name} step {trainer.state.global_step}\n")
            tracker.log_final(run.final, recipe.method.kind)
            progress = next(c for c in trainer.callback_handler.callbacks if isinstance(c, ProgressCallback))
            tracker.log_summary(train_summary(trainer.state.log_history, progress.speeds, plan.world_size,
                                              on_gpu=torch.cuda.is_available(),
                                              peak_memory_gb=peak_memory_gb()))
            print(f"[train] done: {run.final}", flush=True)
    return str(run.final)


def build_trainer(recipe: Recipe, plan: Plan, context: RankContext, tracker: Tracker) -> tuple[SFTTrainer, Any]:
    """The prepared data, the model (and adapter config), and an SFTTrainer with our callbacks, checked to run
    the distributed back end the recipe asked for."""
    run = RunDir(context.run_dir)
    prepared = ensure_prepared(recipe, context)
    tracker.set_data(prepared.name)
    datasets = load_prepared(prepared)
    tokenizer = load_tokenizer(recipe)
    args, model = load_for_training(recipe, plan, context, tokenizer)
    trainer = RunTrainer(
        model=model,
        args=args,
        train_dataset=datasets["train"],
        eval_dataset=datasets.get("eval"),
        processing_class=tokenizer,
        peft_config=peft_config(recipe),
        callbacks=[ProgressCallback(tracker, plan.tokens_per_step, run, plan.world_size,
                                    *model_flops(model, recipe.data.seq_length, context))],
    )
    trainer.remove_callback(PrinterCallback)  # ProgressCallback prints one readable line instead
    expected = expected_adapter_shapes(trainer.model) if recipe.method.lora else None
    trainer.add_callback(CompleteCheckpoints(expected))
    if recipe.training.save_every_minutes is not None:
        trainer.add_callback(TimedSaves(recipe.training.save_every_minutes))
    _check_distributed(trainer, recipe, plan)
    if context.is_main:
        version = f" (FSDP{plan.fsdp_version})" if plan.fsdp_version else ""
        print(f"[train] {recipe.name}: {plan.world_size} rank(s), {trainer.accelerator.distributed_type.name}{version}, "
              f"{len(datasets['train'])} train sequences, GA {plan.gradient_accumulation_steps}", flush=True)
    return trainer, tokenizer


def load_for_training(recipe: Recipe, plan: Plan, context: RankContext, tokenizer: Any) -> tuple[SFTConfig, Any]:
    """The trainer's arguments, then the model. In this order: the arguments register the DeepSpeed config, and
    only then does `from_pretrained` build the model under ZeRO-3's zero.Init — each rank holds and reads its own
    partition of the weights instead of a whole copy (16 ranks × 31 GB of StarCoder-15B in a node's CPU memory).
    The random-init base (rank 0, `base_model_path`) is written before, as a whole model."""
    path = base_model_path(recipe, context, tokenizer)
    args = sft_config(recipe, plan, RunDir(context.run_dir))
    if args.deepspeed:
        import deepspeed

        # zero.Init sizes its config by deepspeed.comm's world, which accelerate has started only on GPUs (on CPU it
        # starts torch.distributed alone): join it to the world the arguments started, a no-op where it is.
        deepspeed.init_distributed()
    return args, load_model(recipe, path, context)


def model_flops(model: Any, seq_length: int, context: RankContext) -> tuple[float | None, float | None]:
    """(training FLOPs per token, this device's bf16 peak) for MFU; rank 0 only, (None, None) elsewhere."""
    if not context.is_main:
        return None, None
    device = torch.cuda.get_device_name(context.local_rank) if torch.cuda.is_available() else None
    return flops_per_token(model, seq_length), peak_flops(device)


def _check_distributed(trainer: SFTTrainer, recipe: Recipe, plan: Plan) -> None:
    """Fail loudly when what runs is not what the recipe asked for (e.g. FSDP silently running as DDP)."""
    accelerator = trainer.accelerator
    if accelerator.num_processes != plan.world_size:
        raise RuntimeError(f"accelerate runs {accelerator.num_processes} process(es), the plan asked for "
                           f"{plan.world_size}")
    ran = accelerator.distributed_type.name
    if ran not in EXPECTED_DISTRIBUTED[recipe.distributed.backend]:
        raise RuntimeError(f"distributed.backend {recipe.distributed.backend} asked for, but accelerate runs {ran}")
    if plan.fsdp_version is not None:
        version = getattr(accelerator.state.fsdp_plugin, "fsdp_version", None)
        if version != plan.fsdp_version:
            raise RuntimeError(f"distributed.fsdp_version {plan.fsdp_version} asked for, but the Trainer's FSDP plugin "
                               f"runs version {version}")


if __name__ == "__main__":
    sys.exit("run the train stage through `launch` (see the module docstring)")
