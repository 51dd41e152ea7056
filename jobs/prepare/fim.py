"""Fill-in-the-middle (FIM) rewriting of documents, one at a time or a batch of flat arrays, applied before packing.

With probability ``fim_rate`` a document is cut at two uniform boundaries into prefix / middle / suffix and laid out
so the model learns to write the middle last (Bavarian et al. 2022, as in StarCoder's training code):

    PSM:  <P> prefix <S> suffix <M> middle
    SPM:  <P> <S> suffix <M> prefix middle        (with probability ``spm_rate``; the paper's "variant 2")

    tokens = fim_tokens(tokenizer)                          # sentinel ids; ValueError when the tokenizer has none
    fim = FimTransform(tokens, fim_rate=0.5, spm_rate=0.5, seed=recipe_seed, worker=worker_index)
    ids = fim.apply(ids)                                    # token mode: boundaries between token ids
    ids = fim.apply_text(text, encode)                      # character mode: boundaries between characters
    draws = fim.draw(lengths)                               # many documents: the decisions, then
    tokens, lengths = fim_layout(tokens, draws.pieces(lengths), draws, fim.tokens)   # one numpy gather

One numpy Generator per transform, seeded once from (seed, worker): every document consumes the next draws in a
fixed order (FIM or not, then the two boundaries, then SPM or not), so a stream of documents is rewritten the same way
on every run, one by one or a batch at a time, and two workers with the same seed never make the same decisions.
Documents must not contain the sentinel ids themselves (a tokenizer reads "<fim_prefix>" in source text as the
sentinel unless told split_special_tokens=True), or the model learns from fake sentinels and `strip_fim` cannot find
the pieces.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

# family → sentinel token strings (prefix, middle, suffix, pad); the first family fully in the vocabulary wins.
FIM_FAMILIES: dict[str, tuple[str, str, str, str | None]] = {
    "starcoder": ("<fim_prefix>", "<fim_middle>", "<fim_suffix>", "<fim_pad>"),
    # Code Llama ids 32007 <PRE>, 32009 <MID>, 32008 <SUF>, 32010 <EOT> (end of infill); the pieces carry the
    # SentencePiece space marker "▁" (U+2581).
    "codellama": ("▁<PRE>", "▁<MID>", "▁<SUF>", "▁<EOT>"),
    # DeepSeek-Coder writes <｜fim▁begin｜>prefix<｜fim▁hole｜>suffix<｜fim▁end｜>middle: begin plays prefix, hole
    # plays suffix, end plays middle. Full-width bars (U+FF5C) and "▁" (U+2581); no pad sentinel.
    "deepseek-coder": ("<｜fim▁begin｜>", "<｜fim▁end｜>", "<｜fim▁hole｜>", None),
}
FAMILY_NAMES = {"starcoder": "StarCoder", "codellama": "Code Llama", "deepseek-coder": "DeepSeek-Coder"}


@dataclass(frozen=True)
class FimTokens:
    prefix: int
    middle: int
    suffix: int
    pad: int | None


def fim_tokens(tokenizer: Any) -> FimTokens:
    """Sentinel ids of the first family whose tokens are all single tokens of `tokenizer` (a transformers tokenizer).

    Membership is checked in the vocabulary itself: convert_tokens_to_ids answers the unk id for unknown strings.
    """
    vocab = tokenizer.get_vocab()
    for prefix, middle, suffix, pad in FIM_FAMILIES.values():
        if all(token in vocab for token in (prefix, middle, suffix, pad) if token is not None):
            return FimTokens(prefix=vocab[prefix], middle=vocab[middle], suffix=vocab[suffix],
                             pad=None if pad is None else vocab[pad])
    sets = "; ".join(f"{FAMILY_NAMES[family]}: {' '.join(t for t in tokens if t)}"
                     for family, tokens in FIM_FAMILIES.items())
    raise ValueError(
        f"FIM needs sentinel tokens: {tokenizer.name_or_path or type(tokenizer).__name__} has none of the StarCoder, "
        f"Code Llama or DeepSeek-Coder sets ({sets}); set data.fim_rate=0 or use a FIM-trained tokenizer"
    )


class FimTransform:
    """Rewrites documents in PSM/SPM form with a reproducible random stream (see the module docstring)."""

    def __init__(self, tokens: FimTokens, fim_rate: float, spm_rate: float, seed: int, worker: int = 0) -> None:
        for name, rate in (("fim_rate", fim_rate), ("spm_rate", spm_rate)):
            if not 0.0 <= rate <= 1.0:
                raise ValueError(f"{name} must be in [0, 1], got {rate}")
        self.tokens = tokens
        self.fim_rate = fim_rate
        self.spm_rate = spm_rate
        self.rng = np.random.default_rng([seed, worker])

    def apply(self, ids: list[int]) -> list[int]:
        """`ids` rewritten (3 tokens longer) with probability fim_rate, else a copy of `ids`."""
        draws = self.draw([len(ids)])
        if not draws.fim[0]:
            return list(ids)
        start, end = int(draws.start[0]), int(draws.end[0])
        return self._layout(ids[:start], ids[start:end], ids[end:], bool(draws.spm[0]))

    def apply_text(self, text: str, encode: Callable[[str], list[int]]) -> list[int]:
        """Like `apply`, with boundaries between characters; each piece is encoded on its own by `encode`.

        `encode` must add no special tokens and must not read sentinel strings in the text as sentinels:
        ``lambda s: tok.encode(s, add_special_tokens=False, split_special_tokens=True)``.
        """
        draws = self.draw([len(text)])
        if not draws.fim[0]:
            return encode(text)
        start, end = int(draws.start[0]), int(draws.end[0])
        return self._layout(encode(text[:start]), encode(text[start:end]), encode(text[end:]), bool(draws.spm[0]))

    def draw(self, lengths: Sequence[int] | np.ndarray) -> FimDraws:
        """The decisions for documents of these lengths (tokens, or characters in character mode), in order."""
        count = len(lengths)
        fim, spm = np.zeros(count, dtype=bool), np.zeros(count, dtype=bool)
        start, end = np.zeros(count, dtype=np.int64), np.zeros(count, dtype=np.int64)
        for index, length in enumerate(lengths):  # one Python step per document: the draws are sequential
            if self._draw(self.fim_rate):
                fim[index] = True
                start[index], end[index] = self._boundaries(int(length))
                spm[index] = self._draw(self.spm_rate)
        return FimDraws(fim=fim, start=start, end=end, spm=spm)

    def _draw(self, rate: float) -> bool:
        return bool(self.rng.random() < rate)

    def _boundaries(self, length: int) -> tuple[int, int]:
        start, end = sorted(int(b) for b in self.rng.integers(0, length + 1, size=2))
        return start, end

    def _layout(self, prefix: Sequence[int], middle: Sequence[int], suffix: Sequence[int], spm: bool) -> list[int]:
        t = self.tokens
        if spm:
            return [t.prefix, t.suffix, *suffix, t.middle, *prefix, *middle]
        return [t.prefix, *prefix, t.suffix, *suffix, t.middle, *middle]


@dataclass
class FimDraws:
    """Per document: rewritten or not, the two boundaries (0, 0 when not), SPM or PSM."""

    fim: np.ndarray
    start: np.ndarray
    end: np.ndarray
    spm: np.ndarray

    def pieces(self, lengths: np.ndarray) -> np.ndarray:
        """(documents, 3) lengths of prefix, middle, suffix of documents of `lengths` tokens (the whole document
        is the prefix of one left as it is)."""
        start = np.where(self.fim, self.start, lengths)
        end = np.where(self.fim, self.end, lengths)
        return np.stack([start, end - start, lengths - end], axis=1)


def fim_layout(tokens: np.ndarray, pieces: np.ndarray, draws: FimDraws, sentinels: FimTokens
               ) -> tuple[np.ndarray, np.ndarray]:
    """(tokens, lengths) of documents laid out as `FimTransform.apply` does, in one gather.

    `tokens` holds each document as its prefix, middle and suffix one after the other, `pieces` their lengths;
    a document that draws no FIM is copied as it is.
    """
    a, b, c = pieces[:, 0], pieces[:, 1], pieces[:, 2]
    sizes = a + b + c
    prefix = np.cumsum(sizes) - sizes  # where each document's prefix, middle and suffix start in `tokens`
    middle, suffix = prefix + a, prefix + a + b
    p_at, s_at, m_at = len(tokens), len(tokens) + 1, len(tokens) + 2  # the sentinels, appended to `tokens`
    source = np.concatenate([tokens, np.array([sentinels.prefix, sentinels.suffix, sentinels.middle],
                                              dtype=tokens.dtype)])
    one, none = np.ones_like(a), np.zeros_like(a)
    # six spans (where in `source`, how long) per document, in output order
    psm = ((p_at, one), (prefix, a), (s_at, one), (suffix, c), (m_at, one), (middle, b))
    spm = ((p_at, one), (s_at, one), (suffix, c), (m_at, one), (prefix, a), (middle, b))
    plain = ((prefix, sizes), (0, none), (0, none), (0, none), (0, none), (0, none))
    chosen = [[np.where(draws.fim, np.where(draws.spm, s[i], p[i]), n[i]) for p, s, n in zip(psm, spm, plain)]
              for i in (0, 1)]
    starts, spans = np.stack(chosen[0], axis=1).ravel(), np.stack(chosen[1], axis=1)
    lengths = spans.ravel()
    shift = np.repeat(starts - (np.cumsum(lengths) - lengths), lengths)  # source index minus output index
    return source[shift + np.arange(len(shift))], spans.sum(axis=1)


def strip_fim(ids: list[int], tokens: FimTokens) -> list[int]:
    """The document behind a PSM or SPM sequence (prefix + middle + suffix); any other sequence comes back as is."""
    if len(ids) < 3 or ids[0] != tokens.prefix:
        return list(ids)
    if ids[1] == tokens.suffix:  # SPM: <P> <S> suffix <M> prefix+middle (PSM with an empty prefix reads the same)
        m = ids.index(tokens.middle, 2)
        return [*ids[m + 1:], *ids[2:m]]
    s = ids.index(tokens.suffix, 1)  # PSM: <P> prefix <S> suffix <M> middle
    m = ids.index(tokens.middle, s + 1)
    return [*ids[1:s], *ids[m + 1:], *ids[s + 1:m]]
