"""Fill-in-the-middle completion eval: mask a span of held-out code, ask the model for it, score what comes back.

    from jobs.eval.fim_eval import fim_examples, fim_prompt, score_fim, code_documents
    examples = fim_examples(code_documents(source), n=64, seed=0)   # FimExample(name, kind, prefix, middle, suffix)
    prompts = [fim_prompt(e, tokenizer) for e in examples]           # PSM with the tokenizer's own sentinels
    fit_prompt(example, tokenizer, budget=448)       # lines nearest the span, when the file is longer than the context
    metrics, rows = score_fim(examples, completions)            # {"fim_exact_match": .., "fim_edit_similarity": ..}

The masked span is one to three whole lines strictly inside the file (a non-empty prefix and suffix), drawn with a
seeded generator, so two evaluations of the same data ask the same questions; a few documents give several spans
each. Exact match compares the stripped middle; edit similarity is difflib's ratio between the lines written and
the lines masked (1.0 is identical), the line-level similarity code-completion benchmarks report. Both are also
given per file type (the file extension).
Documents: the lines of held-out code files, or, by default, HumanEval's prompts with their canonical solutions —
whole Python programs that no recipe trains on.
"""

from __future__ import annotations

import difflib
import random
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from jobs.prepare.fim import fim_tokens

MAX_SPAN_LINES = 3
CODE_SUFFIXES = (".py", ".js", ".ts", ".java", ".c", ".cc", ".cpp", ".h", ".go", ".rs", ".rb", ".sh", ".jl", ".lua")


@dataclass(frozen=True)
class FimExample:
    name: str
    kind: str  # file type, e.g. "py"
    prefix: str
    middle: str
    suffix: str


def code_documents(source: str | None) -> list[tuple[str, str]]:
    """(name, text) of the held-out code: a file, every code file under a directory, or HumanEval's programs."""
    if source is None:
        from jobs.eval.humaneval import load_problems

        return [(f"{p.task_id}.py", p.prompt + p.canonical_solution) for p in load_problems()]
    path = Path(source)
    files = sorted(f for f in path.rglob("*") if f.suffix in CODE_SUFFIXES and f.is_file()) if path.is_dir() else [path]
    return [(str(f.relative_to(path) if path.is_dir() else f.name), f.read_text(encoding="utf-8", errors="replace"))
            for f in files]


def fim_examples(documents: Sequence[tuple[str, str]], n: int, seed: int = 0) -> list[FimExample]:
    """Up to `n` examples from documents with at least three non-blank lines: one per document when there are at
    least `n` documents; with fewer (a codebase's few held-out files), distinct spans from each document in turn,
    until there are `n` or the draws stop finding new ones."""
    rng = random.Random(seed)
    usable = [(name, text) for name, text in documents if sum(1 for line in text.splitlines() if line.strip()) >= 3]
    chosen = rng.sample(usable, min(n, len(usable)))
    examples: list[FimExample] = []
    seen: set[tuple[int, int, int]] = set()
    for draw in range(8 * n if chosen else 0):
        if len(examples) == n:
            break
        index = draw % len(chosen)
        name, text = chosen[index]
        lines = text.splitlines(keepends=True)
        inner = [i for i in range(1, len(lines) - 1) if lines[i].strip()]
        first = rng.choice(inner)
        last = min(first + rng.randrange(MAX_SPAN_LINES), len(lines) - 2)
        if (index, first, last) in seen:
            continue
        seen.add((index, first, last))
        examples.append(FimExample(name, Path(name).suffix.lstrip(".") or "txt", "".join(lines[:first]),
                                   "".join(lines[first:last + 1]), "".join(lines[last + 1:])))
    return examples


def fim_prompt(example: FimExample, tokenizer: Any) -> str:
    return psm_prompt(example.prefix, example.suffix, tokenizer)


def fit_prompt(example: FimExample, tokenizer: Any, budget: int) -> FimExample:
    """The example with whole lines dropped from the far ends of its context (the first lines of the prefix, the last
    of the suffix; the longer side first) until its prompt is at most `budget` tokens: a held-out file longer than
    the model's context keeps the lines nearest the masked span."""
    prefix = example.prefix.splitlines(keepends=True)
    suffix = example.suffix.splitlines(keepends=True)

    def size() -> int:
        prompt = psm_prompt("".join(prefix), "".join(suffix), tokenizer)
        return len(tokenizer(prompt, add_special_tokens=False)["input_ids"])

    tokens = size()
    while tokens > budget and (prefix or suffix):
        lines = max(1, len(prefix) + len(suffix)) * (tokens - budget) // tokens  # a first cut in proportion
        for _ in range(max(1, lines)):
            if prefix and (len(prefix) >= len(suffix)):
                prefix.pop(0)
            elif suffix:
                suffix.pop()
        tokens = size()
    return replace(example, prefix="".join(prefix), suffix="".join(suffix))


def psm_prompt(prefix: str, suffix: str, tokenizer: Any) -> str:
    """PSM order with the tokenizer's sentinels: <prefix-sentinel> prefix <suffix-sentinel> suffix <middle-sentinel>.
    ValueError when the tokenizer has no FIM sentinels."""
    tokens = fim_tokens(tokenizer)
    p, s, m = (tokenizer.convert_ids_to_tokens(i) for i in (tokens.prefix, tokens.suffix, tokens.middle))
    return f"{p}{prefix}{s}{suffix}{m}"


def edit_similarity(written: str, masked: str) -> float:
    ours = [line.strip() for line in written.splitlines() if line.strip()]
    theirs = [line.strip() for line in masked.splitlines() if line.strip()]
    if not ours and not theirs:
        return 1.0
    return difflib.SequenceMatcher(None, "\n".join(ours), "\n".join(theirs), autojunk=False).ratio()


def score_fim(examples: Sequence[FimExample], completions: Sequence[str]) -> tuple[dict[str, float],
                                                                                   list[dict[str, Any]]]:
    """Metrics overall and per file type, and one row per example."""
    rows = []
    by_kind: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for example, written in zip(examples, completions, strict=True):
        row = {"name": example.name, "kind": example.kind, "exact_match": written.strip() == example.middle.strip(),
               "edit_similarity": round(edit_similarity(written, example.middle), 4), "masked": example.middle,
               "written": written}
        rows.append(row)
        by_kind[example.kind].append(row)
    if not rows:
        return {}, []
    metrics = _means("fim", rows)
    for kind, kind_rows in sorted(by_kind.items()):
        metrics.update(_means(f"fim_{kind}", kind_rows))
    return metrics, rows


def _means(prefix: str, rows: Sequence[dict[str, Any]]) -> dict[str, float]:
    return {f"{prefix}_exact_match": sum(r["exact_match"] for r in rows) / len(rows),
            f"{prefix}_edit_similarity": sum(r["edit_similarity"] for r in rows) / len(rows)}
