"""Benchmark the streaming LoRA merge (jobs.export.merge) against PEFT's merge_and_unload + save_pretrained.

    .venv/bin/python bench/merge_stream.py                                # ~1.5 GB bf16 GPTBigCode, 5 pairs, 1 thread
    .venv/bin/python bench/merge_stream.py --n-embd 1024 --n-layer 8      # ~0.3 GB, for a small machine
    .venv/bin/python bench/merge_stream.py --workdir /tmp/mb --keep       # keep the synthetic model for reruns

It writes a synthetic GPTBigCode-shaped checkpoint (multi-query attention, random bf16 weights; default n_embd 2048,
16 layers, vocabulary 49152: ~785 M parameters, ~1.57 GB, shards of at most --shard-mb) tensor by tensor with
safetensors — no model is ever instantiated — and a LoRA adapter for it (r 16 on c_attn, c_proj, c_fc; float32
factors, random non-zero B). Then it runs the two methods in --runs pairs, each run in a fresh subprocess with its
threads pinned (--threads), the order switched every round (stream first, PEFT first, ...); after each run its
output (~1.5 GB) is written back (os.sync) and, but for the first pair's, removed, so that no run pays for the
previous one's writeback. Per run it reports, with the bytes it wrote and the 1-minute load:

  wall   seconds from starting the subprocess to its exit: Python start-up and imports included
  work   seconds inside the subprocess after its imports (load + merge + save)
  peak   the subprocess's peak resident set (ru_maxrss from os.wait4 on that child, the value /usr/bin/time -v shows)

and then the median (min–max) of each, the peak as a multiple of the largest base shard, and the stream/PEFT wall
ratio within each pair. Goals: streaming peak <= 1.5x the largest shard, streaming wall time <= 0.5x PEFT's.
Finally the two merged checkpoints are compared tensor by tensor: both compute W + ΔW in float32 and round once to
bf16 (PEFT keeps the LoRA factors in float32 and adds ΔW in place), so they agree to within a bf16 rounding step,
usually bit for bit.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from pairs import alternate, load, pinned_env, settle, spread

REPO = Path(__file__).resolve().parents[1]
TARGETS = ("c_attn", "c_proj", "c_fc")


def gpt_bigcode_tensors(args: argparse.Namespace) -> list[tuple[str, tuple[int, ...]]]:
    """Names and shapes of a GPTBigCodeForCausalLM state dict as transformers saves it (lm_head tied to wte)."""
    d, head_dim = args.n_embd, args.n_embd // args.n_head
    qkv = d + 2 * head_dim  # multi-query: one key and one value head
    names = [("transformer.wte.weight", (args.vocab, d)), ("transformer.wpe.weight", (args.n_positions, d))]
    for i in range(args.n_layer):
        p = f"transformer.h.{i}"
        names += [(f"{p}.ln_1.weight", (d,)), (f"{p}.ln_1.bias", (d,)),
                  (f"{p}.attn.c_attn.weight", (qkv, d)), (f"{p}.attn.c_attn.bias", (qkv,)),
                  (f"{p}.attn.c_proj.weight", (d, d)), (f"{p}.attn.c_proj.bias", (d,)),
                  (f"{p}.ln_2.weight", (d,)), (f"{p}.ln_2.bias", (d,)),
                  (f"{p}.mlp.c_fc.weight", (4 * d, d)), (f"{p}.mlp.c_fc.bias", (4 * d,)),
                  (f"{p}.mlp.c_proj.weight", (d, 4 * d)), (f"{p}.mlp.c_proj.bias", (d,))]
    names += [("transformer.ln_f.weight", (d,)), ("transformer.ln_f.bias", (d,))]
    return names


def build_base(args: argparse.Namespace, base: Path) -> list[int]:
    """Write the sharded bf16 checkpoint, holding at most one shard in memory; returns the shard sizes in bytes."""
    import torch
    from safetensors.torch import save_file
    from transformers import GPTBigCodeConfig

    base.mkdir(parents=True)
    generator = torch.Generator().manual_seed(0)
    limit = args.shard_mb * 10**6
    shard: dict[str, torch.Tensor] = {}
    sizes = [0]
    weight_map = {}

    def flush() -> None:
        save_file(shard, str(base / f"part-{len(sizes) - 1:05d}.safetensors"), metadata={"format": "pt"})
        shard.clear()

    for name, shape in gpt_bigcode_tensors(args):
        if ".ln_" in name:
            tensor = torch.ones(shape) if name.endswith(".weight") else torch.zeros(shape)
        elif name.endswith(".bias"):
            tensor = torch.zeros(shape)
        else:
            tensor = torch.randn(shape, generator=generator) * 0.02
        tensor = tensor.to(torch.bfloat16)
        nbytes = tensor.numel() * 2
        if sizes[-1] and sizes[-1] + nbytes > limit:
            flush()
            sizes.append(0)
        shard[name] = tensor
        sizes[-1] += nbytes
        weight_map[name] = len(sizes) - 1
    flush()
    count = len(sizes)
    for i in range(count):  # the transformers names, now that the count is known
        (base / f"part-{i:05d}.safetensors").rename(base / f"model-{i + 1:05d}-of-{count:05d}.safetensors")
    index = {"metadata": {"total_size": sum(sizes)},
             "weight_map": {k: f"model-{v + 1:05d}-of-{count:05d}.safetensors" for k, v in sorted(weight_map.items())}}
    (base / "model.safetensors.index.json").write_text(json.dumps(index, indent=2, sort_keys=True) + "\n")
    config = GPTBigCodeConfig(vocab_size=args.vocab, n_embd=args.n_embd, n_layer=args.n_layer, n_head=args.n_head,
                              n_positions=args.n_positions, multi_query=True, bos_token_id=0, eos_token_id=0)
    config.dtype = torch.bfloat16
    config.save_pretrained(base)
    return [(base / f"model-{i + 1:05d}-of-{count:05d}.safetensors").stat().st_size for i in range(count)]


def build_adapter(args: argparse.Namespace, base: Path, adapter: Path) -> int:
    import torch
    from peft import LoraConfig
    from safetensors.torch import save_file

    adapter.mkdir(parents=True)
    generator = torch.Generator().manual_seed(1)
    tensors = {}
    for name, shape in gpt_bigcode_tensors(args):
        module = name.removesuffix(".weight")
        if name.endswith(".weight") and module.rsplit(".", 1)[-1] in TARGETS:
            out_features, in_features = shape
            prefix = f"base_model.model.{module}"
            tensors[f"{prefix}.lora_A.weight"] = torch.randn(args.rank, in_features, generator=generator) * 0.01
            tensors[f"{prefix}.lora_B.weight"] = torch.randn(out_features, args.rank, generator=generator) * 0.01
    save_file(tensors, str(adapter / "adapter_model.safetensors"), metadata={"format": "pt"})
    LoraConfig(r=args.rank, lora_alpha=2 * args.rank, target_modules=list(TARGETS), task_type="CAUSAL_LM",
               base_model_name_or_path=str(base)).save_pretrained(str(adapter))
    return len(tensors) // 2


# ---------------------------------------------------------------------------------------------------------------
# workers: one merge each, in their own process


def worker(args: argparse.Namespace) -> None:
    method, base, adapter, out = args.worker, args.base, args.adapter, args.out
    if method == "build":
        started = time.perf_counter()
        build_base(args, base)
        modules = build_adapter(args, base, adapter)
        print(f"built base and adapter ({modules} LoRA modules) in {time.perf_counter() - started:.1f} s", flush=True)
        return
    if method == "compare":
        print(compare(out, out.with_name(out.name.replace("stream", "peft")), base), flush=True)
        return
    import torch

    torch.set_num_threads(args.threads)
    if method == "stream":
        sys.path.insert(0, str(REPO))
        from jobs.export.merge import merge_adapter

        started = time.perf_counter()
        merge_adapter(base, adapter, out)
    else:
        from peft import PeftModel
        from transformers import AutoModelForCausalLM

        started = time.perf_counter()
        model = AutoModelForCausalLM.from_pretrained(base, dtype=torch.bfloat16)
        model = PeftModel.from_pretrained(model, adapter).merge_and_unload()
        model.save_pretrained(out, max_shard_size=f"{args.shard_mb}MB")
    print(json.dumps({"work_s": time.perf_counter() - started}), flush=True)


def helper(method: str, args: argparse.Namespace, base: Path, adapter: Path, out: Path) -> None:
    """Build or compare in a subprocess: this process never imports torch, so it stays small — a child's
    ru_maxrss starts from its parent's high-water mark at exec (vfork), which must not be a model's."""
    sizes = [f"--{k.replace('_', '-')}={getattr(args, k)}" for k in ("n_embd", "n_layer", "n_head", "vocab",
                                                                       "n_positions", "shard_mb", "rank")]
    subprocess.run([sys.executable, __file__, "--worker", method, "--base", str(base), "--adapter", str(adapter),
                    "--out", str(out), *sizes], check=True, cwd=REPO,
                   env={**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_VERBOSITY": "error"})


def run_once(method: str, base: Path, adapter: Path, out: Path, args: argparse.Namespace) -> dict[str, float]:
    env = pinned_env(args.threads, HF_HUB_OFFLINE="1", TRANSFORMERS_VERBOSITY="error", TQDM_DISABLE="1")
    command = [sys.executable, __file__, "--worker", method, "--base", str(base), "--adapter", str(adapter),
               "--out", str(out), "--shard-mb", str(args.shard_mb), "--threads", str(args.threads)]
    before = load()
    with tempfile.TemporaryFile() as stdout, tempfile.TemporaryFile() as stderr:
        started = time.perf_counter()
        process = subprocess.Popen(command, stdout=stdout, stderr=stderr, env=env, cwd=REPO)
        _, status, usage = os.wait4(process.pid, 0)  # this child's own rusage (Popen.wait would discard it)
        wall = time.perf_counter() - started
        process.returncode = os.waitstatus_to_exitcode(status)
        stdout.seek(0)
        stderr.seek(0)
        out_text, err_text = stdout.read().decode(), stderr.read().decode()
    if process.returncode != 0:
        raise SystemExit(f"{method} failed ({process.returncode}):\n{err_text[-3000:]}")
    work = json.loads(out_text.strip().splitlines()[-1])["work_s"]
    written = sum(p.stat().st_size for p in out.iterdir() if p.name.endswith(".safetensors"))
    return {"wall_s": wall, "work_s": work, "peak_bytes": usage.ru_maxrss * 1024,  # ru_maxrss is KiB on Linux
            "written_bytes": written, "load": before}


def compare(stream_dir: Path, peft_dir: Path, base: Path) -> str:
    import torch
    from safetensors import safe_open

    def where(directory: Path) -> dict[str, Path]:
        index = json.loads((directory / "model.safetensors.index.json").read_text())["weight_map"]
        return {key: directory / name for key, name in index.items()}

    ours, theirs, original = where(stream_dir), where(peft_dir), where(base)
    if set(ours) != set(theirs) or set(ours) != set(original):
        return f"different tensor names: {sorted(set(ours) ^ set(theirs))[:5]}"
    identical = changed = 0
    worst = 0.0
    for key in sorted(ours):
        with safe_open(str(ours[key]), "pt") as a, safe_open(str(theirs[key]), "pt") as b, \
                safe_open(str(original[key]), "pt") as c:
            x, y, w = a.get_tensor(key), b.get_tensor(key), c.get_tensor(key)
        if x.dtype != y.dtype or x.shape != y.shape:
            return f"{key}: {x.dtype}{list(x.shape)} vs {y.dtype}{list(y.shape)}"
        changed += not torch.equal(x, w)
        if torch.equal(x, y):
            identical += 1
        else:
            scale = max(y.float().abs().max().item(), 1e-30)
            worst = max(worst, (x.float() - y.float()).abs().max().item() / scale)
    return (f"{len(ours)} tensors, same names/dtypes/shapes as PEFT's; {changed} changed by the merge; "
            f"{identical} bit-identical to PEFT's, the others within {worst:.1e} of the tensor's max |w| "
            f"(one bf16 rounding step: 2^-8 = 3.9e-03)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--n-embd", type=int, default=2048)
    parser.add_argument("--n-layer", type=int, default=16)
    parser.add_argument("--n-head", type=int, default=16)
    parser.add_argument("--vocab", type=int, default=49152)
    parser.add_argument("--n-positions", type=int, default=2048)
    parser.add_argument("--shard-mb", type=int, default=400, help="largest shard, MB (10^6 bytes)")
    parser.add_argument("--rank", type=int, default=16)
    parser.add_argument("--runs", type=int, default=5, help="pairs of runs")
    parser.add_argument("--threads", type=int, default=1, help="torch/OMP/MKL threads of every run")
    parser.add_argument("--workdir", type=Path, default=None, help="default: a temporary directory")
    parser.add_argument("--keep", action="store_true", help="keep --workdir (base and adapter are reused if there)")
    parser.add_argument("--worker", choices=["stream", "peft", "build", "compare"], help=argparse.SUPPRESS)
    parser.add_argument("--base", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--adapter", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--out", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        worker(args)
        return

    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="merge-bench-"))
    base, adapter = workdir / "base", workdir / "adapter"
    try:
        if not (base / "model.safetensors.index.json").is_file():
            shutil.rmtree(base, ignore_errors=True)
            shutil.rmtree(adapter, ignore_errors=True)
            helper("build", args, base, adapter, workdir)
        shard_sizes = [p.stat().st_size for p in sorted(base.glob("model-*.safetensors"))]
        largest = max(shard_sizes)
        print(f"base: {sum(shard_sizes) / 1e9:.2f} GB bf16 in {len(shard_sizes)} shards, largest "
              f"{largest / 1e6:.0f} MB; adapter {(adapter / 'adapter_model.safetensors').stat().st_size / 1e6:.0f} MB; "
              f"{os.cpu_count()} CPUs")

        print(f"{args.runs} alternating pairs, {args.threads} thread(s)")
        results: dict[str, list[dict[str, float]]] = {"stream": [], "peft": []}
        for run, method in alternate(args.runs, "stream", "peft"):
            out = workdir / f"out-{method}-{run}"
            shutil.rmtree(out, ignore_errors=True)
            result = run_once(method, base, adapter, out, args)
            results[method].append(result)
            print(f"  pair {run + 1} {method:6s} wall {result['wall_s']:6.1f} s  work {result['work_s']:6.1f} s  "
                  f"peak {result['peak_bytes'] / 1e9:5.2f} GB  wrote {result['written_bytes'] / 1e9:5.2f} GB  "
                  f"load {result['load']:.2f}", flush=True)
            settle(*([out] if run > 0 else []))  # written back before the next run; the first pair's kept

        print(f"\nmedian (min–max) of {args.runs} | wall (s) | work (s) | peak RSS (GB) | peak / largest shard")
        for method, label in (("stream", "jobs.export.merge (streaming)"), ("peft", "PEFT merge_and_unload+save")):
            rs = results[method]
            print(f"{label:29s}| {spread([r['wall_s'] for r in rs], 1)} | {spread([r['work_s'] for r in rs], 1)} | "
                  f"{spread([r['peak_bytes'] / 1e9 for r in rs])} | {spread([r['peak_bytes'] / largest for r in rs])}x")
        peak = [r["peak_bytes"] / largest for r in results["stream"]]
        wall = [s["wall_s"] / p["wall_s"] for s, p in zip(results["stream"], results["peft"], strict=True)]
        work = [s["work_s"] / p["work_s"] for s, p in zip(results["stream"], results["peft"], strict=True)]
        loads = [r["load"] for rs in results.values() for r in rs]
        print(f"\ngoal peak <= 1.5x largest shard: {spread(peak)}x "
              f"{'met' if statistics.median(peak) <= 1.5 else 'MISSED'}")
        verdict = "met" if statistics.median(wall) <= 0.5 else "MISSED"
        print(f"goal wall <= 0.5x PEFT's, per pair: {spread(wall)}x {verdict} (work only: {spread(work)}x); "
              f"1-min load {min(loads):.2f}–{max(loads):.2f}")
        print("outputs: ", end="", flush=True)
        helper("compare", args, base, adapter, workdir / "out-stream-0")
    finally:
        if not args.keep:
            shutil.rmtree(workdir, ignore_errors=True)
        else:
            for method in ("stream", "peft"):
                shutil.rmtree(workdir / f"out-{method}-0", ignore_errors=True)


if __name__ == "__main__":
    main()
