"""Row checks for local data files, at launch: every row parses and has the format's columns with the right types.

    rows = check_rows(Path("data/train.jsonl"), recipe.data)   # the row count, or a UserError naming file:line

.jsonl: one JSON object per line. .json: an array of row objects (or JSON Lines under a .json name, as `datasets`
reads it). .parquet: the magic bytes, and the schema's columns when pyarrow is installed (the light login-node
install has no pyarrow; the prepare stage then finds a bad column). Text columns must hold strings (`input` may be
null), chat `messages` a list of {role, content} objects, and no string a lone UTF-16 surrogate (valid JSON, but not
text any tokenizer or Arrow file accepts).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from jobs.spec.errors import UserError
from jobs.spec.schema import FORMAT_FIELDS, DataSpec
from launchers.recipe.user_files import open_regular, parse_json

OPTIONAL_COLUMNS = {"input"}  # alpaca rows may omit "input" or leave it null
PARQUET_MAGIC = b"PAR1"


def check_rows(path: Path, shown: str, data: DataSpec) -> int:
    """The number of rows of a local data file, after checking every row (see the module docstring)."""
    if path.suffix == ".parquet":
        return check_parquet(path, shown, data)
    rows = 0
    for where, row in (_json_rows if path.suffix == ".json" else _jsonl_rows)(path, shown):
        check_row(row, data, where)
        rows += 1
    if rows == 0:
        raise UserError(f"{shown}: no rows (empty file)")
    return rows


def check_row(row: Any, data: DataSpec, where: str) -> None:
    if not isinstance(row, dict):
        raise UserError(f"{where}: expected a JSON object per row, got {type(row).__name__}")
    for canonical in FORMAT_FIELDS[data.format]:
        column = data.column(canonical)
        if column not in row:
            if canonical in OPTIONAL_COLUMNS:
                continue
            raise UserError(f"{where}: missing column {column!r} for format {data.format} "
                            f"(columns here: {', '.join(sorted(map(str, row))) or 'none'}; rename with data.fields)")
        problem = _messages_problem(row[column]) if canonical == "messages" else _text_problem(
            row[column], nullable=canonical in OPTIONAL_COLUMNS)
        if problem:
            raise UserError(f"{where}: column {column!r} {problem}")


def check_parquet(path: Path, shown: str, data: DataSpec) -> int:
    with open_regular(path, shown) as handle:
        head = handle.read(4)
        size = handle.seek(0, 2)
        handle.seek(max(0, size - 4))
        tail = handle.read(4)
    if size < 12 or head != PARQUET_MAGIC or tail != PARQUET_MAGIC:
        raise UserError(f"{shown}: not a Parquet file (no PAR1 magic bytes)")
    try:
        import pyarrow.parquet as pq
    except ImportError:
        return -1  # the light install: the prepare stage reads the columns
    try:
        metadata = pq.read_metadata(path)
    except Exception as err:  # noqa: BLE001 - pyarrow raises several types for a damaged footer
        raise UserError(f"{shown}: unreadable Parquet file ({str(err).splitlines()[0][:120]})") from None
    names = set(metadata.schema.names)
    missing = [data.column(c) for c in FORMAT_FIELDS[data.format]
               if c not in OPTIONAL_COLUMNS and data.column(c) not in names]
    if missing:
        raise UserError(f"{shown}: missing column {missing[0]!r} for format {data.format} "
                        f"(columns: {', '.join(sorted(names)) or 'none'}; rename with data.fields)")
    if metadata.num_rows == 0:
        raise UserError(f"{shown}: no rows (empty file)")
    return metadata.num_rows


def _jsonl_rows(path: Path, shown: str) -> Iterator[tuple[str, Any]]:
    with open_regular(path, shown) as handle:
        for number, raw in enumerate(handle, start=1):
            if raw.strip():
                yield f"{shown}:{number}", parse_json(raw, f"{shown}:{number}", numbered=False)


def _json_rows(path: Path, shown: str) -> Iterator[tuple[str, Any]]:
    with open_regular(path, shown) as handle:
        raw = handle.read()
    try:
        document = json.loads(raw)
    except json.JSONDecodeError as err:
        if err.msg == "Extra data":  # JSON Lines under a .json name: datasets reads it so
            yield from _jsonl_rows(path, shown)
            return
        document = parse_json(raw, shown)  # the same error, worded
    except (UnicodeDecodeError, RecursionError, ValueError):
        document = parse_json(raw, shown)
    if isinstance(document, dict):
        yield f"{shown}:1", document
    elif isinstance(document, list):
        yield from ((f"{shown}: row {index}", row) for index, row in enumerate(document, start=1))
    else:
        raise UserError(f"{shown}: expected an array of row objects, got {type(document).__name__}")


def _text_problem(value: Any, nullable: bool = False) -> str | None:
    if value is None and nullable:
        return None
    if not isinstance(value, str):
        return f"must be text, got {type(value).__name__}"
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as err:
        return f"holds a lone surrogate ({value[err.start]!r} at character {err.start}): not valid Unicode text"
    return None


def _messages_problem(value: Any) -> str | None:
    if not isinstance(value, list) or not value:
        return f"must be a non-empty list of messages, got {type(value).__name__}"
    for index, message in enumerate(value):
        if not isinstance(message, dict):
            return f"message {index}: expected an object with role and content, got {type(message).__name__}"
        for key in ("role", "content"):
            problem = _text_problem(message.get(key)) if key in message else "is missing"
            if problem:
                return f"message {index}: {key} {problem}"
    return None
