"""Constant-length packing of tokenized documents, keeping track of where each document starts.

Every document gets `eos_id` appended, the documents are concatenated into one stream, and the stream is cut into
rows of exactly `seq_length` tokens; a document may run on into the next row. Each row carries the lengths of the
document pieces it holds, so a model can be run padding-free (position_ids restarting at 0 per piece, no attention
mask, use_cache=False) and never attend across a document boundary.

    rows, stats = pack(token_lists, seq_length=2048, eos_id=tok.eos_token_id)
    rows, stats = pack(zip(token_lists, masks), 2048, eos_id, drop_tail=False, pad_id=tok.pad_token_id)
    row.input_ids, row.seq_lengths, row.loss_mask; position_ids(row.seq_lengths)

A document is a list of ids, or an (ids, mask) pair whose mask says which tokens are trained (1) or not (0); the EOS
appended to a document inherits the mask of its last token (1 for documents without a mask, and for empty ones).
The last partial row is dropped (drop_tail, the default) or padded with `pad_id` (mask 0, a segment of its own).
The work is done on numpy arrays, with Python loops per document and per row only: about 10 M tokens/s on 2 CPU
cores (5-15 with load and input type), most of it spent converting Python lists to arrays and back.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np

Ids = Sequence[int] | np.ndarray
Document = Ids | tuple[Ids, Ids | None]  # ids, or (ids, loss mask); a None mask trains every token


@dataclass
class PackedRow:
    input_ids: list[int]
    seq_lengths: list[int]  # lengths of the document pieces in this row, in order; they sum to the row length
    loss_mask: list[int]  # 1 = trained, 0 = not (masked-out document tokens, padding)


@dataclass
class PackedArrays:
    """The packed rows as arrays, for writers that never need Python lists (the prepare stage's Arrow cache)."""

    input_ids: np.ndarray  # (rows, seq_length)
    loss_mask: np.ndarray  # (rows, seq_length), int8
    seq_lengths: list[np.ndarray]  # per row, the lengths of its document pieces


@dataclass
class PackStats:
    documents: int
    tokens_in: int  # document tokens, before EOS
    tokens_packed: int  # document tokens + EOS that landed in rows (padding not included)
    sequences: int
    dropped_tail_tokens: int
    padding_tokens: int

    @property
    def padding_fraction(self) -> float:
        total = self.tokens_packed + self.padding_tokens
        return self.padding_tokens / total if total else 0.0


def pack(
    docs: Iterable[Document],
    seq_length: int,
    eos_id: int,
    *,
    drop_tail: bool = True,
    pad_id: int | None = None,
) -> tuple[list[PackedRow], PackStats]:
    """Rows of exactly `seq_length` tokens from the EOS-joined `docs`, and counts of what went where."""
    arrays, stats = pack_arrays(docs, seq_length, eos_id, drop_tail=drop_tail, pad_id=pad_id)
    rows = [PackedRow(input_ids=ids, seq_lengths=segments.tolist(), loss_mask=mask)
            for ids, segments, mask in zip(arrays.input_ids.tolist(), arrays.seq_lengths, arrays.loss_mask.tolist())]
    return rows, stats


def pack_arrays(
    docs: Iterable[Document],
    seq_length: int,
    eos_id: int,
    *,
    drop_tail: bool = True,
    pad_id: int | None = None,
) -> tuple[PackedArrays, PackStats]:
    """`pack`, returning arrays instead of Python lists."""
    if seq_length < 1:
        raise ValueError(f"seq_length must be at least 1, got {seq_length}")
    if not drop_tail and pad_id is None:
        raise ValueError("pack(drop_tail=False) pads the last row: it needs a pad_id")

    id_parts: list[np.ndarray] = []
    mask_parts: list[np.ndarray | None] = []
    for doc in docs:
        ids, mask = _split(doc)
        id_parts.append(ids)
        mask_parts.append(mask)
    documents = len(id_parts)
    lengths = np.fromiter((len(ids) for ids in id_parts), dtype=np.int64, count=documents)
    doc_ends = np.cumsum(lengths)

    tokens = np.concatenate(id_parts) if documents else np.zeros(0, dtype=np.int64)
    stream = np.insert(tokens, doc_ends, eos_id)
    mask_stream = _mask_stream(mask_parts, lengths, doc_ends)

    stream_length = len(stream)
    rows = stream_length // seq_length
    tail = stream_length - rows * seq_length
    dropped = padding = 0
    if tail and drop_tail:
        dropped = tail
    elif tail:
        rows += 1
        padding = seq_length - tail
        stream = np.concatenate([stream, np.full(padding, pad_id, dtype=stream.dtype)])
        mask_stream = np.concatenate([mask_stream, np.zeros(padding, dtype=mask_stream.dtype)])
    kept = rows * seq_length

    # Segment cuts: every document end (after its EOS) and every row boundary; padding starts at the last document end.
    cuts = np.union1d(doc_ends + np.arange(1, documents + 1), np.arange(0, kept + 1, seq_length))
    cuts = cuts[cuts <= kept]
    segment_lengths = np.diff(cuts)
    segments_per_row = np.bincount(cuts[:-1] // seq_length, minlength=rows)
    row_segments = np.split(segment_lengths, np.cumsum(segments_per_row)[:-1]) if rows else []

    packed = PackedArrays(input_ids=stream[:kept].reshape(rows, seq_length),
                          loss_mask=mask_stream[:kept].reshape(rows, seq_length), seq_lengths=list(row_segments))
    stats = PackStats(documents=documents, tokens_in=int(lengths.sum()), tokens_packed=stream_length - dropped,
                      sequences=rows, dropped_tail_tokens=dropped, padding_tokens=padding)
    return packed, stats


def position_ids(seq_lengths: list[int]) -> list[int]:
    """0, 1, ... restarting at every segment: the position_ids of a packed row."""
    lengths = np.asarray(seq_lengths, dtype=np.int64)
    starts = np.cumsum(lengths) - lengths
    return (np.arange(int(lengths.sum())) - np.repeat(starts, lengths)).tolist()


def _split(doc: Document) -> tuple[np.ndarray, np.ndarray | None]:
    """(ids, mask or None) as arrays; an (ids, mask) pair is a 2-tuple whose first item is not a token id."""
    if isinstance(doc, tuple) and len(doc) == 2 and not isinstance(doc[0], (int, np.integer)):
        if doc[1] is None:
            return np.asarray(doc[0], dtype=np.int64), None
        ids, mask = np.asarray(doc[0], dtype=np.int64), np.asarray(doc[1], dtype=np.int8)
        if ids.shape != mask.shape:
            raise ValueError(f"a document's mask must match its ids: {mask.shape} vs {ids.shape}")
        return ids, mask
    return np.asarray(doc, dtype=np.int64), None


def _mask_stream(masks: list[np.ndarray | None], lengths: np.ndarray, doc_ends: np.ndarray) -> np.ndarray:
    """The loss mask of the EOS-joined stream: all ones unless some document brought a mask."""
    if all(mask is None for mask in masks):
        return np.ones(int(lengths.sum()) + len(masks), dtype=np.int8)
    full = [np.ones(length, dtype=np.int8) if mask is None else mask for mask, length in zip(masks, lengths)]
    eos_mask = [int(mask[-1]) if len(mask) else 1 for mask in full]
    return np.insert(np.concatenate(full), doc_ends, eos_mask)
