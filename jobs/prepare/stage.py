"""The prepare stage: fetch a hub model's weights once (jobs.common.hub), then tokenize + FIM + pack once into an
Arrow cache that every rank and every requeue reuses. It is the only stage that contacts the hub.

The cache lives in <runs root>/cache/prepared/<key>/, keyed by a hash of the source content, the tokenizer, the
data settings (format, fields, template, sequence length, packing, FIM) and the seed — so a full fine-tune and a
QLoRA of the same model and data share it, and a changed file or tokenizer never reuses a stale one. It is written
to a temporary directory and renamed into place: complete or invisible.

Rows hold `input_ids`, `labels` (-100 where no loss: prompts, non-assistant turns) and, when packed,
`seq_lengths` — the document pieces of the row, from which the collator builds per-document position ids so
packed documents do not attend to each other (padding-free batches).

The work: jobs.prepare.documents tokenizes (jobs.prepare.encode: a thread, or one worker process per 64 MB of text
up to the CPUs this process may use) and applies FIM; jobs.prepare.packing packs; the Arrow columns are built from
the numpy buffers. The result does not depend on the number of processes.

Run alone (CPU only):  prepare(recipe, plan, RankContext(run_dir=...)); the train stage calls `ensure_prepared`,
which reuses the cache or builds it on rank 0 while the other ranks wait.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
from datasets import Dataset, DatasetDict, disable_progress_bars, load_from_disk
from datasets.table import InMemoryTable

from jobs.common.build_once import build_once
from jobs.common.hub import fetch_snapshot, is_hub_id
from jobs.common.tokenizer import load_tokenizer
from jobs.prepare.data import SourceReport, load_sources, split_documents
from jobs.prepare.documents import tokenize
from jobs.prepare.encode import EncoderPool, available_cpus
from jobs.prepare.fim import FimTransform, fim_tokens
from jobs.prepare.packing import Documents, PackStats, eos_joined, pack_arrays
from jobs.spec.context import RankContext
from jobs.spec.errors import UserError
from jobs.spec.plan import Plan
from jobs.spec.rundir import COMPLETE_MARKER, RunDir, write_atomic
from jobs.spec.schema import DataSpec, Recipe
from jobs.track.tracker import Tracker

PREPARE_VERSION = 2  # bump when the cache layout or tokenization changes (2: eval splits keep their padded tail)
BYTES_PER_PROCESS = 64 << 20  # automatic worker processes: one per this much source text, at most one per CPU
MAX_CHUNK_VALUES = 1 << 30  # list values per Arrow chunk, under the 2**31 of its int32 offsets
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
    heldout_files: list[str] = field(default_factory=list)  # a source directory's eval split, by path
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


def build_cache(recipe: Recipe, tokenizer: Any, target: Path, key: str, processes: int | None = None
                ) -> PrepareReport:
    """Tokenize, FIM, pack and write the cache at `target`. `processes`: tokenizer worker processes (None: one per
    BYTES_PER_PROCESS of source text, at most one per CPU this process may use; 1: a thread of this process)."""
    started = time.perf_counter()
    data = recipe.data
    os.environ["TOKENIZERS_PARALLELISM"] = "true"  # the stage's one job is tokenizing: use every core
    disable_progress_bars()  # the stage prints its own progress lines
    source = SourceReport()
    rows, eval_rows = load_sources(data, recipe.training.seed, source)
    splits = split_documents(rows, eval_rows, data, recipe.training.seed)
    fim = None
    if data.fim_rate > 0:
        fim = FimTransform(fim_tokens(tokenizer), data.fim_rate, data.fim_spm_rate, recipe.training.seed)
    if processes is None:
        text_bytes = rows.data.nbytes + (eval_rows.data.nbytes if eval_rows is not None else 0)
        processes = min(available_cpus(), 1 + text_bytes // BYTES_PER_PROCESS)
    report = PrepareReport(key=key, source_rows=source.rows, source_skipped=dict(source.skipped),
                           heldout_files=source.held_out)
    built: dict[str, Dataset] = {}
    with EncoderPool(tokenizer.backend_tokenizer.to_str(), processes) as pool:
        for name, documents in splits.items():
            print(f"[prepare] {name}: tokenizing {len(documents)} documents ({processes} processes)", flush=True)
            split_report = SplitReport()
            encoded = kept_documents(tokenize(documents, data, tokenizer, fim, pool), fim, split_report)
            tail_pad = None if name == "train" else _pad_id(tokenizer)  # held-out tokens all count
            table = rows_table(encoded, data, tokenizer.eos_token_id, split_report, tail_pad)
            if table.num_rows == 0:  # an empty split cannot be saved, read back or trained on
                raise UserError(f"data: the {name} split makes no row ({split_report.documents} documents, "
                                f"{split_report.dropped_tail_tokens} tokens; data.seq_length is {data.seq_length}): "
                                "add data or lower data.seq_length")
            fingerprint = hashlib.sha256(f"{key}/{name}".encode()).hexdigest()[:16]
            built[name] = Dataset(InMemoryTable(table), fingerprint=fingerprint)
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


def kept_documents(docs: Documents, fim: FimTransform | None, report: SplitReport) -> Documents:
    """The non-empty documents (the empty ones counted as skipped); FIM documents counted by their first token."""
    kept = docs.lengths > 0
    report.documents = int(kept.sum())
    report.skipped_empty = len(kept) - report.documents
    lengths = docs.lengths[kept]
    if fim is not None:
        report.fim_documents = int((docs.tokens[np.cumsum(lengths) - lengths] == fim.tokens.prefix).sum())
    return Documents(docs.tokens, lengths, docs.mask)


def rows_table(docs: Documents, data: DataSpec, eos: int, report: SplitReport, tail_pad: int | None = None
               ) -> pa.Table:
    """Packed rows (input_ids, labels, seq_lengths) or one row per document, truncated to the sequence length.
    Packing drops the last partial row, or pads it with `tail_pad` (not trained on) where one is given."""
    if data.packing:
        packed, stats = pack_arrays(docs, data.seq_length, eos, drop_tail=tail_pad is None, pad_id=tail_pad)
        _merge_stats(report, stats)
        rows = np.full(stats.sequences, data.seq_length)
        labels = np.where(packed.loss_mask.astype(bool), packed.input_ids, IGNORE)
        return pa.table({"input_ids": _list_column(packed.input_ids.reshape(-1), rows),
                         "labels": _list_column(labels.reshape(-1), rows),
                         "seq_lengths": _list_column(packed.segment_lengths.astype(np.int32), packed.segments_per_row)})
    stream, mask = eos_joined(docs, eos)
    lengths = docs.lengths + 1
    kept = np.minimum(lengths, data.seq_length)
    report.truncated = int((lengths > data.seq_length).sum())
    report.tokens = int(kept.sum())
    report.sequences = len(kept)
    starts = np.cumsum(lengths) - lengths
    index = np.repeat(starts - (np.cumsum(kept) - kept), kept) + np.arange(report.tokens)
    ids = stream[index]
    labels = np.where(mask[index].astype(bool), ids, IGNORE).astype(np.int64)  # the types of Dataset.from_dict
    return pa.table({"input_ids": _list_column(ids, kept), "labels": _list_column(labels, kept)})


def _pad_id(tokenizer: Any) -> int:
    return tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id


def _list_column(values: np.ndarray, lengths: np.ndarray) -> pa.ChunkedArray:
    """Rows of `lengths` items of the flat `values` as an Arrow list column, built from the numpy buffers."""
    ends = np.concatenate([[0], np.cumsum(lengths, dtype=np.int64)])
    cuts = [0]
    while ends[-1] - ends[cuts[-1]] > MAX_CHUNK_VALUES:
        cuts.append(int(np.searchsorted(ends, ends[cuts[-1]] + MAX_CHUNK_VALUES, side="right")) - 1)
    cuts.append(len(lengths))
    chunks = [pa.ListArray.from_arrays(pa.array((ends[a:b + 1] - ends[a]).astype(np.int32)),
                                       pa.array(values[ends[a]:ends[b]]))
              for a, b in zip(cuts, cuts[1:])]
    return pa.chunked_array(chunks, type=pa.list_(pa.from_numpy_dtype(values.dtype)))


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
