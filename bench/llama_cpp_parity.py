"""The shipped base in llama.cpp, per GGUF type: how close it comes to transformers, and how fast it completes code.

    .venv/bin/python bench/llama_cpp_parity.py                     # f16, q8_0, q4_0; 12 files of the bundled code
    .venv/bin/python bench/llama_cpp_parity.py --source ./my-repo --files 20 --pairs 5

For each type it writes the GGUF of recipes/assets/tiny-coder-base and prints jobs/export/llama_cpp_parity.py's
figures over the prompts (two per file: left to right, and fill-in-the-middle): prompts tokenized to the same ids,
greedy completions identical, greedy tokens before the first difference, teacher-forced top-1 agreement, the
largest logit difference, the mean KL (nats) and the largest divergence margin (where a greedy completion first
differs, how much transformers preferred its own token, in logits). Then the speed of greedy completion, one thread
each, in the same process: llama.cpp (q8_0) against transformers (float32, KV cache on), in --pairs alternating
pairs with the order switched, counting the tokens each wrote (both stop at the end-of-text token); it prints
tokens/s for each as median (min–max) and the per-pair ratio.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

from pairs import alternate, load, spread

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
BASE = REPO / "recipes" / "assets" / "tiny-coder-base"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--source", type=Path, default=REPO / "recipes" / "assets" / "data" / "code_dir")
    parser.add_argument("--files", type=int, default=12)
    parser.add_argument("--new-tokens", type=int, default=32)
    parser.add_argument("--pairs", type=int, default=5)
    args = parser.parse_args()

    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from jobs.export.gguf import write_gguf
    from jobs.export.llama_cpp import LlamaCpp
    from jobs.export.llama_cpp_parity import code_prompts, measure

    torch.set_num_threads(1)
    tokenizer = AutoTokenizer.from_pretrained(BASE)
    prompts = code_prompts(args.source, tokenizer, args.files)
    print(f"{BASE.name}, {len(prompts)} prompts from {args.source}, {args.new_tokens} new tokens, load {load():.1f}\n")
    print("| type | prompts | same ids | identical | tokens agreed | top-1 | max Δlogit | mean KL | "
          "divergence margin |")
    print("|---|---|---|---|---|---|---|---|---|")
    with tempfile.TemporaryDirectory() as scratch:
        paths = {quant: write_gguf(BASE, Path(scratch) / f"base-{quant}.gguf", quant) for quant in ("f16", "q8_0",
                                                                                                    "q4_0")}
        for quant, path in paths.items():
            r = measure(BASE, path, prompts, args.new_tokens)
            print(f"| {quant} | {r.prompts} | {r.same_ids} | {r.exact} | {r.agreed_tokens}/{r.new_tokens} | "
                  f"{r.top1:.4f} | {r.max_logit_diff:.4f} | {r.mean_kl:.2e} | {r.divergence_margin:.4f} |")

        model = AutoModelForCausalLM.from_pretrained(BASE, dtype=torch.float32).eval()
        context = model.config.max_position_embeddings
        inputs = [ids for p in prompts
                  if len(ids := tokenizer(p.text, add_special_tokens=False)["input_ids"]) + args.new_tokens <= context]
        rates: dict[str, list[float]] = {"llama.cpp q8_0": [], "transformers": []}
        with LlamaCpp(paths["q8_0"], context=context) as llama, torch.no_grad():
            def llama_cpp() -> int:
                return sum(len(llama.greedy(ids, args.new_tokens)) for ids in inputs)

            def transformers() -> int:
                written = 0
                for ids in inputs:
                    out = model.generate(torch.tensor([ids]), max_new_tokens=args.new_tokens, do_sample=False,
                                         eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)
                    written += sum(1 for t in out[0, len(ids):].tolist() if t != tokenizer.eos_token_id)
                return written

            runners = {"llama.cpp q8_0": llama_cpp, "transformers": transformers}
            for _, side in alternate(args.pairs, "llama.cpp q8_0", "transformers"):
                started = time.perf_counter()
                tokens = runners[side]()
                rates[side].append(tokens / (time.perf_counter() - started))
    ratios = [a / b for a, b in zip(rates["llama.cpp q8_0"], rates["transformers"])]
    print(f"\ngreedy completion, 1 thread, {len(inputs)} prompts, {args.pairs} alternating pairs, load {load():.1f}")
    for side, values in rates.items():
        print(f"  {side:15s} {spread(values, 0)} tokens/s")
    print(f"  llama.cpp / transformers: {spread(ratios)}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
