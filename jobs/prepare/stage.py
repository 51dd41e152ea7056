"""The prepare stage: fetch a hub model's weights once (jobs.common.hub), then tokenize + FIM + pack once into an
Arrow cache that every rank and every requeue reuses. It is the only stage that contacts the hub.

The cache lives in <runs root>/cache/prepared/<key>/, keyed by a hash of the source content, the tokenizer, the
data settings (format, fields, template, sequence length, packing, FIM) and the seed — so a full fine-tune and a
QLoRA of the same model and data share it, and a changed file or tokenizer never reuses a stale one. It is written
to a temporary directory and renamed into place: complete or invisible.

Rows hold `input_ids`, `labels` (-100 where no loss: prompts, non-assistant turns) and, when packed,
`seq_lengths` — the document pieces of the row, from which the collator builds per-document position ids so
packed documents do not attend to each other (padding-free batches).

Run alone (one CPU process):  prepare(recipe, plan, RankContext(run_dir=...)); the train stage calls
`ensure_prepared`, which reuses the cache or builds it on rank 0 while the other ranks wait.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import sys
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
from datasets import Dataset, DatasetDict, disable_progress_bars, load_from_disk
from datasets.table import InMemoryTable

from jobs.common.build_once import build_once
from jobs.common.hub import fetch_snapshot, is_hub_id
from jobs.common.model import load_tokenizer
from jobs.prepare.data import SourceReport, load_rows, shape_row, split_documents
from jobs.prepare.fim import FimTransform, fim_tokens
from jobs.prepare.packing import PackStats, pack_arrays
from jobs.spec.context import RankContext
from jobs.spec.plan import Plan
from jobs.spec.rundir import COMPLETE_MARKER, RunDir, write_atomic
from jobs.spec.schema import DataSpec, Recipe
from jobs.track.tracker import Tracker

PREPARE_VERSION = 1  # bump when the cache layout or tokenization changes
BATCH = 256  # documents per tokenizer call (small enough to pipeline, large enough to batch)
WAIT_FOR_CACHE_S = 6 * 3600
IGNORE = -100


@dataclass
class SplitReport:
    documents: int = 0
    skipped_empty: int = 0
    truncated: int = 0
    tokens: int = 0
    sequences: int = 0
    padding_fraction: float = 0.0
    dropped_tail_tokens: int = 0
    fim_documents: int = 0


@dataclass
class PrepareReport:
    key: str
    source_rows: int
    source_skipped: dict[str, int]
    splits: dict[str, SplitReport] = field(default_factory=dict)
    seconds: float = 0.0

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def prepare(recipe: Recipe, plan: Plan, context: RankContext) -> Path:
    """The prepare stage entry point: build the cache (or find it) and return its directory."""
    tracker = Tracker(context, "prepare", recipe, plan)
    tracker.start()
    status = "FAILED"
    try:
        if recipe.model.init == "pretrained" and is_hub_id(recipe.model.name_or_path):
            fetch_snapshot(recipe.model.name_or_path, recipe.model.revision)  # once, for every later stage
        prepared = ensure_prepared(recipe, context)
        tracker.set_data(prepared.name)
        tracker.log_data_report(read_report(prepared))
        status = "FINISHED"
    finally:
        tracker.finish(status)
    return prepared


def ensure_prepared(recipe: Recipe, context: RankContext) -> Path:
    """The cache directory for this recipe's data, built by rank 0 if missing; other ranks wait for it."""
    tokenizer = load_tokenizer(recipe)
    key = cache_key(recipe.data, tokenizer, recipe.training.seed)
    target = RunDir(context.run_dir).prepared_cache(key)
    if context.is_main and (target / COMPLETE_MARKER).exists():
        print(f"[prepare] reusing {target}", flush=True)
    build_once(target, context, lambda: _print_report(build_cache(recipe, tokenizer, target, key)), WAIT_FOR_CACHE_S,
               "the prepared data")
    return target


def load_prepared(directory: Path) -> DatasetDict:
    loaded = load_from_disk(str(directory))
    assert isinstance(loaded, DatasetDict)
    return loaded


def read_report(directory: Path) -> dict[str, Any]:
    return json.loads((directory / "report.json").read_text())


def cache_key(data: DataSpec, tokenizer: Any, seed: int) -> str:
    digest = hashlib.sha256()
    settings = data.model_dump(mode="json", exclude={"source", "eval_source", "split", "packed_attention"})
    digest.update(json.dumps({"v": PREPARE_VERSION, "data": settings, "seed": seed}, sort_keys=True).encode())
    digest.update(tokenizer.backend_tokenizer.to_str().encode())
    digest.update(str(getattr(tokenizer, "chat_template", "")).encode())
    for source in (data.source, data.eval_source):
        digest.update(source_fingerprint(source, data))
    return digest.hexdigest()[:20]


def source_fingerprint(source: str | None, data: DataSpec) -> bytes:
    """Content hash of a local file or directory; a hub id hashes its name and split."""
    if source is None:
        return b"-"
    path = Path(source)
    digest = hashlib.sha256()
    if path.is_file():
        _hash_file(digest, path)
    elif path.is_dir():
        for item in sorted(path.glob(data.glob)):
            if item.is_file():
                digest.update(str(item.relative_to(path)).encode())
                _hash_file(digest, item)
    else:
        digest.update(f"hub:{source}:{data.split}".encode())
    return digest.digest()


def _hash_file(digest: Any, path: Path) -> None:
    with path.open("rb") as handle:
        while block := handle.read(1 << 22):
            digest.update(block)


def build_cache(recipe: Recipe, tokenizer: Any, target: Path, key: str) -> PrepareReport:
    started = time.perf_counter()
    data = recipe.data
    os.environ["TOKENIZERS_PARALLELISM"] = "true"  # the stage's one job is tokenizing: use every core
    disable_progress_bars()  # the stage prints its own progress lines
    source = SourceReport()
    rows = load_rows(data.source, data, source)
    eval_rows = load_rows(data.eval_source, data) if data.eval_source else None
    splits = split_documents(rows, eval_rows, data, recipe.training.seed)
    fim = None
    if data.fim_rate > 0:
        fim = FimTransform(fim_tokens(tokenizer), data.fim_rate, data.fim_spm_rate, recipe.training.seed)
    report = PrepareReport(key=key, source_rows=source.rows, source_skipped=dict(source.skipped))
    built: dict[str, Dataset] = {}
    for name, documents in splits.items():
        split_report = SplitReport()
        encoded = encode_documents(documents, data, tokenizer, fim, split_report)
        built[name] = rows_dataset(encoded, data, tokenizer, split_report)
        report.splits[name] = split_report
    tmp = target.with_name(f".{target.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    DatasetDict(built).save_to_disk(str(tmp))
    report.seconds = round(time.perf_counter() - started, 3)
    write_atomic(tmp / "report.json", json.dumps(report.as_dict(), indent=2) + "\n")
    (tmp / COMPLETE_MARKER).write_text(f"{recipe.name}\n")
    target.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.replace(tmp, target)
    except OSError:  # another process finished the same cache first: keep theirs
        shutil.rmtree(tmp, ignore_errors=True)
    return report


def encode_documents(
    documents: Dataset, data: DataSpec, tokenizer: Any, fim: FimTransform | None, report: SplitReport
) -> Iterator[tuple[list[int], list[int] | None]]:
    """(token ids, loss mask) per document, FIM applied per document before packing. Empty documents skipped.

    One worker thread encodes batch k+1 (the Rust tokenizer releases the GIL) while the caller packs batch k;
    batches are encoded strictly in order, so FIM decisions are the same as in a sequential pass.
    """
    total = len(documents)
    shown = time.perf_counter()
    with ThreadPoolExecutor(max_workers=1) as worker:
        pending = None
        for start in range(0, total + BATCH, BATCH):
            future = None
            if start < total:
                batch = [shape_row(row, data) for row in documents.select(range(start, min(start + BATCH, total)))]
                future = worker.submit(lambda b=batch: list(_encode_batch(b, tokenizer, fim, data.fim_mode, report)))
            if pending is not None:
                for ids, mask in pending.result():
                    if not ids:
                        report.skipped_empty += 1
                        continue
                    report.documents += 1
                    yield ids, mask
            pending = future
            if time.perf_counter() - shown > 5:
                print(f"[prepare] {min(start, total)}/{total} documents", file=sys.stderr, flush=True)
                shown = time.perf_counter()


def _encode_batch(
    batch: list[dict[str, Any]], tokenizer: Any, fim: FimTransform | None, mode: str, report: SplitReport
) -> Iterator[tuple[list[int], list[int] | None]]:
    """(ids, loss mask) per document; a None mask trains every token."""
    if "messages" in batch[0]:
        for row in batch:
            out = tokenizer.apply_chat_template(row["messages"], tokenize=True, return_dict=True,
                                                return_assistant_tokens_mask=True)
            yield list(out["input_ids"]), list(out["assistant_masks"])
        return
    encoder = TextEncoder(tokenizer)
    if "text" in batch[0] or fim is not None:
        # FIM rewrites whole documents (a prompt/completion pair is one document, trained on every token).
        texts = [row["text"] if "text" in row else row["prompt"] + row["completion"] for row in batch]
        if fim is not None and mode == "character":
            encoded = [fim.apply_text(text, encoder.one) for text in texts]
        else:
            encoded = encoder.many(texts)
            if fim is not None:
                encoded = [fim.apply(ids) for ids in encoded]
        for ids in encoded:
            report.fim_documents += int(fim is not None and bool(ids) and ids[0] == fim.tokens.prefix)
            yield ids, None
        return
    prompts = encoder.many([row["prompt"] for row in batch])
    completions = encoder.many([row["completion"] for row in batch])
    for prompt, completion in zip(prompts, completions, strict=True):
        yield prompt + completion, [0] * len(prompt) + [1] * len(completion)


class TextEncoder:
    """Text → ids through the tokenizer's Rust backend (the transformers wrapper costs ~15% here). Special-token
    strings inside the data (a file mentioning "<fim_prefix>" or "<|endoftext|>") stay text: they must never
    become real sentinels or document ends. A private copy of the backend, so the chat template still sees them."""

    def __init__(self, tokenizer: Any) -> None:
        from tokenizers import Tokenizer

        self.backend = Tokenizer.from_str(tokenizer.backend_tokenizer.to_str())
        self.backend.encode_special_tokens = True

    def many(self, texts: list[str]) -> list[list[int]]:
        # encode_batch_fast: the same ids without character offsets, ~1.4x faster here
        return [encoding.ids for encoding in self.backend.encode_batch_fast(texts, add_special_tokens=False)]

    def one(self, text: str) -> list[int]:
        return self.backend.encode(text, add_special_tokens=False).ids


def rows_dataset(
    encoded: Iterator[tuple[list[int], list[int] | None]], data: DataSpec, tokenizer: Any, report: SplitReport
) -> Dataset:
    """Packed rows (input_ids, labels, seq_lengths) or one row per document, truncated to the sequence length."""
    eos = tokenizer.eos_token_id
    if data.packing:
        packed, stats = pack_arrays(encoded, data.seq_length, eos)
        _merge_stats(report, stats)
        labels = np.where(packed.loss_mask.astype(bool), packed.input_ids, IGNORE)
        return Dataset(InMemoryTable(pa.table({
            "input_ids": _list_column(packed.input_ids),
            "labels": _list_column(labels),
            "seq_lengths": _ragged_column(packed.seq_lengths),
        })))
    ids_column: list[list[int]] = []
    labels_column: list[list[int]] = []
    for ids, mask in encoded:
        mask = [1] * len(ids) if mask is None else mask
        ids, mask = ids + [eos], mask + [mask[-1]]
        if len(ids) > data.seq_length:
            report.truncated += 1
            ids, mask = ids[: data.seq_length], mask[: data.seq_length]
        ids_column.append(ids)
        labels_column.append(_labels(ids, mask))
        report.tokens += len(ids)
    report.sequences = len(ids_column)
    return Dataset.from_dict({"input_ids": ids_column, "labels": labels_column})


def _list_column(matrix: np.ndarray) -> pa.ListArray:
    """A (rows, length) matrix as an Arrow list column, without a detour through Python lists."""
    rows, length = matrix.shape
    offsets = pa.array(np.arange(0, rows * length + 1, length, dtype=np.int32))
    return pa.ListArray.from_arrays(offsets, pa.array(matrix.reshape(-1).astype(np.int32)))


def _ragged_column(parts: list[np.ndarray]) -> pa.ListArray:
    offsets = np.zeros(len(parts) + 1, dtype=np.int32)
    np.cumsum([len(part) for part in parts], out=offsets[1:])
    values = np.concatenate(parts).astype(np.int32) if parts else np.zeros(0, dtype=np.int32)
    return pa.ListArray.from_arrays(pa.array(offsets), pa.array(values))


def _labels(ids: list[int], mask: list[int]) -> list[int]:
    return [token if keep else IGNORE for token, keep in zip(ids, mask, strict=True)]


def _merge_stats(report: SplitReport, stats: PackStats) -> None:
    report.tokens = stats.tokens_packed
    report.sequences = stats.sequences
    report.padding_fraction = stats.padding_fraction
    report.dropped_tail_tokens = stats.dropped_tail_tokens


def _print_report(report: PrepareReport) -> None:
    for name, split in report.splits.items():
        print(f"[prepare] {name}: {split.documents} documents → {split.sequences} sequences, {split.tokens} tokens, "
              f"padding {split.padding_fraction:.1%}, dropped tail {split.dropped_tail_tokens} tokens, "
              f"truncated {split.truncated}, FIM {split.fim_documents}, empty skipped {split.skipped_empty}",
              flush=True)
    if report.source_skipped:
        skipped = ", ".join(f"{count} {why}" for why, count in sorted(report.source_skipped.items()))
        print(f"[prepare] source files skipped: {skipped}", flush=True)
    print(f"[prepare] cache built in {report.seconds:.1f} s", flush=True)
