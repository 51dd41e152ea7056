"""A split's documents → token ids with loss masks, as flat `Documents` arrays: the prepare stage's tokenization.

    docs = tokenize(documents, data, tokenizer, fim, pool)   # every document in order, empty ones included

Per format (the shapes of jobs.prepare.data.shape_row):
    text (code, or any format with FIM)  every token trained; FIM rewrites whole documents (a prompt/completion
                                         pair is one document) — token mode after tokenizing, character mode by
                                         tokenizing the three pieces of the text
    prompt/completion                    both encoded in one batch; loss on the completion only
    messages (chat)                      the tokenizer's chat template; loss on the assistant turns only

Batches of BATCH documents go through the EncoderPool (a thread, or worker processes) in order, and the FIM
decisions are drawn in document order, so the result is the same for any number of workers. Everything after the
tokenizer is numpy over whole batches.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Iterator
from typing import Any

import numpy as np
from datasets import Dataset

from jobs.prepare.data import shape_row
from jobs.prepare.encode import EncoderPool
from jobs.prepare.fim import FimDraws, FimTransform, fim_layout
from jobs.prepare.packing import Documents
from jobs.spec.schema import DataSpec

BATCH = 256  # documents per tokenizer call (small enough to pipeline, large enough to batch)
PROGRESS_S = 5


def tokenize(documents: Dataset, data: DataSpec, tokenizer: Any, fim: FimTransform | None,
             pool: EncoderPool) -> Documents:
    batches = row_batches(documents, data)
    if data.format == "chat" or (data.format == "alpaca" and data.template == "chat"):
        parts = [chat_documents(rows, tokenizer) for rows in batches]
    elif data.format == "code" or fim is not None:
        parts = list(text_documents(batches, fim, data.fim_mode, pool))
    else:
        parts = [prompt_completion(tokens, lengths) for _, tokens, lengths in pool.map(
            ([text for row in rows for text in (row["prompt"], row["completion"])], None) for rows in batches)]
    return concatenate(parts)


def row_batches(documents: Dataset, data: DataSpec) -> Iterator[list[dict[str, Any]]]:
    """The documents in order, BATCH at a time, each in its format's shape (columns read a batch at a time)."""
    total, shown = len(documents), time.perf_counter()
    for start in range(0, total, BATCH):
        columns = documents[start:start + BATCH]
        yield [shape_row(dict(zip(columns, values)), data) for values in zip(*columns.values())]
        if time.perf_counter() - shown > PROGRESS_S:
            print(f"[prepare] {start}/{total} documents", file=sys.stderr, flush=True)
            shown = time.perf_counter()


def text_documents(batches: Iterator[list[dict[str, Any]]], fim: FimTransform | None, mode: str,
                   pool: EncoderPool) -> Iterator[Documents]:
    texts = ([row["text"] if "text" in row else row["prompt"] + row["completion"] for row in rows]
             for rows in batches)
    if fim is None:
        for _, tokens, lengths in pool.map((batch, None) for batch in texts):
            yield Documents(tokens, lengths)
    elif mode == "character":
        for draws, tokens, lengths in pool.map(_character_pieces(batch, fim) for batch in texts):
            yield Documents(*fim_layout(tokens, _piece_lengths(lengths, draws), draws, fim.tokens))
    else:
        for _, tokens, lengths in pool.map((batch, None) for batch in texts):
            draws = fim.draw(lengths)
            yield Documents(*fim_layout(tokens, draws.pieces(lengths), draws, fim.tokens))


def _character_pieces(texts: list[str], fim: FimTransform) -> tuple[list[str], FimDraws]:
    """The texts to encode: prefix, middle and suffix of a document drawn for FIM, the whole text of the others."""
    draws = fim.draw([len(text) for text in texts])
    pieces: list[str] = []
    for text, chosen, start, end in zip(texts, draws.fim, draws.start.tolist(), draws.end.tolist()):
        pieces.extend((text[:start], text[start:end], text[end:]) if chosen else (text,))
    return pieces, draws


def _piece_lengths(lengths: np.ndarray, draws: FimDraws) -> np.ndarray:
    """(documents, 3) token lengths of prefix, middle, suffix from the lengths of the encoded pieces."""
    first = np.cumsum(np.where(draws.fim, 3, 1)) - np.where(draws.fim, 3, 1)
    pieces = np.zeros((len(first), 3), dtype=np.int64)
    pieces[:, 0] = lengths[first]
    pieces[draws.fim, 1] = lengths[first[draws.fim] + 1]
    pieces[draws.fim, 2] = lengths[first[draws.fim] + 2]
    return pieces


def prompt_completion(tokens: np.ndarray, lengths: np.ndarray) -> Documents:
    """Documents from prompts and completions encoded alternately; the completion's tokens are trained."""
    mask = np.repeat(np.tile(np.array([0, 1], dtype=np.int8), len(lengths) // 2), lengths)
    return Documents(tokens, lengths[0::2] + lengths[1::2], mask)


def chat_documents(rows: list[dict[str, Any]], tokenizer: Any) -> Documents:
    ids, masks = [], []
    for row in rows:
        out = tokenizer.apply_chat_template(row["messages"], tokenize=True, return_dict=True,
                                            return_assistant_tokens_mask=True)
        ids.append(np.array(out["input_ids"], dtype=np.int32))
        masks.append(np.array(out["assistant_masks"], dtype=np.int8))
    return concatenate([Documents(i, np.array([len(i)], dtype=np.int64), m) for i, m in zip(ids, masks)])


def concatenate(parts: list[Documents]) -> Documents:
    if not parts:
        return Documents(np.zeros(0, dtype=np.int32), np.zeros(0, dtype=np.int64))
    masks = None
    if any(part.mask is not None for part in parts):
        masks = np.concatenate([np.ones(len(p.tokens), np.int8) if p.mask is None else p.mask for p in parts])
    return Documents(np.concatenate([p.tokens for p in parts]), np.concatenate([p.lengths for p in parts]), masks)
