"""Recipe checks that read files: the model's config (context length) and local data (rows and columns).

They run at launch, before anything is submitted, so a bad row fails in a second on the login node instead of
after hours in the queue. Nothing here imports torch but `check_lora_targets`: LoRA targets are checked by
`jobs.common.architecture` (it needs transformers, once per config.json) on submission, not on --dry-run.
"""

from __future__ import annotations

import sys
from collections import Counter
from pathlib import Path
from typing import Any

from jobs.common.hf_files import context_length
from jobs.prepare.code_files import code_files, held_out_files
from jobs.spec.errors import UserError
from jobs.spec.schema import DataSpec
from launchers.recipe.data_rows import check_rows
from launchers.recipe.load import Resolved, display_path
from launchers.recipe.user_files import parse_json, read_text

DATA_SUFFIXES = (".jsonl", ".json", ".parquet")


def model_config(resolved: Resolved) -> dict[str, Any] | None:
    """The model's config.json when the recipe names one, else None (a hub model checked on the node)."""
    path_text = resolved.recipe.model.config
    if path_text is None:
        return None
    path = Path(path_text)
    where = resolved.where("model", "config")
    if not path.exists():
        raise UserError(f"{where}: model.config: no such file {display_path(path)}")
    config = parse_json(read_text(path, display_path(path)), display_path(path))
    if not isinstance(config, dict) or "model_type" not in config:
        raise UserError(f"{display_path(path)}: not a transformers config (no model_type)")
    return config


def check_files(resolved: Resolved) -> None:
    """Every file-backed check of a recipe, in the order a user would fix them."""
    recipe = resolved.recipe
    config = model_config(resolved)
    limit = context_length(config) if config else None
    if limit is not None and recipe.data.seq_length > limit:
        raise UserError(
            f"{resolved.where('data', 'seq_length')}: data.seq_length {recipe.data.seq_length} exceeds the "
            f"model's {limit} positions ({recipe.model.name_or_path}): use at most {limit}"
        )
    for key in ("tokenizer", "name_or_path"):
        value = getattr(recipe.model, key)
        if value and Path(value).is_absolute() and not Path(value).exists():
            raise UserError(f"{resolved.where('model', key)}: model.{key}: "
                            f"no such directory {display_path(Path(value))}")
    for key in ("source", "eval_source"):
        value = getattr(recipe.data, key)
        if value and Path(value).is_absolute():
            check_local_data(Path(value), recipe.data, resolved.where("data", key), key)
    source = Path(recipe.data.source)
    if recipe.data.eval_files and source.is_absolute() and source.is_dir():
        check_held_out_files(source, recipe.data, resolved.where("data", "eval_files"))


def check_local_data(path: Path, data: DataSpec, where: str, key: str) -> None:
    shown = display_path(path)
    if not path.exists():
        raise UserError(f"{where}: data.{key}: no such file or directory {shown}")
    if path.is_dir():
        if data.format != "code":
            raise UserError(f"{where}: data.{key}: {shown} is a directory; only format code reads directories "
                            f"(this recipe is {data.format})")
        check_code_directory(path, shown, data.glob, where, key)
        return
    if path.suffix not in DATA_SUFFIXES:
        raise UserError(f"{where}: data.{key}: {shown}: unsupported file type (allowed: {', '.join(DATA_SUFFIXES)})")
    check_rows(path, shown, data)


def check_code_directory(root: Path, shown: str, pattern: str, where: str, key: str) -> None:
    """At least one file under `root` that prepare will read; else one line saying what `pattern` matched."""
    skipped: Counter[str] = Counter()
    for _, reason in code_files(root, pattern):
        if reason is None:
            return
        skipped[reason] += 1
    found = f"skipped: {', '.join(f'{n} {why}' for why, n in skipped.most_common())}" if skipped else "no files"
    raise UserError(f"{where}: data.{key}: nothing to read in {shown} with data.glob {pattern!r} ({found})")


def check_held_out_files(root: Path, data: DataSpec, where: str) -> None:
    """Each data.eval_files pattern names a file prepare reads, and some file is left to train on."""
    readable = {path for path, reason in code_files(root, data.glob) if reason is None}
    held: set[Path] = set()
    for pattern in data.eval_files:
        named = held_out_files(root, [pattern]) & readable
        if not named:
            raise UserError(f"{where}: data.eval_files: {pattern!r} names no file that prepare reads in "
                            f"{display_path(root)} (data.glob {data.glob!r})")
        held |= named
    if not readable - held:
        raise UserError(f"{where}: data.eval_files holds out all {len(readable)} files of {display_path(root)}: "
                        "nothing is left to train on")


def check_lora_targets(resolved: Resolved, cache: Path | None) -> None:
    """Check LoRA targets on the meta device (imports transformers, once per config.json: submission only)."""
    recipe = resolved.recipe
    if recipe.method.lora is None or recipe.model.config is None:
        return
    from jobs.common.architecture import lora_target_report

    try:
        report = lora_target_report(recipe.model.config, recipe.method.lora.target_modules, cache)
    except ImportError as err:  # a login node with the launcher only: the job checks its targets when it loads
        print(f"warning: LoRA targets not checked here ({err.name or 'the training stack'} is not installed); "
              "pip install -e '.[train]' to check them before submitting", file=sys.stderr)
        return
    where = resolved.where("method", "lora", "target_modules")
    if not report.matched:
        raise UserError(f"{where}: method.lora.target_modules: none of {report.unmatched} is a module of "
                        f"{report.architecture} (linear modules: {', '.join(report.linear_names)})")
    for name in report.unmatched:
        print(f"warning: {where}: method.lora.target_modules: {name!r} matches no module of {report.architecture}; "
              f"training {', '.join(report.matched)}", file=sys.stderr)
