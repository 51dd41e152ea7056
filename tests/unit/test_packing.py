"""jobs.prepare.packing: rows of exactly seq_length, every token once and in order, segments at document starts, masks that
follow their tokens — and tiny Llama / GPTBigCode models that see packed documents exactly as they see them alone."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from transformers import AutoModelForCausalLM, GPTBigCodeConfig, LlamaConfig

from jobs.prepare.packing import PackedRow, PackStats, pack, position_ids

EOS, PAD = 0, 5


def eos_joined(docs: list[list[int]]) -> list[int]:
    return [token for doc in docs for token in [*doc, EOS]]


def expected_segments(row: list[int]) -> list[int]:
    """Reference segmentation, token by token: a segment ends after each EOS (so trailing padding is one segment)."""
    lengths, current = [], 0
    for token in row:
        current += 1
        if token == EOS:
            lengths, current = [*lengths, current], 0
    return lengths + ([current] if current else [])


def test_a_hand_packed_example_drops_or_pads_the_tail() -> None:
    docs = [[11, 12, 13], [21, 22, 23, 24, 25, 26], [31]]

    rows, stats = pack(docs, seq_length=8, eos_id=EOS)
    padded, padded_stats = pack(docs, seq_length=8, eos_id=EOS, drop_tail=False, pad_id=PAD)

    assert rows == [PackedRow(input_ids=[11, 12, 13, 0, 21, 22, 23, 24], seq_lengths=[4, 4], loss_mask=[1] * 8)]
    assert stats == PackStats(documents=3, tokens_in=10, tokens_packed=8, sequences=1, dropped_tail_tokens=5,
                              padding_tokens=0)
    assert padded[1] == PackedRow(input_ids=[25, 26, 0, 31, 0, PAD, PAD, PAD], seq_lengths=[3, 2, 3],
                                  loss_mask=[1, 1, 1, 1, 1, 0, 0, 0])
    assert padded_stats.padding_tokens == 3 and padded_stats.tokens_packed == 13
    assert padded_stats.padding_fraction == pytest.approx(3 / 16)


def test_document_masks_follow_their_tokens_and_eos_takes_the_last_tokens_value() -> None:
    docs = [([11, 12, 13], [0, 0, 1]), ([21, 22], [1, 0]), ([], []), [31, 32]]

    rows, _ = pack(docs, seq_length=11, eos_id=EOS)

    assert rows[0].input_ids == [11, 12, 13, 0, 21, 22, 0, 0, 31, 32, 0]
    assert rows[0].loss_mask == [0, 0, 1, 1, 1, 0, 0, 1, 1, 1, 1]
    assert rows[0].seq_lengths == [4, 3, 1, 3]


def test_position_ids_restart_at_every_segment() -> None:
    assert position_ids([3, 1, 2]) == [0, 1, 2, 0, 0, 1]
    assert position_ids([]) == []


def test_no_documents_give_no_rows() -> None:
    rows, stats = pack([], seq_length=4, eos_id=EOS, drop_tail=False, pad_id=PAD)
    assert rows == [] and stats == PackStats(0, 0, 0, 0, 0, 0) and stats.padding_fraction == 0.0


def test_padding_needs_a_pad_id_and_masks_must_match_their_documents() -> None:
    with pytest.raises(ValueError, match="pad_id"):
        pack([[1, 2]], seq_length=4, eos_id=EOS, drop_tail=False)
    with pytest.raises(ValueError, match="mask must match"):
        pack([([11, 12], [1])], seq_length=4, eos_id=EOS)


def test_random_packings_keep_every_token_once_in_order_with_segments_and_masks() -> None:
    rng = np.random.default_rng(0)
    for case in range(300):
        seq_length = int(rng.integers(1, 33))
        docs = [rng.integers(6, 2048, size=int(rng.integers(0, 3 * seq_length + 1))).tolist()
                for _ in range(int(rng.integers(0, 9)))]
        masks = [rng.integers(0, 2, size=len(doc)).tolist() if rng.random() < 0.5 else None for doc in docs]
        drop_tail = bool(case % 2)
        inputs = [doc if mask is None else (doc, mask) for doc, mask in zip(docs, masks)]

        rows, stats = pack(inputs, seq_length, EOS, drop_tail=drop_tail, pad_id=PAD)

        stream = eos_joined(docs)
        mask_stream = [m for doc, mask in zip(docs, masks)
                       for m in [*(mask or [1] * len(doc)), (mask or [1])[-1]]]
        packed = [token for row in rows for token in row.input_ids]
        packed_mask = [m for row in rows for m in row.loss_mask]
        kept = len(stream) - stats.dropped_tail_tokens
        assert packed[:kept] == stream[:kept] and packed[kept:] == [PAD] * stats.padding_tokens
        assert packed_mask[:kept] == mask_stream[:kept] and packed_mask[kept:] == [0] * stats.padding_tokens
        for row in rows:
            assert len(row.input_ids) == len(row.loss_mask) == sum(row.seq_lengths) == seq_length
            assert row.seq_lengths == expected_segments(row.input_ids)
        assert stats.documents == len(docs) and stats.tokens_in == sum(map(len, docs))
        assert stats.tokens_in + stats.documents == stats.tokens_packed + stats.dropped_tail_tokens
        assert stats.sequences == len(rows) and stats.dropped_tail_tokens < seq_length
        assert stats.padding_tokens < seq_length
        if drop_tail:
            assert stats.padding_tokens == 0
        else:
            assert stats.dropped_tail_tokens == 0
            assert stats.tokens_packed + stats.padding_tokens == len(rows) * seq_length


# --- packed rows through real architectures (padding-free: position_ids, no attention_mask) ---------------------------

CONFIGS = {
    "llama": LlamaConfig(vocab_size=2048, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256),
    "gpt_bigcode": GPTBigCodeConfig(vocab_size=2048, n_embd=64, n_layer=2, n_head=4, n_positions=256,
                                    multi_query=True, bos_token_id=EOS, eos_token_id=EOS),
}
DOCS = [[101, 102, 103, 104, 105], [201, 202, 203, 204, 205, 206, 207, 208, 209], [301, 302, 303, 304, 305, 306]]


@pytest.fixture(scope="module", params=list(CONFIGS))
def model(request):
    torch.manual_seed(0)
    return AutoModelForCausalLM.from_config(CONFIGS[request.param], attn_implementation="sdpa").eval()


def packed_logits(model, **forward_kwargs) -> tuple[torch.Tensor, list[int]]:
    rows, stats = pack(DOCS, seq_length=len(eos_joined(DOCS)), eos_id=EOS)
    assert stats.sequences == 1 and rows[0].seq_lengths == [6, 10, 7]
    input_ids = torch.tensor([rows[0].input_ids])
    positions = torch.tensor([position_ids(rows[0].seq_lengths)])
    forward_kwargs = {name: value(input_ids) if callable(value) else value for name, value in forward_kwargs.items()}
    with torch.no_grad():
        logits = model(input_ids=input_ids, position_ids=positions, **forward_kwargs).logits[0]
    return logits, rows[0].seq_lengths


def alone_logits(model, doc: list[int]) -> torch.Tensor:
    with torch.no_grad():
        return model(input_ids=torch.tensor([[*doc, EOS]]), use_cache=False).logits[0]


def test_packed_documents_see_only_themselves_without_a_cache(model) -> None:
    logits, lengths = packed_logits(model, use_cache=False)
    starts = np.cumsum([0, *lengths])
    for doc, start, end in zip(DOCS, starts, starts[1:]):
        torch.testing.assert_close(logits[start:end], alone_logits(model, doc), atol=1e-5, rtol=0)


@pytest.mark.parametrize("forward_kwargs", [
    pytest.param({"use_cache": True}, id="use_cache=True"),
    pytest.param({}, id="use_cache-omitted"),  # falls back to config.use_cache, True for both architectures
    pytest.param({"use_cache": False, "attention_mask": torch.ones_like}, id="attention_mask-of-ones"),
])
def test_documents_attend_across_boundaries_with_a_cache_or_an_attention_mask(model, forward_kwargs) -> None:
    """transformers derives the per-document mask from position_ids only with no cache and no 2D attention_mask
    (TRL's padding-free batches pass use_cache=False and no mask); otherwise the mask is plain causal and the later
    documents see the earlier ones."""
    logits, lengths = packed_logits(model, **forward_kwargs)
    middle = slice(lengths[0], lengths[0] + lengths[1])
    assert (logits[middle] - alone_logits(model, DOCS[1])).abs().max() > 1e-3
