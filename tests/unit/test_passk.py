"""pass@k against the closed form, stop-sequence truncation, HumanEval program assembly and score(). Fast."""

from __future__ import annotations

import math
import random

import pytest

from jobs.eval.humaneval import STOP_SEQUENCES, Problem, pass_at_k, program, score, truncate_completion


def closed_form(n: int, c: int, k: int) -> float:
    return 1.0 - math.comb(n - c, k) / math.comb(n, k)


@pytest.mark.parametrize(("n", "c", "k", "expected"), [
    (5, 0, 1, 0.0),
    (5, 5, 1, 1.0),
    (5, 5, 5, 1.0),
    (10, 3, 1, 0.3),
    (10, 3, 5, 1 - math.comb(7, 5) / math.comb(10, 5)),
    (10, 3, 8, 1.0),      # fewer than k failures: some draw of k always holds a pass
    (1, 1, 1, 1.0),
    (1, 0, 1, 0.0),
])
def test_hand_made_counts(n: int, c: int, k: int, expected: float) -> None:
    assert pass_at_k(n, c, k) == pytest.approx(expected, abs=1e-12)


def test_random_counts_match_the_closed_form() -> None:
    rng = random.Random(0)
    for _ in range(2000):
        n = rng.randint(1, 200)
        c, k = rng.randint(0, n), rng.randint(1, n)
        assert pass_at_k(n, c, k) == pytest.approx(closed_form(n, c, k), rel=1e-9, abs=1e-12), (n, c, k)


def test_large_n_stays_finite() -> None:  # C(1000, 500) overflows a float; the product form does not
    assert pass_at_k(1000, 1, 1) == pytest.approx(0.001)
    assert pass_at_k(1000, 10, 100) == pytest.approx(closed_form(1000, 10, 100), rel=1e-9)


@pytest.mark.parametrize(("n", "c", "k"), [(3, 0, 5), (5, 6, 1), (5, -1, 1), (5, 1, 0)])
def test_bad_counts_raise(n: int, c: int, k: int) -> None:
    with pytest.raises(ValueError, match="pass@k needs"):
        pass_at_k(n, c, k)


def test_score_averages_per_task_and_leaves_out_k_above_the_sample_count() -> None:
    results = {"a": [True, False, False, False], "b": [False] * 4, "c": [True] * 3 + [False]}
    got = score(results, ks=[1, 2, 10])
    assert set(got) == {"pass@1", "pass@2"}
    assert got["pass@1"] == pytest.approx((0.25 + 0 + 0.75) / 3)
    assert got["pass@2"] == pytest.approx((closed_form(4, 1, 2) + 0 + 1.0) / 3)
    with pytest.raises(ValueError):
        score({})


@pytest.mark.parametrize("stop", STOP_SEQUENCES)
def test_truncation_cuts_at_each_stop_sequence(stop: str) -> None:
    body = "    x = 1\n    # an indented comment stays\n    return x"
    assert truncate_completion(body + stop + "rest") == body


def test_truncation_takes_the_first_stop_and_keeps_text_without_one() -> None:
    assert truncate_completion("    return 1\nprint(f())\ndef g():\n") == "    return 1"
    assert truncate_completion("    return 1\n\n\ndef g():\n    pass\n#x") == "    return 1\n\n"
    assert truncate_completion("    return 1\n```\nThis function...") == "    return 1"
    untouched = "    if x:\n        return 1\n    # an indented comment\n    return 2\n"
    assert truncate_completion(untouched) == untouched
    assert truncate_completion("") == ""


def test_program_is_assembled_as_humaneval_checks_it() -> None:
    problem = Problem("T/0", 'def add(a, b):\n    """Add."""\n', "    return a + b\n",
                      "def check(candidate):\n    assert candidate(1, 2) == 3\n", "add")
    assert program(problem, "    return a + b\n") == (
        'def add(a, b):\n    """Add."""\n    return a + b\n\n'
        "def check(candidate):\n    assert candidate(1, 2) == 3\n\ncheck(add)")
