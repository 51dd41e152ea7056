"""Half-written run directories: every command on a damaged run exits 2 with one line naming the damaged file and
changes nothing; `launch status` lists every healthy run and marks the damaged one DAMAGED.

    .venv/bin/python -m pytest tests/unit/test_damaged_runs.py -q

No training: the run directories are written here, as a launch leaves them, then damaged.
"""

from __future__ import annotations

import json
import pickle
from collections.abc import Callable
from pathlib import Path

import pytest

from jobs.spec.rundir import RunDir
from launchers.recipe.load import resolve
from launchers.recipe.plan import make_plan
from tests.unit.launch_harness import CliResult, assert_one_error_line, tree

Launch = Callable[..., CliResult]
COMMANDS = [("status",), ("logs",), ("logs", "--stage", "prepare"), ("cancel",), ("resume",), ("export",),
            ("eval",), ("resume", "--stages", "train")]


def make_run(root: Path, name: str, first_job: int) -> RunDir:
    """runs/tiny-starcoder/<name>: a local lora run whose prepare and train jobs completed."""
    resolved = resolve("lora", "tiny-starcoder")
    run = RunDir.new(root / "runs", "tiny-starcoder", name)
    run.create()
    run.recipe_file.write_text(resolved.recipe.to_yaml(), encoding="utf-8")
    run.write_json(run.plan_file, make_plan(resolved).as_dict())
    jobs = {"prepare": str(first_job), "train": str(first_job + 1)}
    run.write_json(run.launch_file, {
        "argv": ["launch", "lora", "tiny-starcoder", "--local", "--name", name], "executor": "local",
        "stages": ["prepare", "train"], "jobs": jobs, "created": "2026-01-01T00:00:00+0000", "max_requeues": 3,
        "local_jobs": {job: f"tag-of-{job}" for job in jobs.values()}})
    for stage, job in jobs.items():
        with (run.submitit / f"{job}_0_result.pkl").open("wb") as handle:
            pickle.dump(("success", {"stage": stage, "padding": "x" * 200}), handle)
        (run.submitit / f"{job}_0_log.out").write_text(f"[{stage}] done\n", encoding="utf-8")
        run.record_attempt(stage, job, "here")
    return run


def edit_launch(run: RunDir, change: Callable[[dict], None]) -> None:
    record = json.loads(run.launch_file.read_text())
    change(record)
    run.launch_file.write_text(json.dumps(record))


def cut(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


DAMAGES: dict[str, tuple[Callable[[RunDir], None], str]] = {
    "empty launch.json": (lambda run: run.launch_file.write_text(""), "launch.json is not valid JSON (empty)"),
    "truncated launch.json": (lambda run: cut(run.launch_file), "launch.json is not valid JSON"),
    "launch.json of a list": (lambda run: run.launch_file.write_text("[1, 2]"), "launch.json is not a JSON object"),
    "launch.json not UTF-8": (lambda run: run.launch_file.write_bytes(b"\xff\xfe{}"), "launch.json is not UTF-8"),
    "non-numeric job id": (lambda run: edit_launch(run, lambda r: r["jobs"].update(train="abc")),
                           "launch.json has a job id that is not a number (train: 'abc')"),
    "job id of a number": (lambda run: edit_launch(run, lambda r: r["jobs"].update(train=17)),
                           "launch.json has a job id that is not a number (train: 17)"),
    "job id with escapes": (lambda run: edit_launch(run, lambda r: r["jobs"].update(train="1\x1b[2J\n")),
                            "launch.json has a job id that is not a number"),
    "jobs not an object": (lambda run: edit_launch(run, lambda r: r.update(jobs=["1"])),
                           'launch.json has no job of each stage ("jobs": [\'1\'])'),
    "no executor": (lambda run: edit_launch(run, lambda r: r.pop("executor")), "launch.json has no executor"),
    "unknown stage": (lambda run: edit_launch(run, lambda r: r.update(stages=["train", "bake"])),
                      "launch.json has no list of stages"),
    "launcher without start": (lambda run: edit_launch(run, lambda r: r.update(launcher={"pid": 1})),
                               "launch.json has no pid and start time of its launcher"),
    "truncated result": (lambda run: cut(run.submitit / "101_0_result.pkl"),
                         "101_0_result.pkl is not a whole submitit result (truncated?)"),
    "empty result": (lambda run: (run.submitit / "100_0_result.pkl").write_bytes(b""),
                     "100_0_result.pkl is not a whole submitit result"),
    "truncated forked ranks": (lambda run: (run.submitit / "101_forked.json").write_text('{"ranks": [{"pid"'),
                               "101_forked.json is not valid JSON"),
    "forked ranks of another shape": (lambda run: (run.submitit / "101_forked.json").write_text('{"ranks": [7]}'),
                                      '101_forked.json has no list of processes ("ranks": [{"pid": N, "start": T}])'),
    "missing plan.json": (lambda run: run.plan_file.unlink(), "plan.json is missing"),
    "truncated plan.json": (lambda run: cut(run.plan_file), "plan.json is not valid JSON"),
    "plan.json of another shape": (lambda run: run.plan_file.write_text('{"world_size": 1}'),
                                   "plan.json is not a plan (keys: world_size)"),
    "missing recipe.yaml": (lambda run: run.recipe_file.unlink(), "recipe.yaml is missing"),
    "empty recipe.yaml": (lambda run: run.recipe_file.write_text("\n"), "recipe.yaml is empty"),
    "truncated attempts.jsonl": (lambda run: run.attempts_file.write_bytes(run.attempts_file.read_bytes()[:-10]),
                                 "attempts.jsonl line 2 is not valid JSON"),
    "damaged cancelled.json": (lambda run: run.cancelled_file.write_text('{"jobs": '),
                               "cancelled.json is not valid JSON"),
    "cancelled.json of another shape": (lambda run: run.cancelled_file.write_text('{"jobs": {"101": 1}}'),
                                        'cancelled.json has no list of job ids ("jobs")'),
}


@pytest.fixture
def runs(tmp_path: Path) -> tuple[RunDir, RunDir]:
    """A healthy run and one to damage."""
    return make_run(tmp_path, "good", 200), make_run(tmp_path, "hurt", 100)


@pytest.mark.parametrize("damage", DAMAGES)
def test_every_command_on_a_damaged_run_is_one_line_naming_the_file(launch: Launch, runs: tuple[RunDir, RunDir],
                                                                     damage: str) -> None:
    _, hurt = runs
    spoil, expected = DAMAGES[damage]
    spoil(hurt)
    before = tree(hurt.path)
    for command in COMMANDS:
        line = assert_one_error_line(launch(command[0], "hurt", *command[1:]))
        assert expected in line, f"launch {' '.join(command)}: {line}"
        assert str(hurt.path) in line, line  # where the file is
        assert line.isprintable(), line
    assert tree(hurt.path) == before, "a command on a damaged run changed it"


@pytest.mark.parametrize("damage", DAMAGES)
def test_the_listing_marks_the_damaged_run_and_lists_the_others(launch: Launch, runs: tuple[RunDir, RunDir],
                                                                 damage: str) -> None:
    good, hurt = runs
    spoil, expected = DAMAGES[damage]
    spoil(hurt)
    result = launch("status")
    assert result.code == 0 and "Traceback" not in result.err, result.err
    rows = {line.split()[0]: line for line in result.out.splitlines()[1:]}
    assert "COMPLETED (2 stages)" in rows["tiny-starcoder/good"]
    assert rows["tiny-starcoder/hurt"].split(None, 2)[2].startswith("DAMAGED: "), rows
    relative = expected.replace("101_0_result", "submitit/101_0_result").replace("100_0_result",
                                                                                 "submitit/100_0_result")
    assert relative in rows["tiny-starcoder/hurt"], rows["tiny-starcoder/hurt"]
    assert all(line.isprintable() for line in result.out.splitlines())
    # the healthy run is still found, by name and by job id
    assert launch("status", "good").code == 0
    assert "good" in launch("status", "201").out


def test_damaged_outputs_are_named_by_status(launch: Launch, runs: tuple[RunDir, RunDir]) -> None:
    """export/vN/export.json and eval/*/results.json, cut short: `launch status RUN` names them."""
    good, _ = runs
    (good.exports / "v1").mkdir(parents=True)
    (good.exports / "v1" / "export.json").write_text('{"source": "fin')
    line = assert_one_error_line(launch("status", "good"))
    assert "export/v1/export.json is not valid JSON" in line
    (good.exports / "v1" / "export.json").write_text('{"source": "final", "model": {"bytes": "many"}}')
    (good.evals / "merged-1").mkdir(parents=True)
    (good.evals / "merged-1" / "results.json").write_text("")
    line = assert_one_error_line(launch("status", "good"))
    assert "eval/merged-1/results.json is not valid JSON (empty)" in line


def test_a_run_with_no_stage_started_is_not_completed(launch: Launch, runs: tuple[RunDir, RunDir]) -> None:
    _, hurt = runs
    edit_launch(hurt, lambda record: record.update(jobs={}))
    rows = launch("status").out
    assert "tiny-starcoder/hurt  local     NOT STARTED" in rows, rows


@pytest.mark.parametrize("content", ["", "data:\n  seq_length: 256\n"], ids=["empty", "no-name"])
def test_generate_on_a_run_whose_recipe_is_not_a_recipe(launch: Launch, runs: tuple[RunDir, RunDir],
                                                        content: str) -> None:
    """generate and judge read recipe.yaml without the run checks: the loader itself says the file is damaged."""
    _, hurt = runs
    hurt.recipe_file.write_text(content)
    line = assert_one_error_line(launch("generate", "hurt", "--prompt", "def f():"))
    assert "recipe.yaml: not a resolved recipe" in line, line
