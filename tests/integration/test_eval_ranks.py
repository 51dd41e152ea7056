"""The eval stage split over 2 CPU ranks (gloo) writes what 1 rank writes: the same greedy completions, in problem
order, and the same scores, through the real `launch eval` and local executor.

    .venv/bin/python -m pytest tests/integration/test_eval_ranks.py -q
"""

from __future__ import annotations

import json
from pathlib import Path

from tests.integration.conftest import assert_ok, launch
from tests.unit.test_export import make_run


def results(run: Path, ranks: int) -> tuple[dict[str, object], list[dict[str, object]], list[dict[str, object]]]:
    (out,) = [p for p in (run / "eval").iterdir() if json.loads((p / "results.json").read_text())["ranks"] == ranks]
    rows = [[json.loads(line) for line in (out / name).read_text().splitlines()] for name in ("humaneval.jsonl",
                                                                                              "fim.jsonl")]
    return json.loads((out / "results.json").read_text())["metrics"], rows[0], rows[1]


def test_two_ranks_generate_what_one_rank_generates(tmp_path: Path) -> None:
    run, _ = make_run(tmp_path, "lora")
    for ranks in ("1", "2"):
        result = launch("eval", "r1", "--ranks", ranks, "--problems", "5", "eval.fim_samples=5", "eval.heldout=false",
                        "eval.max_new_tokens=24", cwd=tmp_path)
        assert_ok(result)
        assert f"on {ranks} rank(s)" in result.stdout
    one, two = results(run.path, 1), results(run.path, 2)
    assert [r["task_id"] for r in two[1]] == [f"HumanEval/{i}" for i in range(5)]
    assert [r["completion"] for r in two[1]] == [r["completion"] for r in one[1]]
    assert [r["written"] for r in two[2]] == [r["written"] for r in one[2]]
    assert two[0] == one[0]
