"""Data preparation throughput: our prepare stage vs raw tokenization vs a seed-style loop, and what the cache saves.

    .venv/bin/python bench/prepare_throughput.py                 # ~50 MB of Python source, 3 rounds
    .venv/bin/python bench/prepare_throughput.py --mb 20 --repeats 3

Corpus: the Python standard library's .py files, then the venv's site-packages sources until --mb is reached
(files over 1 MB skipped, as the prepare stage does), copied into a temporary directory and tokenized by the
project's tiny 2k-vocab BPE. Every measurement runs in a fresh process with its threads pinned (RAYON_NUM_THREADS
for the tokenizer, OMP/MKL_NUM_THREADS, torch's if imported), so 1 and 2 threads compare on equal terms. Modes:

  raw     batched tokenization only, ids without offsets, straight through the Rust tokenizer (the floor)
  offsets the same with character offsets computed, as a transformers tokenizer call does
  seed    a loop in the style of the seed's ConstantLengthDataset: fill a character buffer, tokenize it (through
          transformers, as the seed did), token-level FIM per document, join with EOS, cut constant-length chunks
  ours    jobs.prepare.stage.build_cache: read files, tokenize, FIM, pack, write the Arrow cache (P processes of
          one tokenizer thread each for the process curve)

Every ratio comes from pairs run back to back (mode, then raw; the order switched every round), as raw's seconds
over the mode's seconds on the same corpus (and raw's CPU-seconds over the mode's, its worker processes included:
the work, less sensitive to a shared machine); the median of the rounds is printed with its min–max. The work is
counted: bytes of source text and tokens each mode produced (ours: after FIM and EOS, packed or dropped tail).
Last, the tokenizer CPU-seconds a 16-rank, 3-epoch run with one requeue spends in our design (one pass, cached)
vs the seed's (every rank re-tokenizes every epoch and again after the restart).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
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
THREAD_VARIABLES = ("RAYON_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")


def build_corpus(target: Path, megabytes: float) -> tuple[int, int]:
    """Copy source files into `target` (flat) until `megabytes`; returns (files, bytes). Copies, not symlinks: the
    prepare stage skips links that lead out of the source directory."""
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
            shutil.copyfile(path, target / f"{files:06d}_{path.name}")
            files, size = files + 1, size + length
            if size >= budget:
                return files, size
    return files, size


def cpu_seconds() -> float:
    """User + system CPU-seconds of this process and its finished children (ours' worker processes)."""
    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def measure(mode: str, corpus: Path, threads: int, processes: int = 1) -> dict[str, float]:
    """One measurement in a fresh process, its threads pinned."""
    env = {**os.environ, **dict.fromkeys(THREAD_VARIABLES, str(threads)), "TOKENIZERS_PARALLELISM": "true",
           "HF_HUB_OFFLINE": "1"}
    out = subprocess.run([sys.executable, __file__, "--child", f"{mode}:{processes}", str(corpus)], env=env,
                         capture_output=True, text=True, check=True, timeout=3600)
    return json.loads(out.stdout.strip().splitlines()[-1])


def child(mode: str, processes: int, corpus: Path) -> dict[str, float]:
    from transformers import AutoTokenizer

    if "torch" in sys.modules:
        import torch

        torch.set_num_threads(int(os.environ["RAYON_NUM_THREADS"]))
    tokenizer = AutoTokenizer.from_pretrained(str(TOKENIZER))
    if mode == "ours":
        return run_ours(corpus, tokenizer, processes)
    texts = [p.read_text(encoding="utf-8", errors="replace") for p in sorted(corpus.iterdir())]
    started = time.perf_counter()
    cpu = cpu_seconds()
    tokens = run_seed_loop(texts, tokenizer) if mode == "seed" else run_raw(texts, tokenizer, mode == "offsets")
    return {"tokens": tokens, "seconds": time.perf_counter() - started, "cpu": cpu_seconds() - cpu}


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


def run_ours(corpus: Path, tokenizer: object, processes: int) -> dict[str, float]:
    from jobs.prepare.stage import build_cache
    from launchers.recipe.load import resolve

    recipe = resolve("full-ft", "tiny-starcoder", [
        f"data.source={corpus}", "data.format=code", f"data.seq_length={SEQ_LENGTH}", "data.packing=true",
        f"data.fim_rate={FIM_RATE}", "data.fim_spm_rate=0.5", "data.eval_fraction=0", "data.glob=*.py",
        "model.config=" + str(ROOT / "recipes" / "tiny-starcoder" / "config.json"),
    ]).recipe
    with tempfile.TemporaryDirectory() as out:
        started = time.perf_counter()
        cpu = cpu_seconds()
        report = build_cache(recipe, tokenizer, Path(out) / "cache", "bench", processes=processes)
        seconds, cpu = time.perf_counter() - started, cpu_seconds() - cpu
    split = report.splits["train"]
    return {"tokens": split.tokens + split.dropped_tail_tokens, "seconds": seconds, "cpu": cpu}


def paired(mode: str, corpus: Path, threads: int, rounds: int, processes: int = 1) -> dict[str, list[float]]:
    """`rounds` back-to-back pairs (mode, raw on as many threads as the mode's processes use), the order switched
    every round: both runs and the ratios."""
    runs: dict[str, list[float]] = {"seconds": [], "raw_seconds": [], "ratio": [], "tokens": [], "raw_cpu": [],
                                    "cpu_ratio": []}
    for round_index in range(rounds):
        if round_index % 2:
            raw = measure("raw", corpus, threads * processes)
            mine = measure(mode, corpus, threads, processes)
        else:
            mine = measure(mode, corpus, threads, processes)
            raw = measure("raw", corpus, threads * processes)
        runs["seconds"].append(mine["seconds"])
        runs["raw_seconds"].append(raw["seconds"])
        runs["ratio"].append(raw["seconds"] / mine["seconds"])
        runs["tokens"].append(mine["tokens"])
        runs["raw_cpu"].append(raw["cpu"])
        runs["cpu_ratio"].append(raw["cpu"] / mine["cpu"])
    return runs


def spread(values: list[float], digits: int = 2) -> str:
    return f"{statistics.median(values):.{digits}f} ({min(values):.{digits}f}–{max(values):.{digits}f})"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mb", type=float, default=50.0, help="corpus size in MB (default 50)")
    parser.add_argument("--repeats", type=int, default=3, help="rounds of every pair (default 3)")
    parser.add_argument("--child", nargs=2, metavar=("MODE", "CORPUS"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        mode, processes = args.child[0].split(":")
        print(json.dumps(child(mode, int(processes), Path(args.child[1]))))
        return
    if args.mb <= 0 or args.repeats < 1:
        print("prepare_throughput: --mb must be positive and --repeats at least 1", file=sys.stderr)
        sys.exit(2)
    with tempfile.TemporaryDirectory() as tmp:
        corpus = Path(tmp)
        files, size = build_corpus(corpus, args.mb)
        print(f"corpus: {files} files, {size / 1e6:.1f} MB of Python source; tokenizer {TOKENIZER.name} "
              f"(2048 tokens); seq {SEQ_LENGTH}; FIM rate {FIM_RATE}; {args.repeats} rounds of alternating pairs; "
              f"load {os.getloadavg()[0]:.2f}\n")
        cases = [(mode, threads, 1) for threads in (1, 2) for mode in ("offsets", "seed", "ours")] + [("ours", 1, 2)]
        results = {case: paired(case[0], corpus, case[1], args.repeats, case[2]) for case in cases}
        print(f"{'mode':7} {'threads':>7} {'procs':>5} {'Mtokens':>8} {'MB':>5}  {'seconds (min–max)':19} "
              f"{'raw seconds':19} {'vs raw (min–max)':17} {'CPU vs raw':17}")
        for (mode, threads, processes), r in results.items():
            print(f"{mode:7} {threads:>7} {processes:>5} {statistics.median(r['tokens']) / 1e6:>8.2f} "
                  f"{size / 1e6:>5.1f}  {spread(r['seconds']):19} {spread(r['raw_seconds']):19} "
                  f"{spread(r['ratio']):17} {spread(r['cpu_ratio'])}")
        print("\nprocess curve (ours, one tokenizer thread per process; vs raw = raw with as many threads):")
        one = statistics.median(results["ours", 1, 1]["seconds"])
        for processes, key in ((1, ("ours", 1, 1)), (2, ("ours", 1, 2))):
            seconds = statistics.median(results[key]["seconds"])
            print(f"  {processes} process(es): {spread(results[key]['seconds'])} s, {one / seconds:.2f}x of 1, "
                  f"vs raw {spread(results[key]['ratio'])}")
        print(f"load after: {os.getloadavg()[0]:.2f}")
        tokenize_cpu = statistics.median(results["ours", 1, 1]["raw_cpu"])
        seed_passes = 16 * (3 + 1.5)  # 16 ranks × 3 epochs, + a restart mid-run re-tokenizing half the epochs
        print(f"tokenizer CPU-seconds for this corpus, 16 ranks × 3 epochs, one requeue: ours 1 pass = "
              f"{tokenize_cpu:.0f} s; seed-style {seed_passes:.0f} passes = {tokenize_cpu * seed_passes:.0f} s "
              f"({seed_passes:.0f}x)")


if __name__ == "__main__":
    main()
