"""The export stage: one servable, shareable model out of any run, full fine-tune or LoRA/QLoRA adapter.

    launch export RUN [--checkpoint N] [--weight 0.8] [--dtype bfloat16] [--adapter-only] [--base OTHER]
    launch export RUN --adapters copilot=0.5,assistant=0.5 --combine cat     # mix runs' adapters (jobs.export.mix)
    launch export RUN --format gguf --quant q4_0                             # + GGUF for llama.cpp
    (the export stage runs the same after train)

Every export is a new version under <run>/export/: v1, v2, ... Nothing earlier is overwritten, and a merge always
starts from the base and the adapter (never from an earlier merge), so nothing is merged twice:

    export/vN/model/        an HF model directory: the base's safetensors shards (+ index) with the adapter merged
                            in, config, generation config, tokenizer, README.md (the model card)
    export/vN/adapter/      LoRA/QLoRA: the adapter alone in PEFT format (scaled by export.adapter_weight), with a card
    export/vN/gguf/         with export.gguf (--format gguf --quant q8_0): the model for llama.cpp (jobs.export.gguf)
    export/vN/export.json   what was exported from where, and each directory's bytes and sha256

LoRA/QLoRA adapters are merged by `jobs.export.merge` (streaming, shard by shard) into the 16-bit base, never the 4-bit
one: <run>/base for random-init recipes, the local directory or hub snapshot of model.name_or_path otherwise, or
(export.base, --base) another base of the same architecture and tensor shapes — checked tensor by tensor first. A
full fine-tune's model is copied the same streaming way (cast when export.dtype is set), or consolidated from
DeepSpeed's ZeRO-3 shards when it was saved without the 16-bit gather (jobs.export.consolidate). An FSDP checkpoint
(per-rank shards) is first made whole (jobs.train.fsdp_state), then exported like any other. A version is assembled in
a hidden directory and renamed into place when whole: a killed export leaves no vN (its leftovers are removed by
the next export on the same host). The result is recorded on the run's MLflow parent run (path, bytes, sha256).

This module imports no torch at import time: the launcher checks an export's source with `RunDir.export_source` before
submitting anything.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from jobs.common.hub import model_directory
from jobs.common.run_models import base_weights
from jobs.spec.context import RankContext
from jobs.spec.errors import UserError
from jobs.spec.plan import Plan
from jobs.spec.rundir import COMPLETE_MARKER, EXPORT_RECORD, RunDir, pid_alive, write_atomic
from jobs.spec.schema import Recipe

ADAPTER_FILES = ("adapter_config.json", "adapter_model.safetensors", "tokenizer.json", "tokenizer_config.json",
                 "special_tokens_map.json", "chat_template.jinja", "vocab.json", "merges.txt", "tokenizer.model")
CONSOLIDATED = ".consolidated"  # inside a version being written: an FSDP checkpoint made whole, removed at the end
_PARTIAL = re.compile(r"^\.v\d+\.partial-(?P<host>.+)-(?P<pid>\d+)$")


@dataclass(frozen=True)
class Export:
    version: int
    path: Path
    record: dict[str, Any]


def export(recipe: Recipe, plan: Plan, context: RankContext) -> str:
    """The stage: export on rank 0 (the stage runs one task) and record it in MLflow."""
    from jobs.track.tracker import Tracker

    run = RunDir(context.run_dir)
    with Tracker(context, "export", recipe, plan) as tracker:
        done = export_run(run, recipe)
        tracker.log_export(done.path, done.record)
    return str(done.path)


def export_run(run: RunDir, recipe: Recipe) -> Export:
    """Write the next export version of `run` as `recipe.export` says; returns it once it is in place."""
    spec = recipe.export
    source = run.export_source(spec.checkpoint)
    root = run.exports
    root.mkdir(exist_ok=True)
    _remove_own_leftovers(root)
    version = run.next_version()
    staging = root / f".v{version}.partial-{socket.gethostname()}-{os.getpid()}"
    started = time.monotonic()
    staging.mkdir()
    try:
        directories = _write_version(run, recipe, source, staging)
        record = {
            "version": version, "source": str(source.relative_to(run.path)), "checkpoint": spec.checkpoint,
            "method": recipe.method.kind, "adapter_weight": spec.adapter_weight, "dtype": spec.dtype, "base": spec.base,
            "adapters": spec.adapters, "combine": spec.combine if spec.adapters else None,
            "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "seconds": round(time.monotonic() - started, 2),
            **directories,
        }
        write_atomic(staging / EXPORT_RECORD, json.dumps(record, indent=2) + "\n")
        while True:  # another export of this run may have taken the number meanwhile: take the next one
            target = root / f"v{version}"
            try:
                os.rename(staging, target)
                break
            except OSError:
                if not target.exists():
                    raise
                version = run.next_version()
                record["version"] = version
                write_atomic(staging / EXPORT_RECORD, json.dumps(record, indent=2) + "\n")
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    for name, entry in directories.items():
        print(f"[export] v{version} {name}: {target / name} ({entry['bytes'] / 1e6:.1f} MB, sha256 "
              f"{entry['sha256'][:12]}…)", flush=True)
    return Export(version, target, record)


def _remove_own_leftovers(root: Path) -> None:
    """Partial versions an export killed on this host left (its process is gone); other hosts' are theirs."""
    host = socket.gethostname()
    for path in root.iterdir():
        match = _PARTIAL.match(path.name)
        if match and match["host"] == host and not pid_alive(int(match["pid"])):
            shutil.rmtree(path, ignore_errors=True)
            print(f"[export] removed {path.name}, left by an export that did not finish", flush=True)


def _write_version(run: RunDir, recipe: Recipe, source: Path, staging: Path) -> dict[str, dict[str, Any]]:
    from jobs.export.merge import merge_adapter
    from jobs.export.model_card import model_card
    from jobs.track.provenance import model_manifest
    from jobs.train.fsdp_state import consolidate_checkpoint, sharded_model

    spec = recipe.export
    launch = run.read_json(run.launch_file).get("argv", [])
    metrics = run.read_json(run.last_metrics_file)
    card: dict[str, Any] = {
        "source": str(source.relative_to(run.path)), "launch_argv": launch, "metrics": metrics.get("metrics", {}),
        "step": metrics.get("step"), "export_command": export_command(run, recipe),
        "adapter_weight": spec.adapter_weight,
    }
    if sharded_model(source) is not None:  # an FSDP checkpoint: per-rank shards, configs and tokenizer
        print(f"[export] consolidating the FSDP shards of {source}", flush=True)
        consolidate_checkpoint(source, staging / CONSOLIDATED)
        source = staging / CONSOLIDATED
    written: list[str] = []
    if recipe.method.lora is not None:
        adapter = staging / "adapter"
        if spec.adapters:
            from jobs.export.mix import mix_adapters

            mixed = [(mixed_source(run, name), weight) for name, weight in spec.adapters.items()]
            print(f"[export] mixing {len(mixed)} adapter(s) ({spec.combine}): "
                  f"{', '.join(f'{name}={weight:g}' for name, weight in spec.adapters.items())}", flush=True)
            mix_adapters(mixed, spec.combine, adapter, spec.density)
            source = adapter
        else:
            _copy_adapter(source, adapter, spec.adapter_weight)
        (adapter / "README.md").write_text(model_card(recipe, kind="adapter", **card), encoding="utf-8")
        written.append("adapter")
        if spec.merge:
            base = base_weights(run, recipe)
            if spec.base is not None:
                from jobs.common.hf_files import check_transfer

                target = model_directory(spec.base, None)
                check_transfer(base, target)
                print(f"[export] transfer: {spec.base} has the architecture and shapes of {base}", flush=True)
                base = target
            weight = 1.0 if spec.adapters else spec.adapter_weight  # a mix carries its weights in its factors
            # the dtype the run trained in, unless asked: a base stored in fp32 (StarCoder's hub weights) would
            # otherwise give a merged model twice the size (64 GB at 15B) of the one that was trained
            dtype = spec.dtype or recipe.model.dtype
            print(f"[export] merging {source.name} (weight {weight:g}) into {base} as {dtype}", flush=True)
            report = merge_adapter(base, source, staging / "model", weight=weight, dtype=dtype)
            print(f"[export] merged {report.modules_merged} LoRA modules in {report.elapsed_s:.1f} s", flush=True)
            written.append("model")
    else:
        from jobs.export.consolidate import consolidate_zero3, is_zero_checkpoint

        if is_zero_checkpoint(source):  # saved without the 16-bit gather: DeepSpeed's per-rank shards only
            print(f"[export] consolidating the ZeRO-3 shards of {source}", flush=True)
            consolidate_zero3(source, staging / "model", dtype=spec.dtype)
        else:
            print(f"[export] copying {source}{f' as {spec.dtype}' if spec.dtype else ''}", flush=True)
            merge_adapter(source, None, staging / "model", dtype=spec.dtype)
        written.append("model")
    if "model" in written:
        _for_generation(staging / "model" / "config.json")
        (staging / "model" / "README.md").write_text(model_card(recipe, kind="merged model" if recipe.method.lora
                                                                 else "model", **card), encoding="utf-8")
    if spec.gguf is not None:
        from jobs.export.gguf import write_gguf

        path = write_gguf(staging / "model", staging / "gguf" / f"{recipe.model_name}-{spec.gguf}.gguf", spec.gguf)
        print(f"[export] GGUF ({spec.gguf}) for llama.cpp: {path.name}", flush=True)
        written.append("gguf")
    shutil.rmtree(staging / CONSOLIDATED, ignore_errors=True)
    out: dict[str, dict[str, Any]] = {}
    for name in written:
        manifest = model_manifest(staging / name)
        out[name] = {"bytes": manifest["bytes"], "sha256": manifest["sha256"]}
    return out


def export_command(run: RunDir, recipe: Recipe) -> str:
    """The `launch export` command line that writes an export like this one."""
    spec, words = recipe.export, ["launch", "export", f"{run.experiment}/{run.name}"]
    if spec.checkpoint is not None:
        words += ["--checkpoint", str(spec.checkpoint)]
    if spec.adapter_weight != 1.0:
        words += ["--weight", f"{spec.adapter_weight:g}"]
    if spec.dtype is not None:
        words += ["--dtype", spec.dtype]
    if not spec.merge and recipe.method.lora is not None:
        words.append("--adapter-only")
    if spec.base is not None:
        words += ["--base", spec.base]
    if spec.gguf is not None:
        words += ["--format", "gguf", "--quant", spec.gguf]
    if spec.adapters:
        words += ["--adapters", ",".join(f"{name}={weight:g}" for name, weight in spec.adapters.items()),
                  "--combine", spec.combine] + (["--density", f"{spec.density:g}"] if spec.density else [])
    return " ".join(words)


def mixed_source(run: RunDir, reference: str) -> Path:
    """The final adapter of the run `reference` (experiment/name, or a name in this run's experiment) names."""
    experiment, _, name = reference.rpartition("/")
    final = RunDir(run.root / (experiment or run.experiment) / name).final
    if not (final / COMPLETE_MARKER).exists():
        raise UserError(f"export.adapters: run {reference} has no complete final adapter ({final})")
    return final


def _for_generation(config_path: Path) -> None:
    """use_cache true: the Trainer saves the training value (false) in config.json, and a generate() without a
    generation_config.json would recompute every earlier token at every step."""
    config = json.loads(config_path.read_text(encoding="utf-8"))
    if config.get("use_cache") is False:
        write_atomic(config_path, json.dumps({**config, "use_cache": True}, indent=2, sort_keys=True) + "\n")


def _copy_adapter(source: Path, target: Path, weight: float) -> None:
    """The adapter files of a final/ or checkpoint directory (not its optimizer state); lora_B scaled by `weight`."""
    target.mkdir()
    for name in ADAPTER_FILES:
        if (source / name).is_file():
            shutil.copyfile(source / name, target / name)
    if weight == 1.0:
        return
    from safetensors.torch import load_file, save_file

    weights = target / "adapter_model.safetensors"
    tensors = load_file(str(weights))
    whole = [key for key in tensors if "lora_" not in key]
    if whole:
        raise UserError(f"export.adapter_weight {weight:g}: the adapter also saves whole tensors ({whole[0]}), which "
                        "a weight cannot scale in PEFT format; export with weight 1 or the merged model only")
    scaled = {key: t * weight if ".lora_B" in key or "lora_embedding_B" in key else t for key, t in tensors.items()}
    save_file(scaled, str(weights), metadata={"format": "pt"})
    os.chmod(weights, (target / "adapter_config.json").stat().st_mode & 0o777)  # as shareable as the other files
