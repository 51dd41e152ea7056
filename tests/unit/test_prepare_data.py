"""The prepare stage on awkward data: a source directory with binaries, non-UTF-8 and vendored files (counted
skips), a document longer than every sequence (split across packed rows, or truncated and counted), sentinel
strings inside code (they stay text), and the cache key (content, not names, decides reuse).

    .venv/bin/python -m pytest tests/unit/test_prepare_data.py -q
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from transformers import AutoTokenizer

from jobs.prepare.data import SourceReport, load_rows
from jobs.prepare.encode import TextEncoder
from jobs.prepare.stage import build_cache, cache_key, load_prepared
from launchers.recipe.load import RECIPES_ROOT, resolve

TOKENIZER = RECIPES_ROOT / "assets" / "tokenizer"


@pytest.fixture(scope="module")
def tokenizer() -> object:
    return AutoTokenizer.from_pretrained(str(TOKENIZER))


def code_tree(root: Path) -> Path:
    (root / "pkg").mkdir(parents=True)
    (root / "pkg" / "ok.py").write_text("def f():\n    return 1\n")
    (root / "pkg" / "also_ok.py").write_text("x = 'héllo ✓'\n")
    (root / "pkg" / "blob.bin").write_bytes(b"\x00\x01\x02binary")
    (root / "pkg" / "latin1.py").write_bytes("caf\xe9 = 1\n".encode("latin-1"))
    (root / "pkg" / "empty.py").write_text("   \n")
    (root / "node_modules" / "dep").mkdir(parents=True)
    (root / "node_modules" / "dep" / "index.js").write_text("module.exports = 1\n")
    (root / "huge.py").write_text("# " + "x" * (1 << 20) + "\n")
    return root


def test_a_source_directory_keeps_code_and_counts_what_it_skips(tmp_path: Path) -> None:
    data = resolve("full-ft", "tiny-starcoder", [f"data.source={code_tree(tmp_path / 'src')}"]).recipe.data
    report = SourceReport()
    rows = load_rows(data.source, data, report)
    assert sorted(rows["content"]) == ["def f():\n    return 1\n", "x = 'héllo ✓'\n"]
    assert dict(report.skipped) == {"binary": 1, "not UTF-8": 1, "empty": 1, "vendored or hidden directory": 1,
                                    "over 1 MB": 1}


def test_a_source_directory_never_reads_outside_itself_or_blocks(tmp_path: Path) -> None:
    """A symlink out of the directory, a FIFO and a symlink loop under it: skipped or ignored, never read."""
    root = code_tree(tmp_path / "src")
    (tmp_path / "secret.py").write_text("TOKEN = 'not for training'\n")
    (root / "leak.py").symlink_to(tmp_path / "secret.py")
    os.mkfifo(root / "pipe.py")
    (root / "loop.py").symlink_to(root / "loop.py")
    data = resolve("full-ft", "tiny-starcoder", [f"data.source={root}"]).recipe.data
    report = SourceReport()
    rows = load_rows(data.source, data, report)
    assert not any("TOKEN" in text for text in rows["content"])
    assert report.skipped["outside the source directory"] == 1


def test_a_document_longer_than_every_sequence_spans_packed_rows(tmp_path: Path, tokenizer: object) -> None:
    source = tmp_path / "long.jsonl"
    source.write_text('{"content": "' + "word " * 3000 + '"}\n{"content": "short"}\n')
    recipe = resolve("full-ft", "tiny-starcoder", [f"data.source={source}", "data.eval_fraction=0"]).recipe
    report = build_cache(recipe, tokenizer, tmp_path / "cache", "k")
    rows = load_prepared(tmp_path / "cache")["train"]
    split = report.splits["train"]
    assert split.documents == 2 and split.sequences == len(rows) > 1
    assert all(len(row) == recipe.data.seq_length for row in rows["input_ids"])
    assert split.tokens + split.dropped_tail_tokens == sum(len(r) for r in rows["input_ids"]) + split.dropped_tail_tokens


def test_without_packing_a_long_document_is_truncated_and_counted(tmp_path: Path, tokenizer: object) -> None:
    source = tmp_path / "long.jsonl"
    source.write_text('{"prompt": "p", "completion": "' + "word " * 3000 + '"}\n')
    recipe = resolve("lora", "tiny-starcoder", [f"data.source={source}", "data.eval_fraction=0",
                                                "data.format=prompt_completion", "data.packing=false"]).recipe
    report = build_cache(recipe, tokenizer, tmp_path / "cache", "k")
    assert report.splits["train"].truncated == 1
    assert len(load_prepared(tmp_path / "cache")["train"][0]["input_ids"]) == recipe.data.seq_length


def test_sentinel_strings_in_code_stay_text(tokenizer: object) -> None:
    tokens, _ = TextEncoder(tokenizer.backend_tokenizer.to_str()).flat(  # type: ignore[attr-defined]
        ["a = '<fim_prefix><|endoftext|>'"])
    ids = tokens.tolist()
    special = {tokenizer.convert_tokens_to_ids(t) for t in ("<fim_prefix>", "<|endoftext|>")}  # type: ignore[attr-defined]
    assert not special & set(ids)
    assert tokenizer.decode(ids) == "a = '<fim_prefix><|endoftext|>'"  # type: ignore[attr-defined]


def test_the_cache_key_follows_content_not_names(tmp_path: Path, tokenizer: object) -> None:
    first, second = tmp_path / "a.jsonl", tmp_path / "b.jsonl"
    first.write_text('{"content": "same"}\n')
    second.write_text('{"content": "same"}\n')

    def key(path: Path, *overrides: str) -> str:
        recipe = resolve("full-ft", "tiny-starcoder", [f"data.source={path}", *overrides]).recipe
        return cache_key(recipe.data, tokenizer, recipe.training.seed)

    assert key(first) == key(second)  # the same data under another name reuses the cache
    assert key(first) != key(first, "data.seq_length=128")
    assert key(first) != key(first, "data.fim_rate=0.5")
    before = key(first)
    first.write_text('{"content": "changed"}\n')
    assert key(first) != before
