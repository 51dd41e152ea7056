"""Rows of a recipe's data source, as documents of one shape per format.

    prompt_completion → {"prompt", "completion"}        loss on the completion only
    alpaca            → {"prompt", "completion"}        the two Alpaca prompts (with and without input)
    alpaca + chat     → {"messages": [user, assistant]} loss on the assistant turn only
    chat              → {"messages": [...]}             loss on the assistant turns only
    code              → {"text"}                        every token

Sources: a local .jsonl/.json/.parquet file, a directory of source files (format code: the "personal copilot"
case; binaries, vendored trees and files over 1 MB are skipped and counted), or a hub dataset id.
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

from jobs.prepare.code_files import code_files, read_code_file
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


def load_rows(source: str, data: DataSpec, report: SourceReport | None = None) -> Dataset:
    report = report if report is not None else SourceReport()
    path = Path(source)
    if path.is_dir():
        rows = read_code_directory(path, data.glob, report)
        # An in-memory table never cached on disk: a random fingerprint spares hashing every byte of it.
        table = InMemoryTable.from_pydict({data.column("content"): pa.array(rows, type=pa.string())})
        loaded = Dataset(table, fingerprint=generate_random_fingerprint())
    elif path.exists():
        loaded = load_dataset(LOADERS[path.suffix], data_files=str(path), split="train")
    else:
        loaded = load_dataset(source, split=data.split)
    assert isinstance(loaded, Dataset)
    report.rows = len(loaded)
    return loaded


def read_code_directory(root: Path, pattern: str, report: SourceReport) -> list[str]:
    """Text of every source file under `root` matching `pattern`, in path order; the rest is counted."""
    texts: list[str] = []
    for path, skipped in code_files(root, pattern):
        text = None
        if skipped is None:
            text, skipped = read_code_file(path)
        if text is not None:
            texts.append(text)
        else:
            report.skipped[str(skipped)] += 1
    return texts


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
