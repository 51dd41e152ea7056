"""Rows of a recipe's data source, as documents of one shape per format.

    prompt_completion → {"prompt", "completion"}        loss on the completion only
    alpaca            → {"prompt", "completion"}        the two Alpaca prompts (with and without input)
    alpaca + chat     → {"messages": [user, assistant]} loss on the assistant turn only
    chat              → {"messages": [...]}             loss on the assistant turns only
    code              → {"text"}                        every token

Sources: a local .jsonl/.json/.parquet file, a directory of source files (format code: the "personal copilot"
case; binaries, vendored trees and files over 1 MB are skipped and counted), or a hub dataset id. The eval split:
its own source (data.eval_source); for a source directory, files held out by path (named by data.eval_files, or
data.eval_fraction of them: jobs.prepare.code_files.held_out); else a seeded fraction of the rows.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pyarrow as pa
from datasets import Dataset, load_dataset
from datasets.fingerprint import generate_random_fingerprint
from datasets.table import InMemoryTable

from jobs.prepare.code_files import held_out, read_code_files
from jobs.spec.schema import DataSpec

ALPACA_WITH_INPUT = (
    "Below is an instruction that describes a task, paired with an input that provides further context. "
    "Write a response that appropriately completes the request.\n\n"
    "### Instruction:\n{instruction}\n\n### Input:\n{input}\n\n### Response:\n"
)
ALPACA_NO_INPUT = (
    "Below is an instruction that describes a task. Write a response that appropriately completes the request.\n\n"
    "### Instruction:\n{instruction}\n\n### Response:\n"
)
LOADERS = {".jsonl": "json", ".json": "json", ".parquet": "parquet"}


@dataclass
class SourceReport:
    """What reading a source kept and skipped (directories), for the prepare report."""

    rows: int = 0
    skipped: Counter[str] = field(default_factory=Counter)
    held_out: list[str] = field(default_factory=list)  # a directory's eval split: its files, relative to the source


def load_sources(data: DataSpec, seed: int, report: SourceReport) -> tuple[Dataset, Dataset | None]:
    """The training documents, and the held-out ones where the split is known here: data.eval_source, or a source
    directory's files held out by path (data.eval_files, or data.eval_fraction of them). Rows of a file or a hub
    dataset are split later, by data.eval_fraction of the rows (split_documents)."""
    root = Path(data.source)
    if root.is_dir():
        files = read_code_files(root, data.glob, report.skipped)
        held = held_out(root, [path for path, _ in files], data, seed)
        report.rows = len(files)
        report.held_out = [str(path.relative_to(root)) for path, _ in files if path in held]
        train = code_rows([text for path, text in files if path not in held], data)
        if held:
            return train, code_rows([text for path, text in files if path in held], data)
        return train, load_rows(data.eval_source, data) if data.eval_source else None
    rows = load_rows(data.source, data, report)
    return rows, load_rows(data.eval_source, data) if data.eval_source else None


def load_rows(source: str, data: DataSpec, report: SourceReport | None = None) -> Dataset:
    report = report if report is not None else SourceReport()
    path = Path(source)
    if path.is_dir():
        loaded = code_rows([text for _, text in read_code_files(path, data.glob, report.skipped)], data)
    elif path.exists():
        loaded = load_dataset(LOADERS[path.suffix], data_files=str(path), split="train")
    else:
        loaded = load_dataset(source, split=data.split)
    assert isinstance(loaded, Dataset)
    report.rows = len(loaded)
    return loaded


def code_rows(texts: list[str], data: DataSpec) -> Dataset:
    # An in-memory table never cached on disk: a random fingerprint spares hashing every byte of it.
    table = InMemoryTable.from_pydict({data.column("content"): pa.array(texts, type=pa.string())})
    return Dataset(table, fingerprint=generate_random_fingerprint())


def alpaca_prompt(instruction: str, input_text: str | None) -> str:
    if input_text:
        return ALPACA_WITH_INPUT.format(instruction=instruction, input=input_text)
    return ALPACA_NO_INPUT.format(instruction=instruction)


def shape_row(row: dict[str, Any], data: DataSpec) -> dict[str, Any]:
    """One source row as a document of the format's shape (see the module docstring)."""
    col = data.column
    try:
        if data.format == "prompt_completion":
            return {"prompt": row[col("prompt")], "completion": row[col("completion")]}
        if data.format == "alpaca":
            instruction, input_text, output = row[col("instruction")], row.get(col("input")) or "", row[col("output")]
            if data.template == "chat":
                user = f"{instruction}\n\n{input_text}" if input_text else instruction
                return {"messages": [{"role": "user", "content": user}, {"role": "assistant", "content": output}]}
            return {"prompt": alpaca_prompt(instruction, input_text), "completion": output}
        if data.format == "chat":
            return {"messages": row[col("messages")]}
        return {"text": row[col("content")]}
    except KeyError as missing:
        raise ValueError(f"data: a row has no column {missing} for format {data.format} "
                         f"(columns: {', '.join(sorted(row))}); rename with data.fields") from None


def split_documents(rows: Dataset, eval_rows: Dataset | None, data: DataSpec, seed: int) -> dict[str, Dataset]:
    """{"train", "eval"?}: the eval split by file (data.eval_source) or by a seeded fraction of documents."""
    if data.max_samples is not None:
        rows = rows.select(range(min(data.max_samples, len(rows))))
    if eval_rows is not None:
        return {"train": rows, "eval": eval_rows}
    if data.eval_fraction > 0 and len(rows) > 1:
        split = rows.train_test_split(test_size=data.eval_fraction, seed=seed)
        return {"train": split["train"], "eval": split["test"]}
    return {"train": rows}
