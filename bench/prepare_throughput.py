"""Data preparation throughput: our prepare stage vs raw tokenization vs a seed-style loop, and what the cache saves.

    .venv/bin/python bench/prepare_throughput.py                 # ~50 MB of Python source, median of 3
    .venv/bin/python bench/prepare_throughput.py --mb 20 --repeats 1

Corpus: the Python standard library's .py files, then the venv's site-packages sources until --mb is reached
(files over 1 MB skipped, as the prepare stage does), every row tokenized by the project's tiny 2k-vocab BPE.
Each measurement runs in a fresh process with RAYON_NUM_THREADS set (the tokenizer's thread pool), so 1 and 2
threads are compared on equal terms. Rows:

  raw     batched tokenization only, ids without offsets, straight through the Rust tokenizer (the floor)
  offsets the same with character offsets computed, as a transformers tokenizer call does
  seed    a loop in the style of the seed's ConstantLengthDataset: fill a character buffer, tokenize it (through
          transformers, as the seed did), token-level FIM per document, join with EOS, cut constant-length chunks
  ours    jobs.prepare.stage.build_cache: read files, tokenize, FIM, pack, write the Arrow cache

Prints a table (tokens/s, ratios to raw and to seed, 1 vs 2 threads) and the tokenizer CPU-seconds a 16-rank,
3-epoch run with one requeue spends in our design (one pass, cached) vs the seed's (every rank re-tokenizes every
epoch and again after the restart).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import sysconfig
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TOKENIZER = ROOT / "recipes" / "assets" / "tokenizer"
SEQ_LENGTH = 2048
FIM_RATE = 0.5


def build_corpus(target: Path, megabytes: float) -> tuple[int, int]:
    """Symlink source files into `target` (flat) until `megabytes`; returns (files, bytes)."""
    roots = [Path(sysconfig.get_paths()["stdlib"]), Path(sysconfig.get_paths()["purelib"])]
    budget, files, size = int(megabytes * 1e6), 0, 0
    for root in roots:
        for path in sorted(root.rglob("*.py")):
            if "site-packages" in path.parts and root.name != "site-packages":
                continue
            try:
                length = path.stat().st_size
            except OSError:
                continue
            if length == 0 or length > 1 << 20:
                continue
            (target / f"{files:06d}_{path.name}").symlink_to(path)
            files, size = files + 1, size + length
            if size >= budget:
                return files, size
    return files, size


def measure(mode: str, corpus: Path, threads: int) -> dict[str, float]:
    """One measurement in a fresh process (so RAYON_NUM_THREADS applies)."""
    env = {**os.environ, "RAYON_NUM_THREADS": str(threads), "TOKENIZERS_PARALLELISM": "true", "HF_HUB_OFFLINE": "1"}
    out = subprocess.run([sys.executable, __file__, "--child", mode, str(corpus)], env=env, capture_output=True,
                         text=True, check=True, timeout=3600)
    return json.loads(out.stdout.strip().splitlines()[-1])


def child(mode: str, corpus: Path) -> dict[str, float]:
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(TOKENIZER))
    if mode == "ours":
        return run_ours(corpus, tokenizer)
    texts = [p.read_text(encoding="utf-8", errors="replace") for p in sorted(corpus.iterdir())]
    started = time.perf_counter()
    cpu = time.process_time()
    tokens = run_seed_loop(texts, tokenizer) if mode == "seed" else run_raw(texts, tokenizer, mode == "offsets")
    return {"tokens": tokens, "seconds": time.perf_counter() - started, "cpu": time.process_time() - cpu}


def run_raw(texts: list[str], tokenizer: object, offsets: bool = False) -> int:
    """The floor: the Rust tokenizer's batch encoding, ids only (no character offsets, as the prepare stage);
    with `offsets`, the batch encoding a transformers tokenizer call runs (offsets computed too)."""
    backend = tokenizer.backend_tokenizer  # type: ignore[attr-defined]
    encode = backend.encode_batch if offsets else backend.encode_batch_fast
    total = 0
    for start in range(0, len(texts), 1000):
        total += sum(len(e.ids) for e in encode(texts[start:start + 1000], add_special_tokens=False))
    return total


def run_seed_loop(texts: list[str], tokenizer: object) -> int:
    """The seed's ConstantLengthDataset, reduced to its work: a character buffer of ~1024 sequences, tokenized,
    FIM per document at token level, joined with EOS, cut into SEQ_LENGTH chunks."""
    from jobs.prepare.fim import FimTransform, fim_tokens

    fim = FimTransform(fim_tokens(tokenizer), FIM_RATE, 0.5, seed=0)
    eos = tokenizer.eos_token_id  # type: ignore[attr-defined]
    max_buffer = SEQ_LENGTH * 3.6 * 1024  # the seed's chars_per_token × num_of_sequences
    total, buffer, length, index = 0, [], 0, 0
    while index < len(texts):
        while length < max_buffer and index < len(texts):
            buffer.append(texts[index])
            length += len(texts[index])
            index += 1
        stream: list[int] = []
        for ids in tokenizer(buffer, truncation=False)["input_ids"]:  # type: ignore[operator]
            stream.extend(fim.apply(ids) + [eos])
        chunks = [stream[i:i + SEQ_LENGTH] for i in range(0, len(stream), SEQ_LENGTH)]
        total += sum(len(c) for c in chunks if len(c) == SEQ_LENGTH)
        buffer, length = [], 0
    return total


def run_ours(corpus: Path, tokenizer: object) -> dict[str, float]:
    from jobs.prepare.stage import build_cache
    from launchers.recipe.load import resolve

    recipe = resolve("full-ft", "tiny-starcoder", [
        f"data.source={corpus}", "data.format=code", f"data.seq_length={SEQ_LENGTH}", "data.packing=true",
        f"data.fim_rate={FIM_RATE}", "data.fim_spm_rate=0.5", "data.eval_fraction=0", "data.glob=*.py",
        "model.config=" + str(ROOT / "recipes" / "tiny-starcoder" / "config.json"),
    ]).recipe
    with tempfile.TemporaryDirectory() as out:
        started = time.perf_counter()
        cpu = time.process_time()
        report = build_cache(recipe, tokenizer, Path(out) / "cache", "bench")
        seconds, cpu = time.perf_counter() - started, time.process_time() - cpu
    split = report.splits["train"]
    return {"tokens": split.tokens + split.dropped_tail_tokens, "seconds": seconds, "cpu": cpu}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mb", type=float, default=50.0, help="corpus size in MB (default 50)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--child", nargs=2, metavar=("MODE", "CORPUS"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child(args.child[0], Path(args.child[1]))))
        return
    with tempfile.TemporaryDirectory() as tmp:
        corpus = Path(tmp)
        files, size = build_corpus(corpus, args.mb)
        print(f"corpus: {files} files, {size / 1e6:.1f} MB of Python source; tokenizer {TOKENIZER.name} "
              f"(2048 tokens); seq {SEQ_LENGTH}; FIM rate {FIM_RATE}; median of {args.repeats}\n")
        results: dict[tuple[str, int], dict[str, float]] = {}
        for threads in (1, 2):
            for mode in ("raw", "offsets", "seed", "ours"):
                runs = [measure(mode, corpus, threads) for _ in range(args.repeats)]
                seconds = statistics.median(r["seconds"] for r in runs)
                results[mode, threads] = {"tokens": runs[0]["tokens"], "seconds": seconds,
                                          "cpu": statistics.median(r["cpu"] for r in runs)}
        print(f"{'mode':7} {'threads':>7} {'Mtokens':>8} {'seconds':>8} {'Mtok/s':>7} {'vs raw':>7} {'vs seed':>8}")
        for (mode, threads), r in results.items():
            rate = r["tokens"] / r["seconds"]
            raw = results["raw", threads]["tokens"] / results["raw", threads]["seconds"]
            seed = results["seed", threads]["tokens"] / results["seed", threads]["seconds"]
            print(f"{mode:7} {threads:>7} {r['tokens'] / 1e6:>8.2f} {r['seconds']:>8.2f} {rate / 1e6:>7.2f} "
                  f"{rate / raw:>7.2f} {rate / seed:>8.2f}")
        one, two = results["ours", 1]["seconds"], results["ours", 2]["seconds"]
        parallel = min(1.0, max(0.0, 2 * (1 - two / one)))  # Amdahl: t2 = t1 (1 - p + p/2)
        print(f"\nours: 2 threads {one / two:.2f}x faster than 1; parallel fraction {parallel:.2f}; "
              f"projected 32-core node: {1 / (1 - parallel + parallel / 32):.1f}x")
        tokenize_cpu = results["raw", 1]["cpu"]
        seed_passes = 16 * (3 + 1.5)  # 16 ranks × 3 epochs, + a restart mid-run re-tokenizing half the epochs
        print(f"tokenizer CPU-seconds for this corpus, 16 ranks × 3 epochs, one requeue: ours 1 pass = "
              f"{tokenize_cpu:.0f} s; seed-style {seed_passes:.0f} passes = {tokenize_cpu * seed_passes:.0f} s "
              f"({seed_passes:.0f}x)")


if __name__ == "__main__":
    main()
