"""Held-out loss and perplexity of a causal LM on prepared rows (the prepare stage's eval split).

    from jobs.eval.heldout import heldout_loss
    result = heldout_loss(model, prepared["eval"], batch_size=8)   # HeldoutLoss(loss=2.31, tokens=51200)
    result.perplexity                                               # exp(loss)

The loss is the mean over every label token (labels != -100), summed across batches — not a mean of batch means —
so it does not depend on the batch size. Packed rows (with `seq_lengths`) are split back into their documents first,
so no token attends across a document boundary, as in training.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import torch

IGNORE = -100


@dataclass(frozen=True)
class HeldoutLoss:
    loss: float
    tokens: int

    @property
    def perplexity(self) -> float:
        return math.exp(min(self.loss, 700.0))


def documents(rows: Any) -> Iterator[tuple[list[int], list[int]]]:
    """(input_ids, labels) per document: packed rows are cut at their seq_lengths."""
    packed = "seq_lengths" in rows.column_names
    for row in rows:
        ids, labels = row["input_ids"], row["labels"]
        if not packed:
            yield ids, labels
            continue
        start = 0
        for length in row["seq_lengths"]:
            yield ids[start:start + length], labels[start:start + length]
            start += length


@torch.no_grad()
def heldout_loss(model: Any, rows: Any, batch_size: int = 8) -> HeldoutLoss:
    model.eval()
    device = next(model.parameters()).device
    total, count = 0.0, 0
    batch: list[tuple[list[int], list[int]]] = []
    for document in documents(rows):
        if len(document[0]) > 1:
            batch.append(document)
        if len(batch) == batch_size:
            total, count = _add_batch(model, batch, device, total, count)
            batch = []
    if batch:
        total, count = _add_batch(model, batch, device, total, count)
    if count == 0:
        raise ValueError("held-out loss: the eval split has no label tokens")
    return HeldoutLoss(total / count, count)


def _add_batch(model: Any, batch: Sequence[tuple[list[int], list[int]]], device: torch.device, total: float,
               count: int) -> tuple[float, int]:
    width = max(len(ids) for ids, _ in batch)
    input_ids = torch.zeros((len(batch), width), dtype=torch.long)
    labels = torch.full((len(batch), width), IGNORE, dtype=torch.long)
    mask = torch.zeros((len(batch), width), dtype=torch.long)
    for row, (ids, target) in enumerate(batch):
        input_ids[row, :len(ids)] = torch.tensor(ids)
        labels[row, :len(target)] = torch.tensor(target)
        mask[row, :len(ids)] = 1
    logits = model(input_ids=input_ids.to(device), attention_mask=mask.to(device), use_cache=False).logits.float()
    shifted = labels[:, 1:].to(device)
    losses = torch.nn.functional.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]), shifted.reshape(-1),
                                               ignore_index=IGNORE, reduction="sum")
    return total + float(losses), count + int((shifted != IGNORE).sum())
