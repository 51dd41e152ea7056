"""Recipe checks that read files: the model's config (context length) and local data (rows and columns).

They run at launch, before anything is submitted, so a bad row fails in a second on the login node instead of
after hours in the queue. Nothing here imports torch; LoRA targets are checked by `jobs.common.architecture` (it needs
transformers) on submission, not on --dry-run.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from jobs.spec.errors import UserError
from jobs.spec.schema import FORMAT_FIELDS, DataSpec
from launchers.recipe.load import Resolved, display_path

# Config keys that hold a model's maximum sequence length, by architecture family.
CONTEXT_KEYS = ("max_position_embeddings", "n_positions", "n_ctx", "seq_length")
DATA_SUFFIXES = (".jsonl", ".json", ".parquet")
OPTIONAL_COLUMNS = {"input"}  # alpaca rows may omit "input"


def model_config(resolved: Resolved) -> dict[str, Any] | None:
    """The model's config.json when the recipe names one, else None (a hub model checked on the node)."""
    path_text = resolved.recipe.model.config
    if path_text is None:
        return None
    path = Path(path_text)
    where = resolved.where("model", "config")
    if not path.is_file():
        raise UserError(f"{where}: model.config: no such file {display_path(path)}")
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise UserError(f"{display_path(path)}:{err.lineno}: invalid JSON: {err.msg}") from None
    if not isinstance(config, dict) or "model_type" not in config:
        raise UserError(f"{display_path(path)}: not a transformers config (no model_type)")
    return config


def context_length(config: dict[str, Any]) -> int | None:
    return next((int(config[key]) for key in CONTEXT_KEYS if key in config), None)


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
            raise UserError(f"{resolved.where('model', key)}: model.{key}: no such directory {display_path(Path(value))}")
    for key in ("source", "eval_source"):
        value = getattr(recipe.data, key)
        if value and Path(value).is_absolute():
            check_local_data(Path(value), recipe.data, resolved.where("data", key), key)


def check_local_data(path: Path, data: DataSpec, where: str, key: str) -> None:
    shown = display_path(path)
    if not path.exists():
        raise UserError(f"{where}: data.{key}: no such file or directory {shown}")
    if path.is_dir():
        if data.format != "code":
            raise UserError(f"{where}: data.{key}: {shown} is a directory; only format code reads directories "
                            f"(this recipe is {data.format})")
        if not any(p.is_file() for p in path.rglob("*")):
            raise UserError(f"{where}: data.{key}: directory {shown} holds no files")
        return
    if path.suffix not in DATA_SUFFIXES:
        raise UserError(f"{where}: data.{key}: {shown}: unsupported file type (allowed: {', '.join(DATA_SUFFIXES)})")
    if path.suffix == ".jsonl":
        check_jsonl(path, data)


def check_jsonl(path: Path, data: DataSpec) -> int:
    """Every row parses and has the format's columns; returns the row count. Errors name file:line."""
    shown = display_path(path)
    required = [data.column(name) for name in FORMAT_FIELDS[data.format] if name not in OPTIONAL_COLUMNS]
    rows = 0
    with path.open("rb") as handle:
        for number, raw in enumerate(handle, start=1):
            if not raw.strip():
                continue
            try:
                row = json.loads(raw)
            except UnicodeDecodeError:
                raise UserError(f"{shown}:{number}: not UTF-8 text") from None
            except json.JSONDecodeError as err:
                raise UserError(f"{shown}:{number}: invalid JSON: {err.msg} (column {err.colno})") from None
            if not isinstance(row, dict):
                raise UserError(f"{shown}:{number}: expected a JSON object per line, got {type(row).__name__}")
            missing = [column for column in required if column not in row]
            if missing:
                raise UserError(
                    f"{shown}:{number}: missing column {missing[0]!r} for format {data.format} "
                    f"(columns here: {', '.join(sorted(row)) or 'none'}; rename with data.fields)"
                )
            rows += 1
    if rows == 0:
        raise UserError(f"{shown}: no rows (empty file)")
    return rows
