"""Each stage asks SLURM for what it needs: CPU stages no GPU and not the GPU partition, per-stage partition, CPUs,
memory and time, the site's own sbatch directives and srun arguments, and the GPU type as a constraint or a typed
GPU count. Read from the sbatch scripts a dry run prints (the same parameters a submission uses).

    .venv/bin/python -m pytest tests/unit/test_stage_resources.py -q
"""

from __future__ import annotations

from collections.abc import Callable

import pytest

from tests.unit.launch_harness import CliResult, assert_one_error_line
from tests.unit.test_dry_run import sbatch_of

Launch = Callable[..., CliResult]
CLUSTER = ("-N", "2", "-p", "gpu", "--name", "r", "--runs-dir", "/RUNS")


def directives(result: CliResult, stage: str) -> dict[str, str]:
    found = {}
    for line in sbatch_of(result, stage).splitlines():
        if line.startswith("#SBATCH --"):
            key, _, value = line.removeprefix("#SBATCH --").partition("=")
            found[key] = value
    return found


def srun_line(result: CliResult, stage: str) -> str:
    return next(line for line in sbatch_of(result, stage).splitlines() if line.startswith("srun "))


def test_cpu_stages_go_to_the_cpu_partition_without_gpus(launch: Launch) -> None:
    result = launch("full-ft", "starcoder15b", "--dry-run", *CLUSTER, "--cpu-partition", "cpu")
    for stage in ("prepare", "export"):
        cpu = directives(result, stage)
        assert cpu["partition"] == "cpu" and "gpus-per-node" not in cpu, (stage, cpu)
        assert cpu["mem"] != "0" and cpu["time"] == "240", (stage, cpu)  # the recipe's stages: section
    train, evaluate = directives(result, "train"), directives(result, "eval")
    assert train["partition"] == evaluate["partition"] == "gpu" and train["gpus-per-node"] == "8"
    assert train["mem"] == "0" and train["time"] == "1440" and evaluate["time"] == "360"
    assert " --kill-on-bad-exit=1" in srun_line(result, "train") and "--cpus-per-task=10" in srun_line(result, "train")


def test_without_a_cpu_partition_cpu_stages_take_the_sites_default(launch: Launch) -> None:
    result = launch("lora-fim", "starcoderbase-1b", "--dry-run", "-p", "gpu", "--runs-dir", "/RUNS")
    prepare = directives(result, "prepare")
    assert "partition" not in prepare and "gpus-per-node" not in prepare and "mem" not in prepare


def test_a_stage_override_changes_that_stage_only(launch: Launch) -> None:
    result = launch("full-ft", "starcoder15b", "--dry-run", *CLUSTER, "resources.stages.eval.partition=\"debug\"",
                    "resources.stages.eval.time=30", "resources.stages.prepare.cpus_per_task=32")
    assert directives(result, "eval")["partition"] == "debug" and directives(result, "eval")["time"] == "30"
    assert directives(result, "prepare")["cpus-per-task"] == "32"
    assert "--cpus-per-task=32 " in srun_line(result, "prepare")
    assert directives(result, "train")["partition"] == "gpu" and directives(result, "train")["time"] == "1440"


def test_site_directives_reach_every_stage_and_submitits_wckey_is_gone(launch: Launch) -> None:
    plain = launch("full-ft", "starcoder15b", "--dry-run", *CLUSTER)
    assert all("wckey" not in directives(plain, stage) for stage in ("prepare", "train", "export", "eval"))
    result = launch("full-ft", "starcoder15b", "--dry-run", *CLUSTER, "--sbatch", "reservation=maint",
                    "--sbatch", "wckey=proj42", "--srun=--mpi=pmix", "--name", "r2")
    for stage in ("prepare", "train", "export", "eval"):
        found = directives(result, stage)
        assert found["reservation"] == "maint" and found["wckey"] == "proj42", (stage, found)
        assert " --mpi=pmix " in srun_line(result, stage)


@pytest.mark.parametrize(("mode", "expected"), [
    ("constraint", {"constraint": "a100-80gb", "gpus-per-node": "8"}),
    ("gres", {"gpus-per-node": "a100-80gb:8"}),
    ("none", {"gpus-per-node": "8"}),
])
def test_the_gpu_type_as_the_site_configures_it(launch: Launch, mode: str, expected: dict[str, str]) -> None:
    result = launch("full-ft", "starcoder15b", "--dry-run", *CLUSTER, f"resources.gpu_type_as={mode}")
    train = directives(result, "train")
    assert {key: train.get(key) for key in expected} == expected
    assert ("constraint" in train) == (mode == "constraint")
    assert "constraint" not in directives(result, "prepare") and "gpus-per-node" not in directives(result, "export")


def test_the_gpu_constraint_joins_the_users(launch: Launch) -> None:
    result = launch("full-ft", "starcoder15b", "--dry-run", *CLUSTER, "--constraint", "ib|roce",
                    "resources.gpu_type_as=constraint")
    assert directives(result, "train")["constraint"] in ("'(ib|roce)&a100-80gb'", "(ib|roce)&a100-80gb")


@pytest.mark.parametrize(("argv", "message"), [
    (("--sbatch", "partition=x"), "partition: set by the launcher; use -p/--partition or --cpu-partition"),
    (("--sbatch", "reservation"), "flag --sbatch reservation: expected KEY=VALUE"),
    (("--sbatch", "Bad_Key=1"), "is not an sbatch option name"),
    (("--srun", "pmix"), "'pmix': an srun option"),
    (("resources.stages.export.mem=lots",), "not a SLURM memory size"),
    (("--sbatch", "signal=B:USR1@60"), "sbatch: signal: set by the launcher"),
    (("--sbatch", "comment=hf_abcdefghijklmnopqrstuvwxyz1234567"), "carries a secret"),
    (("--srun=--export=TOKEN=ghp_abcdefghijklmnopqrstuvwxyz0123456789",), "carries a secret"),
])
def test_bad_site_directives_are_one_line(launch: Launch, argv: tuple[str, ...], message: str) -> None:
    line = assert_one_error_line(launch("full-ft", "starcoder15b", "--dry-run", *CLUSTER, *argv))
    assert message in line, line
    assert "ghp_" not in line and "hf_a" not in line  # a refused secret is not echoed either
