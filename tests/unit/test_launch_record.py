"""launch.json records the resolved sbatch options and container, and a resume reads them back — not the command
line (records written before they were kept still resume, through the command line they recorded).

    .venv/bin/python -m pytest tests/unit/test_launch_record.py -q
"""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

from jobs.spec.rundir import RunDir
from launchers.cli.main import container_of, run_parser, slurm_options
from launchers.cli.runs import resolved_from_argv
from launchers.recipe.load import resolve
from launchers.recipe.plan import make_plan
from launchers.submit.request import StartRequest

ARGV = ["qlora", "starcoder15b", "-N", "2", "-p", "gpu", "-A", "proj", "--qos", "high", "--setup", "module load cuda",
        "--container-image", "nvcr.io/clusterft:1", "--dependency", "afterok:42", "--no-requeue", "-J", "mine"]


def launched(tmp_path: Path) -> tuple[StartRequest, dict]:
    args = run_parser().parse_intermixed_args(ARGV)
    recipe = resolve("qlora", "starcoder15b", ["resources.nodes=2", 'resources.partition="gpu"']).recipe
    plan = make_plan(resolve("qlora", "starcoder15b", ["resources.nodes=2"]))
    run = RunDir.new(tmp_path, "starcoder15b", "r1")
    run.create()
    run.write_json(run.plan_file, plan.as_dict())
    request = StartRequest(run, recipe, plan, "slurm", ("prepare", "train"), slurm_options(args, recipe),
                           container_of(args), max_requeues=5)
    record = json.loads(json.dumps(request.launch_record(["launch", *ARGV][1:])))  # as written to and read from disk
    return request, record


def test_a_resume_reads_the_recorded_options_back(tmp_path: Path) -> None:
    request, record = launched(tmp_path)
    again = StartRequest.again(request.run, record, request.recipe, ("train",), record["resolved"])
    assert again.options == replace(request.options, dependency=None)  # the first launch waited for it already
    assert again.options.setup == ("module load cuda",) and again.options.account == "proj"
    assert not again.options.requeue and again.options.job_name == "mine"
    assert again.container == request.container and again.container.pyxis_image == "nvcr.io/clusterft:1"
    assert (again.plan, again.max_requeues, again.stages, again.created) == (request.plan, 5, ("train",), None)


def test_an_older_record_resumes_through_its_command_line(tmp_path: Path) -> None:
    request, record = launched(tmp_path)
    older = resolved_from_argv(record["argv"], request.recipe)
    recorded = StartRequest.again(request.run, record, request.recipe, ("train",), record["resolved"])
    assert StartRequest.again(request.run, record, request.recipe, ("train",), older) == recorded
