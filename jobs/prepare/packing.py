"""Constant-length packing of tokenized documents, keeping track of where each document starts.

Every document gets `eos_id` appended, the documents are concatenated into one stream, and the stream is cut into
rows of exactly `seq_length` tokens; a document may run on into the next row. Each row carries the lengths of the
document pieces it holds, so a model can be run padding-free (position_ids restarting at 0 per piece, no attention
mask, use_cache=False) and never attend across a document boundary.

    rows, stats = pack(token_lists, seq_length=2048, eos_id=tok.eos_token_id)
    rows, stats = pack(zip(token_lists, masks), 2048, eos_id, drop_tail=False, pad_id=tok.pad_token_id)
    row.input_ids, row.seq_lengths, row.loss_mask; position_ids(row.seq_lengths)
    packed, stats = pack_arrays(Documents(tokens, lengths, mask), 2048, eos_id)   # flat arrays in, arrays out

A document is a list of ids, or an (ids, mask) pair whose mask says which tokens are trained (1) or not (0); the EOS
appended to a document inherits the mask of its last token (1 for documents without a mask, and for empty ones).
The last partial row is dropped (drop_tail, the default) or padded with `pad_id` (mask 0, a segment of its own).
`pack_arrays` works on one flat token array with per-document lengths (`Documents`, what the prepare stage
builds): whole-array numpy operations, no Python loop per document or per row.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np

Ids = Sequence[int] | np.ndarray
Document = Ids | tuple[Ids, Ids | None]  # ids, or (ids, loss mask); a None mask trains every token


@dataclass
class Documents:
    """Documents as flat arrays: document i is tokens[s:s + lengths[i]], s the sum of the lengths before it."""

    tokens: np.ndarray  # int32
    lengths: np.ndarray  # int64, one per document
    mask: np.ndarray | None = None  # int8 like tokens (1 = trained); None trains every token

    @property
    def ends(self) -> np.ndarray:
        return np.cumsum(self.lengths)


@dataclass
class PackedRow:
    input_ids: list[int]
    seq_lengths: list[int]  # lengths of the document pieces in this row, in order; they sum to the row length
    loss_mask: list[int]  # 1 = trained, 0 = not (masked-out document tokens, padding)


@dataclass
class PackedArrays:
    """The packed rows as arrays, for writers that never need Python lists (the prepare stage's Arrow cache)."""

    input_ids: np.ndarray  # (rows, seq_length), int32
    loss_mask: np.ndarray  # (rows, seq_length), int8
    segment_lengths: np.ndarray  # the lengths of every row's document pieces, row after row
    segments_per_row: np.ndarray  # how many of them each row holds


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
    arrays, stats = pack_arrays(documents(docs), seq_length, eos_id, drop_tail=drop_tail, pad_id=pad_id)
    segments = np.split(arrays.segment_lengths, np.cumsum(arrays.segments_per_row)[:-1]) if stats.sequences else []
    rows = [PackedRow(input_ids=ids, seq_lengths=lengths.tolist(), loss_mask=mask)
            for ids, lengths, mask in zip(arrays.input_ids.tolist(), segments, arrays.loss_mask.tolist())]
    return rows, stats


def documents(docs: Iterable[Document]) -> Documents:
    """Lists of ids (or (ids, mask) pairs) as flat `Documents`."""
    id_parts: list[np.ndarray] = []
    mask_parts: list[np.ndarray | None] = []
    for doc in docs:
        ids, mask = _split(doc)
        id_parts.append(ids)
        mask_parts.append(mask)
    lengths = np.array([len(ids) for ids in id_parts], dtype=np.int64)
    tokens = np.concatenate(id_parts) if id_parts else np.zeros(0, dtype=np.int32)
    mask = None
    if any(part is not None for part in mask_parts):
        mask = np.concatenate([np.ones(len(ids), np.int8) if part is None else part
                               for ids, part in zip(id_parts, mask_parts)])
    return Documents(tokens=tokens, lengths=lengths, mask=mask)


def pack_arrays(
    docs: Documents,
    seq_length: int,
    eos_id: int,
    *,
    drop_tail: bool = True,
    pad_id: int | None = None,
) -> tuple[PackedArrays, PackStats]:
    """`pack` on flat arrays, returning arrays instead of Python lists."""
    if seq_length < 1:
        raise ValueError(f"seq_length must be at least 1, got {seq_length}")
    if not drop_tail and pad_id is None:
        raise ValueError("pack(drop_tail=False) pads the last row: it needs a pad_id")
    count = len(docs.lengths)
    ends = docs.ends
    stream, mask_stream = eos_joined(docs, eos_id)

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
    cuts = np.union1d(ends + np.arange(1, count + 1), np.arange(0, kept + 1, seq_length))
    cuts = cuts[cuts <= kept]
    packed = PackedArrays(input_ids=stream[:kept].reshape(rows, seq_length),
                          loss_mask=mask_stream[:kept].reshape(rows, seq_length),
                          segment_lengths=np.diff(cuts), segments_per_row=np.bincount(cuts[:-1] // seq_length,
                                                                                      minlength=rows))
    stats = PackStats(documents=count, tokens_in=int(docs.lengths.sum()), tokens_packed=stream_length - dropped,
                      sequences=rows, dropped_tail_tokens=dropped, padding_tokens=padding)
    return packed, stats


def eos_joined(docs: Documents, eos_id: int) -> tuple[np.ndarray, np.ndarray]:
    """(tokens, loss mask) of the documents with an EOS after each, the EOS masked like the document's last token
    (1 for an empty document)."""
    ends = docs.ends
    stream = append_after(docs.tokens.astype(np.int32, copy=False), ends, np.int32(eos_id))
    if docs.mask is None:
        return stream, np.ones(len(stream), dtype=np.int8)
    last = docs.mask[np.maximum(ends - 1, 0)] if len(docs.mask) else np.ones(len(ends), dtype=np.int8)
    return stream, append_after(docs.mask, ends, np.where(docs.lengths > 0, last, 1).astype(np.int8))


def append_after(values: np.ndarray, ends: np.ndarray, extra: np.ndarray | np.generic) -> np.ndarray:
    """`values` with `extra` (one value, or one per document) inserted after each document end in `ends`."""
    out = np.empty(len(values) + len(ends), dtype=values.dtype)
    at = ends + np.arange(len(ends))
    kept = np.ones(len(out), dtype=bool)
    kept[at] = False
    out[kept] = values
    out[at] = extra
    return out


def position_ids(seq_lengths: list[int]) -> list[int]:
    """0, 1, ... restarting at every segment: the position_ids of a packed row."""
    lengths = np.asarray(seq_lengths, dtype=np.int64)
    starts = np.cumsum(lengths) - lengths
    return (np.arange(int(lengths.sum())) - np.repeat(starts, lengths)).tolist()


def _split(doc: Document) -> tuple[np.ndarray, np.ndarray | None]:
    """(ids, mask or None) as arrays; an (ids, mask) pair is a 2-tuple whose first item is not a token id."""
    if isinstance(doc, tuple) and len(doc) == 2 and not isinstance(doc[0], (int, np.integer)):
        if doc[1] is None:
            return np.asarray(doc[0], dtype=np.int32), None
        ids, mask = np.asarray(doc[0], dtype=np.int32), np.asarray(doc[1], dtype=np.int8)
        if ids.shape != mask.shape:
            raise ValueError(f"a document's mask must match its ids: {mask.shape} vs {ids.shape}")
        return ids, mask
    return np.asarray(doc, dtype=np.int32), None
