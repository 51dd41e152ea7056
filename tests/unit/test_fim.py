"""jobs.prepare.fim: PSM/SPM layouts, reproducible draws, exact inversion by strip_fim, sentinel discovery per family."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from tokenizers import Tokenizer
from tokenizers.models import WordLevel
from tokenizers.pre_tokenizers import Whitespace
from transformers import AutoTokenizer, PreTrainedTokenizerFast

from jobs.prepare.fim import FIM_FAMILIES, FimTokens, FimTransform, fim_layout, fim_tokens, strip_fim

TINY_TOKENIZER = Path(__file__).resolve().parents[2] / "recipes" / "assets" / "tokenizer"
TOKENS = FimTokens(prefix=1, middle=2, suffix=3, pad=4)
P, M, S = TOKENS.prefix, TOKENS.middle, TOKENS.suffix
DOC = list(range(10, 30))  # 20 ids, none of them a sentinel
ALPHABET = list("abcdefxyz _-()[]{}:=\n\t\"'#") + list("é✓日本語ß€") + ["🎉", "👍🏽", "e\u0301", "\U0001f468\u200d\U0001f4bb"]


@pytest.fixture(scope="module")
def tokenizer():
    return AutoTokenizer.from_pretrained(TINY_TOKENIZER)


@pytest.fixture(scope="module")
def encode(tokenizer):
    return lambda text: tokenizer.encode(text, add_special_tokens=False, split_special_tokens=True)


def mirrored_boundaries(seed: int, worker: int, length: int) -> tuple[int, int]:
    """The boundaries FimTransform draws for its first document: FIM decision, then two integers, then SPM."""
    rng = np.random.default_rng([seed, worker])
    rng.random()
    start, end = sorted(int(b) for b in rng.integers(0, length + 1, size=2))
    return start, end


def random_docs(rng: np.random.Generator, count: int, max_length: int) -> list[list[int]]:
    return [[], [42]] + [rng.integers(5, 2048, size=int(rng.integers(0, max_length + 1))).tolist()
                         for _ in range(count - 2)]


def random_texts(rng: np.random.Generator, count: int) -> list[str]:
    texts = ["", "x", "héllo ✓ 日本", "emoji 🎉 at the end 👍🏽", 'SENTINEL = "<fim_suffix>"  # a string, not a token']
    while len(texts) < count:
        texts.append("".join(rng.choice(ALPHABET, size=int(rng.integers(0, 60)))))
    return texts


def test_psm_layout_puts_prefix_suffix_then_middle_at_the_drawn_boundaries() -> None:
    start, end = mirrored_boundaries(seed=3, worker=0, length=len(DOC))
    assert 0 < start < end < len(DOC), "choose a seed whose boundaries leave three non-empty pieces"

    out = FimTransform(TOKENS, fim_rate=1.0, spm_rate=0.0, seed=3).apply(DOC)

    assert out == [P, *DOC[:start], S, *DOC[end:], M, *DOC[start:end]]
    assert out.index(S) == 1 + start and out.index(M) == 2 + start + len(DOC) - end


def test_spm_layout_puts_suffix_first_then_prefix_and_middle() -> None:
    start, end = mirrored_boundaries(seed=3, worker=0, length=len(DOC))

    out = FimTransform(TOKENS, fim_rate=1.0, spm_rate=1.0, seed=3).apply(DOC)

    assert out == [P, S, *DOC[end:], M, *DOC[:start], *DOC[start:end]]


def test_character_mode_splits_text_at_the_drawn_character_offsets(encode) -> None:
    text = "def f(x):\n    return x + 1  # ✓ 日本\n"
    start, end = mirrored_boundaries(seed=3, worker=0, length=len(text))

    out = FimTransform(TOKENS, fim_rate=1.0, spm_rate=0.0, seed=3).apply_text(text, encode)

    assert out == [P, *encode(text[:start]), S, *encode(text[end:]), M, *encode(text[start:end])]


def test_fim_rate_zero_is_the_identity(encode) -> None:
    fim = FimTransform(TOKENS, fim_rate=0.0, spm_rate=0.5, seed=0)
    for doc in random_docs(np.random.default_rng(0), 50, 30):
        assert fim.apply(doc) == doc
    for text in random_texts(np.random.default_rng(0), 50):
        assert fim.apply_text(text, encode) == encode(text)


def test_strip_fim_inverts_apply_on_random_documents() -> None:
    fim = FimTransform(TOKENS, fim_rate=0.5, spm_rate=0.5, seed=11)
    rewritten = 0
    for doc in random_docs(np.random.default_rng(1), 600, 40):
        out = fim.apply(doc)
        assert len(out) in (len(doc), len(doc) + 3)
        rewritten += len(out) == len(doc) + 3
        assert strip_fim(out, TOKENS) == doc
    assert 200 < rewritten < 400


def test_strip_fim_inverts_apply_text_with_non_ascii_text(tokenizer, encode) -> None:
    fim = FimTransform(TOKENS, fim_rate=0.9, spm_rate=0.5, seed=12)
    for text in random_texts(np.random.default_rng(2), 500):
        assert tokenizer.decode(strip_fim(fim.apply_text(text, encode), TOKENS)) == text


def test_empirical_fim_and_spm_rates_match_the_requested_ones() -> None:
    fim = FimTransform(TOKENS, fim_rate=0.3, spm_rate=0.6, seed=5)
    doc = list(range(10, 1010))  # long: PSM with an empty prefix (which reads like SPM) is ~0.2% of the rewrites
    outputs = [fim.apply(doc) for _ in range(4000)]
    rewritten = [out for out in outputs if out[0] == P]
    spm = [out for out in rewritten if out[1] == S]
    assert abs(len(rewritten) / 4000 - 0.3) < 0.03
    assert abs(len(spm) / len(rewritten) - 0.6) < 0.03


def test_same_seed_and_worker_replay_the_same_stream_and_workers_differ() -> None:
    docs = random_docs(np.random.default_rng(3), 50, 30)

    def run(seed: int, worker: int) -> list[list[int]]:
        fim = FimTransform(TOKENS, fim_rate=0.5, spm_rate=0.5, seed=seed, worker=worker)
        return [fim.apply(doc) for doc in docs]

    assert run(seed=7, worker=0) == run(seed=7, worker=0)
    assert run(seed=7, worker=1) != run(seed=7, worker=0)
    assert run(seed=8, worker=0) != run(seed=7, worker=0)


def test_batches_laid_out_by_one_gather_match_documents_rewritten_one_by_one() -> None:
    docs = random_docs(np.random.default_rng(5), 300, 40)
    one_by_one = FimTransform(TOKENS, fim_rate=0.5, spm_rate=0.5, seed=7)
    batched = FimTransform(TOKENS, fim_rate=0.5, spm_rate=0.5, seed=7)
    expected = [one_by_one.apply(doc) for doc in docs]

    out: list[list[int]] = []
    for start, stop in ((0, 1), (1, 2), (2, 100), (100, 300)):  # the draws run on across batches
        batch = docs[start:stop]
        lengths = np.array([len(doc) for doc in batch], dtype=np.int64)
        tokens = np.array([token for doc in batch for token in doc], dtype=np.int32)
        draws = batched.draw(lengths)
        laid_out, laid_lengths = fim_layout(tokens, draws.pieces(lengths), draws, TOKENS)
        out += [piece.tolist() for piece in np.split(laid_out, np.cumsum(laid_lengths)[:-1])]

    assert out == expected
    assert sum(doc[:1] == [P] for doc in out) > 100


def test_one_transform_keeps_drawing_new_decisions_for_the_same_document() -> None:
    fim = FimTransform(TOKENS, fim_rate=1.0, spm_rate=0.5, seed=0)
    assert len({tuple(fim.apply(DOC)) for _ in range(20)}) > 10


def test_rates_outside_zero_one_are_rejected() -> None:
    with pytest.raises(ValueError, match="fim_rate"):
        FimTransform(TOKENS, fim_rate=1.5, spm_rate=0.0, seed=0)


def test_fim_tokens_of_the_tiny_tokenizer_are_the_starcoder_sentinels(tokenizer) -> None:
    assert fim_tokens(tokenizer) == FimTokens(prefix=1, middle=2, suffix=3, pad=4)


def word_level_tokenizer(words: list[str]) -> PreTrainedTokenizerFast:
    vocab = {word: i for i, word in enumerate(["[UNK]", "def", "return", *words])}
    backend = Tokenizer(WordLevel(vocab, unk_token="[UNK]"))
    backend.pre_tokenizer = Whitespace()
    return PreTrainedTokenizerFast(tokenizer_object=backend, unk_token="[UNK]")


@pytest.mark.parametrize("family", list(FIM_FAMILIES))
def test_fim_tokens_finds_each_family_in_a_vocabulary(family: str) -> None:
    prefix, middle, suffix, pad = FIM_FAMILIES[family]
    tokenizer = word_level_tokenizer([t for t in (prefix, middle, suffix, pad) if t is not None])
    vocab = tokenizer.get_vocab()

    found = fim_tokens(tokenizer)

    assert found == FimTokens(prefix=vocab[prefix], middle=vocab[middle], suffix=vocab[suffix],
                              pad=None if pad is None else vocab[pad])


def test_deepseek_roles_follow_its_begin_hole_end_layout() -> None:
    prefix, middle, suffix, pad = FIM_FAMILIES["deepseek-coder"]
    assert (prefix, suffix, middle, pad) == ("<｜fim▁begin｜>", "<｜fim▁hole｜>", "<｜fim▁end｜>", None)


def test_a_tokenizer_without_sentinels_is_an_error_not_a_silent_no_op() -> None:
    tokenizer = word_level_tokenizer(["<fim_prefix>", "<fim_middle>"])  # an incomplete set, and unk would map the rest
    assert tokenizer.convert_tokens_to_ids("<fim_suffix>") == tokenizer.unk_token_id

    with pytest.raises(ValueError, match="FIM needs sentinel tokens: .* has none of the StarCoder, Code Llama or "
                                         "DeepSeek-Coder sets"):
        fim_tokens(tokenizer)
