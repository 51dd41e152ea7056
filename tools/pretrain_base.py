"""Pretrain the shipped base model, recipes/assets/tiny-coder-base/, with the project's own pipeline.

The corpus is the Python standard library of the interpreter that runs this script (sysconfig's "stdlib"
directory): its .py files in sorted path order, read by the pipeline's own rule (jobs.prepare.code_files: no
site-packages, vendored or hidden directories, nothing over 1 MB, no binary or non-UTF-8 file), without the test
suites (directories named test, tests or idle_test: 60% of the bytes, mostly regression scaffolding and
deliberately odd inputs such as bad encodings and syntax errors; the base should learn library code). The files
are copied into <work>/corpus (data.format code reads a directory and cannot leave subdirectories out) with a
manifest of their sizes and sha256.

Then `launch pretrain tiny-coder-base --local --stages prepare,train` runs the recipe in
tools/pretrain_recipes/tiny-coder-base/ (random init from its config.json, packing, FIM rate 0.5) on that copy, and
the run's final/ is written in float16 to the output directory with the tokenizer files and a MODEL_CARD.md.
Torch runs on --threads threads (OMP_NUM_THREADS): the same seed, threads and machine rebuild the same bytes.

    nice -n 19 .venv/bin/python tools/pretrain_base.py --steps 1000   # the shipped weights (18 min on 2 busy cores)
    .venv/bin/python tools/pretrain_base.py --steps 10 --max-files 40 --out /tmp/a   # a short run, e.g. to compare
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import shutil
import subprocess
import sys
import sysconfig
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import NoReturn

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # run as a script from anywhere: the project's packages come from this checkout

from jobs.prepare.code_files import code_files, read_code_file  # noqa: E402

CATALOG = ROOT / "tools" / "pretrain_recipes"
MODEL, METHOD = "tiny-coder-base", "pretrain"
DEFAULT_OUT = ROOT / "recipes" / "assets" / MODEL
TOKENIZER = ROOT / "recipes" / "assets" / "tokenizer"
TEST_DIRS = {"test", "tests", "idle_test"}
WEIGHTS = "model.safetensors"


class Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message}\n")


def positive(text: str) -> int:
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return int(text)


@dataclass
class Corpus:
    files: int
    bytes: int
    manifest_sha256: str


def build_corpus(stdlib: Path, target: Path, max_files: int | None) -> Corpus:
    """Copy the stdlib files the base trains on into `target`; write target/../manifest.tsv (sha256, size, path)."""
    lines, total = [], 0
    for path, skipped in code_files(stdlib, "**/*.py"):
        relative = path.relative_to(stdlib)
        if skipped is not None or TEST_DIRS & set(relative.parts[:-1]) or read_code_file(path)[0] is None:
            continue
        raw = path.read_bytes()
        (target / relative).parent.mkdir(parents=True, exist_ok=True)
        (target / relative).write_bytes(raw)
        lines.append(f"{hashlib.sha256(raw).hexdigest()}\t{len(raw)}\t{relative.as_posix()}\n")
        total += len(raw)
        if len(lines) == max_files:
            break
    manifest = "".join(lines).encode()
    (target.parent / "manifest.tsv").write_bytes(manifest)
    return Corpus(len(lines), total, hashlib.sha256(manifest).hexdigest())


def pretrain(corpus: Path, runs: Path, steps: int, seed: int, threads: int) -> Path:
    """The pipeline's prepare and train stages on `corpus`; returns the run directory."""
    env = {**os.environ, "CLUSTERFT_RECIPES": str(CATALOG), "OMP_NUM_THREADS": str(threads),
           "MKL_NUM_THREADS": str(threads), "HF_HUB_OFFLINE": "1", "MLFLOW_DISABLE_TELEMETRY": "true",
           "PYTHONPATH": str(ROOT)}
    env.pop("MLFLOW_TRACKING_URI", None)  # the run's own sqlite store, under <work>/runs
    command = [sys.executable, "-m", "launchers.cli.main", METHOD, MODEL, f"data.source={corpus}",
               f"training.max_steps={steps}", f"training.eval_steps={steps}", f"training.seed={seed}",
               "--local", "--stages", "prepare,train", "--runs-dir", str(runs), "--name", "pretrain"]
    done = subprocess.run(command, env=env, cwd=ROOT)
    if done.returncode != 0:
        sys.exit(f"pretrain_base.py: the pretraining run failed (exit {done.returncode}); see {runs}")
    return runs / MODEL / "pretrain"


def write_base(final: Path, out: Path, threads: int) -> tuple[str, int]:
    """final/ in float16 with the shipped tokenizer files into `out` (replaced whole); returns the weights' sha256
    and the parameter count."""
    import torch
    from transformers import AutoModelForCausalLM

    torch.set_num_threads(threads)
    model = AutoModelForCausalLM.from_pretrained(final, dtype=torch.float32).to(torch.float16)
    model.config.use_cache = True  # the Trainer saved its training value; the base is for generation too
    tmp = out.with_name(f".{out.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(tmp)
    for name in sorted(os.listdir(TOKENIZER)):
        shutil.copyfile(TOKENIZER / name, tmp / name)
    shutil.rmtree(out, ignore_errors=True)
    os.replace(tmp, out)
    return hashlib.sha256((out / WEIGHTS).read_bytes()).hexdigest(), model.num_parameters()


@dataclass
class Result:
    corpus: Corpus
    run: Path
    out: Path
    steps: int
    seed: int
    threads: int
    sliced: bool
    wall_s: float
    sha256: str
    params: int


def model_card(r: Result) -> str:
    """MODEL_CARD.md: what the base is, what it was trained on, how, and how well."""
    import yaml

    recipe = yaml.safe_load((r.run / "recipe.yaml").read_text())
    metrics = json.loads((r.run / "last_metrics.json").read_text())["metrics"]
    (report_file,) = (r.run.parent.parent / "cache" / "prepared").glob("*/report.json")
    splits = json.loads(report_file.read_text())["splits"]
    train, held = splits["train"], splits["eval"]
    config = json.loads((r.out / "config.json").read_text())
    data, training = recipe["data"], recipe["training"]
    per_step = training["per_device_batch_size"] * data["seq_length"]
    runtime = metrics["summary/runtime"]
    size = (r.out / WEIGHTS).stat().st_size
    return f"""# tiny-coder-base

A {r.params / 1e6:.2f}M-parameter GPTBigCode (the StarCoder architecture: multi-query attention, learned positions,
FIM special tokens) pretrained on the Python standard library. It ships so that the laptop recipes
(`recipes/tiny-coder/`) fine-tune a model that already knows Python rather than random weights. It is a toy: it
writes plausible-looking Python, not correct programs.

Built by `tools/pretrain_base.py`: the project's own pipeline (`launch {METHOD} {MODEL} --local --stages
prepare,train` on the recipe in `tools/pretrain_recipes/{MODEL}/`), then the run's final/ cast to float16. The same
seed, thread count and machine rebuild the same bytes.

| | |
| --- | --- |
| architecture | n_embd {config['n_embd']}, n_layer {config['n_layer']}, n_head {config['n_head']} (multi-query), \
n_inner {config['n_inner']}, n_positions {config['n_positions']}, vocab {config['vocab_size']}, tied embeddings, \
no dropout |
| weights | `{WEIGHTS}`: float16 (trained in float32), {size} bytes ({size / 2**20:.1f} MiB) |
| weights sha256 | `{r.sha256}` |
| tokenizer | `recipes/assets/tokenizer` copied here (2048-token byte-level BPE; FIM and ChatML special tokens) |
| corpus | the standard library of Python {platform.python_version()}: `**/*.py` under \
`sysconfig.get_paths()["stdlib"]` in sorted order, read by the pipeline's rule (no site-packages, no file over 1 MB, \
no binary or non-UTF-8 file), test directories ({', '.join(sorted(TEST_DIRS))}) left out\
{'; sliced by --max-files' if r.sliced else ''} |
| corpus size | {r.corpus.files} files, {r.corpus.bytes} bytes |
| corpus manifest sha256 | `{r.corpus.manifest_sha256}` (lines `sha256<TAB>bytes<TAB>path`, in corpus order) |
| split | {train['documents']} files for training ({train['tokens']} tokens in {train['sequences']} rows of \
{data['seq_length']}), {held['documents']} held out ({held['tokens']} tokens): a seeded {data['eval_fraction']:.0%} \
of the files, chosen by path (`jobs/prepare/code_files.py`) |
| FIM | rate {data['fim_rate']} ({data['fim_spm_rate']:.0%} of them SPM), {data['fim_mode']}-level cuts \
(`jobs/prepare/fim.py`), on both splits |
| training | {r.steps} steps × {per_step} tokens = {r.steps * per_step} tokens seen \
({r.steps * per_step / max(train['tokens'], 1):.2f} epochs); AdamW, lr {training['learning_rate']} \
{training['lr_scheduler']}, warm-up {training['warmup_ratio']:.0%}, weight decay {training['weight_decay']}, \
seed {r.seed} |
| machine | {platform.machine()}, {os.cpu_count()} CPUs, torch on {r.threads} threads |
| wall time | {r.wall_s / 60:.1f} min in all (corpus copy, prepare, train, float16 copy); training \
{runtime / 60:.1f} min, {r.steps * per_step / runtime:.0f} tokens/s |
| final train loss | {metrics['train/loss']:.3f} (the last logging window of {training['logging_steps']} steps) |
| final held-out loss | {metrics['eval/loss']:.3f} (float32, the held-out files; uniform guessing is 7.62) |

Rebuild from the repository root (the corpus depends on the Python version: compare the manifest sha256):

    nice -n 19 .venv/bin/python tools/pretrain_base.py --steps {r.steps} --seed {r.seed} --threads {r.threads}
"""


def main(argv: list[str] | None = None) -> int:
    parser = Parser(prog="pretrain_base.py", description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=positive, required=True, help="optimizer steps (4 × 512 tokens each)")
    parser.add_argument("--max-files", type=positive, help="the first N corpus files only (short runs)")
    parser.add_argument("--seed", type=int, default=42, help="training.seed: init, data order, FIM, split")
    parser.add_argument("--threads", type=positive, default=2, help="torch threads (OMP_NUM_THREADS)")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help=f"default {DEFAULT_OUT.relative_to(ROOT)}")
    parser.add_argument("--work", type=Path, help="where the corpus copy and the run go (default: a new temp dir)")
    args = parser.parse_args(argv)
    if args.seed < 0:
        parser.error(f"--seed must be at least 0, got {args.seed}")
    if not args.out.resolve().parent.is_dir():
        parser.error(f"--out: no such directory {args.out.resolve().parent}")
    work = args.work or Path(tempfile.mkdtemp(prefix="pretrain-base-"))
    if work.exists() and any(work.iterdir()):
        parser.error(f"--work {work} is not empty")
    started = time.monotonic()
    corpus = build_corpus(Path(sysconfig.get_paths()["stdlib"]), work / "corpus", args.max_files)
    print(f"[pretrain_base] corpus: {corpus.files} files, {corpus.bytes} bytes, manifest {corpus.manifest_sha256}",
          flush=True)
    run = pretrain(work / "corpus", work / "runs", args.steps, args.seed, args.threads)
    sha256, params = write_base(run / "final", args.out, args.threads)
    result = Result(corpus, run, args.out, args.steps, args.seed, args.threads, args.max_files is not None,
                    time.monotonic() - started, sha256, params)
    (args.out / "MODEL_CARD.md").write_text(model_card(result))
    print(f"[pretrain_base] {args.out / WEIGHTS}: sha256 {sha256} ({result.wall_s / 60:.1f} min; run {run})",
          flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
