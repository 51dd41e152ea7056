"""The prepare stage writes the same cache as before its vectorised rewrite: for a fixed generated corpus, fixed
seeds and every data path (packing with token- and character-mode FIM, PSM and SPM, an eval split; prompt/completion
masks packed and unpacked with truncation; chat-template masks), the Arrow columns — types and values — and the
report hash to digests captured from the per-document implementation (commit 580ca49), in one process and with two
worker processes. At PREPARE_VERSION 2 packed eval splits began to keep their last partial row (padded, not trained
on): compared row by row then, every train split was unchanged and every eval split was the old rows plus that one
row, and those digests were re-captured. code-fim-token, a source directory, also began to hold its eval files out by
path then (jobs.prepare.code_files.held_out), so its digest is a new capture, not a comparison. The unpacked configs
still carry the first capture.

    .venv/bin/python -m pytest tests/unit/test_prepare_identity.py -q
"""

from __future__ import annotations

import hashlib
import json
import random
from pathlib import Path

import pytest
from transformers import AutoTokenizer

from jobs.prepare import documents
from jobs.prepare.stage import build_cache, load_prepared
from launchers.recipe.load import RECIPES_ROOT, resolve

TOKENIZER = RECIPES_ROOT / "assets" / "tokenizer"
WORDS = ["def", "return", "self", "x", "_y", "= 1", "(a, b)", "\n", "    ", "# héllo ✓", "'<fim_prefix>'",
         "<|endoftext|>", "class", ":", "0x1f", "  \t", "λ", "import os"]

# config name → (recipe, overrides) and the digest of (schema + values of every split, report without seconds)
CONFIGS: dict[str, tuple[str, list[str]]] = {
    "code-fim-token": ("full-ft", ["data.format=code", "data.seq_length=128", "data.packing=true",
                                   "data.fim_rate=0.5", "data.fim_spm_rate=0.5", "data.eval_fraction=0.2"]),
    "code-fim-character": ("full-ft", ["data.format=code", "data.seq_length=96", "data.packing=true",
                                       "data.fim_rate=0.7", "data.fim_spm_rate=0.3", "data.fim_mode=character"]),
    "pc-packed": ("lora", ["data.format=prompt_completion", "data.seq_length=64", "data.packing=true"]),
    "pc-unpacked": ("lora", ["data.format=prompt_completion", "data.seq_length=48", "data.packing=false",
                             "data.eval_fraction=0.25"]),
    "pc-fim": ("lora", ["data.format=prompt_completion", "data.seq_length=80", "data.packing=true",
                        "data.fim_rate=0.5", "data.fim_spm_rate=0.5"]),
    "code-unpacked-fim": ("full-ft", ["data.format=code", "data.seq_length=40", "data.packing=false",
                                      "data.fim_rate=0.5", "data.fim_spm_rate=0.5"]),
    "chat": ("lora", ["data.format=alpaca", "data.template=chat", "data.seq_length=64", "data.packing=true"]),
}
DIGESTS = {
    "code-fim-token": "ee6cc37e0229bda95eaa0618c66c93d3242d0519680f25143604ab3fd69dd78f",
    "code-fim-character": "f994c44c29a95ec497f4e5e02a948e207eb65f6177a7deca0c8a3fb5a2b6563b",
    "pc-packed": "9a44b9be5748c52bdac3851b1650bfaa1b31e7cb24ecbb4eb696e657e708be95",
    "pc-unpacked": "8eb2641823a3ef2a5596a1c8a01108a9272f307fe82dbfa5c3333c0dea7a1586",
    "pc-fim": "bfd0abc3f203c5f718311a0b94ae5a10d961172dce116928a5016de8ad24b429",
    "code-unpacked-fim": "52a19ae35b528b753fd705ef3f7acf09365849a02290b5c3d436004f97940b8f",
    "chat": "3862af2fb737025febb200d5785b00904308e88368086dec623006500adcb684",
}


def text(rng: random.Random, words: int) -> str:
    return "".join(rng.choice(WORDS) + rng.choice(["", " ", "\n"]) for _ in range(words))


def corpus(root: Path, config: str) -> Path:
    """A fixed corpus for `config`: a directory of code files, or a .jsonl of rows (some empty, some long)."""
    rng = random.Random(config)
    if config.startswith("code-fim-token"):
        source = root / "src"
        source.mkdir()
        for index in range(40):
            (source / f"m{index:02d}.py").write_text(text(rng, rng.choice([1, 5, 30, 200])))
        return source
    lengths = [0, 1, 3, 20, 80, 400]
    rows = []
    for index in range(50):
        if config.startswith("code"):
            rows.append({"content": text(rng, rng.choice(lengths))})
        elif config == "chat":
            rows.append({"instruction": text(rng, 5), "input": text(rng, rng.choice([0, 3])), "output": text(rng, 9)})
        else:
            rows.append({"prompt": text(rng, rng.choice(lengths)), "completion": text(rng, rng.choice(lengths))})
    source = root / "rows.jsonl"
    source.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return source


def cache_digest(directory: Path) -> str:
    digest = hashlib.sha256()
    for name, split in sorted(load_prepared(directory).items()):
        table = split.data.table
        digest.update(f"{name}\n{table.schema}\n".encode())
        for column in table.column_names:
            digest.update(json.dumps(table.column(column).to_pylist()).encode())
    report = json.loads((directory / "report.json").read_text())
    report.pop("seconds")
    report.pop("heldout_files")  # added after the capture (data.eval_files); empty here
    digest.update(json.dumps(report, sort_keys=True).encode())
    return digest.hexdigest()


@pytest.fixture(scope="module")
def tokenizer() -> object:
    return AutoTokenizer.from_pretrained(str(TOKENIZER))


def build(config: str, root: Path, tokenizer: object, **options: object) -> str:
    recipe_name, overrides = CONFIGS[config]
    source = corpus(root, config)
    recipe = resolve(recipe_name, "tiny-starcoder", [f"data.source={source}", "data.glob=*.py", "training.seed=7",
                                                     *overrides]).recipe
    build_cache(recipe, tokenizer, root / "cache", "identity", **options)
    return cache_digest(root / "cache")


@pytest.mark.parametrize("config", list(CONFIGS))
def test_the_cache_is_the_one_the_per_document_implementation_wrote(config: str, tmp_path: Path,
                                                                     tokenizer: object) -> None:
    assert build(config, tmp_path, tokenizer) == DIGESTS[config]


@pytest.mark.parametrize("config", ["code-fim-token", "code-fim-character", "pc-unpacked"])
def test_two_worker_processes_write_the_same_cache(config: str, tmp_path: Path, tokenizer: object,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(documents, "BATCH", 8)  # many batches, spread over both workers
    assert build(config, tmp_path, tokenizer, processes=2) == DIGESTS[config]
