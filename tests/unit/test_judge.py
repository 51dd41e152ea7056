"""`launch judge` against a real HTTP judge on loopback (tests/unit/judge_server.py): both orders asked for every
question, verdicts combined against position bias, rates in MLflow, and the API key nowhere but the header.

    .venv/bin/python -m pytest tests/unit/test_judge.py -q
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from pathlib import Path

import pytest

from jobs.interactive.judge import parse_verdict, read_questions
from jobs.spec.errors import UserError
from tests.unit.judge_server import JudgeServer
from tests.unit.launch_harness import CliResult, assert_one_error_line
from tests.unit.test_export import make_run
from tests.unit.test_merge import save_adapter

KEY = "sk-judge-0123456789abcdef0123456789abcdef"
QUESTIONS = ["Write a function that adds two numbers.", "What does `git rebase` do?", "Reverse a list in Python."]


@pytest.fixture
def two_runs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """runs r1 and r2 of tiny-llama/lora with different adapters, and a questions file (MT-Bench "turns" too)."""
    make_run(tmp_path, "lora", "r1")
    other, _ = make_run(tmp_path, "lora", "r2")
    for path in other.final.iterdir():
        if path.name != ".complete":
            path.unlink()
    save_adapter(other.path / "base", other.final, seed=9, target_modules=["q_proj", "v_proj"])
    questions = tmp_path / "questions.jsonl"
    rows = [{"question_id": 81, "turns": [QUESTIONS[0], "and now in C"]}, {"id": "git", "question": QUESTIONS[1]},
            {"question": QUESTIONS[2]}]
    questions.write_text("".join(json.dumps(r) + "\n" for r in rows))
    monkeypatch.setenv("JUDGE_API_KEY", KEY)
    return questions


def judge(launch: Callable[..., CliResult], server: JudgeServer, questions: Path, *extra: str) -> CliResult:
    return launch("judge", "r1", "r2", "--questions", str(questions), "--judge-url", server.url, "--judge-model",
                  "tiny-judge", "--max-new-tokens", "6", *extra)


def test_both_orders_are_asked_and_combined(tmp_path: Path, two_runs: Path, launch: Callable[..., CliResult]) -> None:
    with JudgeServer(KEY, mode="content") as server:
        result = judge(launch, server, two_runs)
    assert result.code == 0, result.err
    assert len(server.asked) == 6 and set(server.authorizations) == {f"Bearer {KEY}"}
    for question in QUESTIONS:
        orders = [(first, second) for q, first, second in server.asked if q == question]
        assert len(orders) == 2 and orders[0] == orders[1][::-1], "each pair is asked in both orders"

    (out,) = (tmp_path / "runs" / "tiny-llama" / "r1" / "judge").iterdir()
    rows = [json.loads(line) for line in (out / "judgments.jsonl").read_text().splitlines()]
    assert [r["id"] for r in rows] == ["81", "git", "3"]
    for row in rows:  # the content judge has no position bias: both orders agree, so every verdict is a win or loss
        a, b = (hashlib.sha256(row[k].encode()).hexdigest() for k in ("answer_a", "answer_b"))
        assert row["verdict"] == ("tie" if a == b else "win" if a < b else "loss")
    wins = sum(r["verdict"] == "win" for r in rows) / 3

    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{tmp_path / 'runs' / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("tiny-llama")
    assert experiment is not None
    (logged,) = client.search_runs([experiment.experiment_id], "tags.`clusterft.stage` = 'judge'")
    assert logged.data.metrics["judge/win_rate"] == pytest.approx(wins)
    assert logged.data.params["judge_model"] == "tiny-judge"
    assert f"win {wins:.3f}" in result.out

    for path in (tmp_path / "runs").rglob("*"):  # the key reached the judge's header and nothing else
        assert not path.is_file() or KEY.encode() not in path.read_bytes(), path
    assert KEY not in result.out + result.err


def test_a_position_biased_judge_yields_ties(two_runs: Path, launch: Callable[..., CliResult]) -> None:
    with JudgeServer(KEY, mode="first") as server:
        result = judge(launch, server, two_runs)
    assert result.code == 0, result.err
    assert "win 0.000, tie 1.000, loss 0.000 over 3 questions (orders disagreed on 100%)" in result.out


@pytest.mark.parametrize(
    ("mode", "key", "message"),
    [("broken", KEY, "/v1/models: HTTP 500 (after 3 attempts)"),
     ("content", "sk-wrong", "/v1/models: HTTP 401 (after 1 attempt)")],
)
def test_judge_failures_are_one_line(two_runs: Path, launch: Callable[..., CliResult], monkeypatch: pytest.MonkeyPatch,
                                     mode: str, key: str, message: str) -> None:
    monkeypatch.setattr("jobs.interactive.judge.time.sleep", lambda seconds: None)
    with JudgeServer(key, mode=mode) as server:
        line = assert_one_error_line(judge(launch, server, two_runs))
    assert line.endswith(message) and KEY not in line


def test_bad_judge_input(tmp_path: Path, two_runs: Path, launch: Callable[..., CliResult]) -> None:
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"question": "ok"}\n{"answer": 1}\n')
    assert assert_one_error_line(launch("judge", "r1", "r2", "--questions", str(bad), "--judge-url",
                                        "http://127.0.0.1:9/v1", "--judge-model", "m")).endswith(
        f'{bad}:2: needs "question" (or MT-Bench "turns"), a non-empty string')
    line = assert_one_error_line(launch("judge", "r1", "r2", "--questions", str(two_runs), "--judge-url",
                                        "http://user:hunter2@127.0.0.1:9/v1", "--judge-model", "m"))
    assert "carries credentials" in line and "hunter2" not in line
    assert "same run" in assert_one_error_line(launch("judge", "r1", "tiny-llama/r1", "--questions", str(two_runs),
                                                      "--judge-url", "http://127.0.0.1:9/v1", "--judge-model", "m"))


def test_verdict_parsing_and_question_files(tmp_path: Path) -> None:
    assert parse_verdict("A is longer but [[B]] is right") == "B"
    assert parse_verdict("[[A]] no wait [[C]]") == "C" and parse_verdict("no verdict") == "error"
    empty = tmp_path / "empty.jsonl"
    empty.write_text("\n")
    with pytest.raises(UserError, match="no questions"):
        read_questions(empty)
