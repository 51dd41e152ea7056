"""`launch --dry-run` and `launch --help`: light imports, golden sbatch scripts, the help text.

- A dry run of the 15B full fine-tune, in a fresh interpreter, imports none of torch, transformers, trl, peft,
  deepspeed or mlflow (the login node stays fast).
- The sbatch script a dry run prints is compared with tests/golden/*.sbatch (sys.executable shown as PYTHON).
  Regenerate them after an intended change, then read the diff:
      UPDATE_GOLDEN=1 .venv/bin/python -m pytest tests/unit/test_dry_run.py -q
- `launch --help` exits 0 and mentions the subcommands; its wall time is printed, never asserted.

    .venv/bin/python -m pytest tests/unit/test_dry_run.py -q -s     # -s shows the --help timing
"""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.unit.launch_harness import CliResult

Launch = Callable[..., CliResult]
GOLDEN = Path(__file__).resolve().parent.parent / "golden"
STAGE_MARKER = "\n# {stage} stage: sbatch script (submitit)\n"
HEAVY_MODULES = ("torch", "transformers", "trl", "peft", "deepspeed", "mlflow")
CLUSTER_FLAGS = ("-N", "2", "--gpus-per-node", "8", "-p", "gpu", "-t", "12:00:00")


def clean_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if k not in ("CLUSTERFT_RECIPES", "CLUSTERFT_RUNS_DIR", "MLFLOW_TRACKING_URI")}
    return {**env, "HF_HUB_OFFLINE": "1"}


def test_dry_run_imports_no_training_stack(tmp_path: Path) -> None:
    argv = ["full-ft", "starcoder15b", "--dry-run", *CLUSTER_FLAGS, "--runs-dir", str(tmp_path / "runs")]
    script = (
        "import json, sys\n"
        "from launchers.cli.main import main\n"
        f"code = main({argv!r})\n"
        f"loaded = {{name: name in sys.modules for name in {HEAVY_MODULES!r}}}\n"
        "print('MODULES=' + json.dumps({'code': code, 'loaded': loaded}))\n"
    )
    proc = subprocess.run([sys.executable, "-c", script], cwd=tmp_path, env=clean_env(),
                          capture_output=True, text=True, timeout=120, check=False)
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout.strip().splitlines()[-1].removeprefix("MODULES="))
    assert report["code"] == 0, proc.stderr
    assert report["loaded"] == dict.fromkeys(HEAVY_MODULES, False)
    assert "#SBATCH --nodes=2" in proc.stdout
    assert not (tmp_path / "runs").exists()


def sbatch_of(result: CliResult, stage: str = "train") -> str:
    """One stage's sbatch script from a dry run's output, with this interpreter shown as PYTHON."""
    assert result.code == 0, result.err
    assert result.err == ""
    marker = STAGE_MARKER.format(stage=stage)
    assert marker in result.out, result.out
    script = re.split(r"\n# \w+ stage: sbatch script", result.out.split(marker, 1)[1])[0].rstrip("\n") + "\n"
    return script.replace(shlex.quote(sys.executable), "PYTHON")


CONTAINERS = {
    "": (),
    "-apptainer": ("--container", "/images/clusterft.sif"),
    "-pyxis": ("--container-image", "clusterft:latest"),
}


@pytest.mark.parametrize("container", list(CONTAINERS), ids=["plain", "apptainer", "pyxis"])
@pytest.mark.parametrize("method", ["full-ft", "qlora"])
def test_sbatch_matches_golden(launch: Launch, method: str, container: str,
                               monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HOME", "/HF")
    result = launch(method, "starcoder15b", "--dry-run", *CLUSTER_FLAGS, *CONTAINERS[container], "--name", "golden",
                    "--runs-dir", "/RUNS")
    script = sbatch_of(result)
    golden = GOLDEN / f"starcoder15b-{method}{container}.sbatch"
    if os.environ.get("UPDATE_GOLDEN") == "1":
        golden.parent.mkdir(parents=True, exist_ok=True)
        golden.write_text(script, encoding="utf-8")
    assert golden.is_file(), f"missing {golden}: run with UPDATE_GOLDEN=1 to create it"
    assert script == golden.read_text(encoding="utf-8"), f"sbatch differs from {golden} (UPDATE_GOLDEN=1 rewrites it)"
    assert not Path("/RUNS").exists()


@pytest.mark.parametrize("method", ["full-ft", "qlora"])
def test_golden_sbatch_is_sane(method: str) -> None:
    """What the golden files promise, so a careless UPDATE_GOLDEN=1 cannot bless a wrong script."""
    lines = (GOLDEN / f"starcoder15b-{method}.sbatch").read_text(encoding="utf-8").splitlines()
    assert lines[0] == "#!/bin/bash"
    for directive in ("--nodes=2", "--ntasks-per-node=8", "--gpus-per-node=8", "--time=720", "--partition=gpu",
                      f"--job-name=starcoder15b-{method}-train", "--cpus-per-task=10", "--mem=0",
                      "--output=/RUNS/starcoder15b/golden/submitit/%j_0_log.out"):
        assert f"#SBATCH {directive}" in lines, directive
    srun = next(line for line in lines if line.startswith("srun "))
    assert srun.endswith("PYTHON -u -m submitit.core._submit /RUNS/starcoder15b/golden/submitit")
    assert not any(sys.prefix in line for line in lines), "machine-specific path in a golden file"


def test_container_modes_wrap_every_task() -> None:
    apptainer = (GOLDEN / "starcoder15b-full-ft-apptainer.sbatch").read_text(encoding="utf-8")
    assert "apptainer exec --nv --bind /RUNS,/HF /images/clusterft.sif python3 -u -m submitit.core._submit" in apptainer
    pyxis = (GOLDEN / "starcoder15b-full-ft-pyxis.sbatch").read_text(encoding="utf-8")
    assert "--container-image=clusterft:latest --container-mounts=/RUNS:/RUNS,/HF:/HF" in pyxis
    assert " python3 -u -m submitit.core._submit" in pyxis


def test_dry_run_shows_the_whole_chain(launch: Launch) -> None:
    """prepare → train → export → eval: dependants wait for the stage before and die with it; only train and eval
    ask for GPUs (eval a node's: one rank per GPU splits the generation), and only train spans the nodes."""
    result = launch("full-ft", "starcoder15b", "--dry-run", *CLUSTER_FLAGS, "--name", "golden", "--runs-dir", "/RUNS")
    prepare, train, export, evaluate = (sbatch_of(result, stage) for stage in ("prepare", "train", "export", "eval"))
    assert "--dependency" not in prepare and "--gpus-per-node" not in prepare and "#SBATCH --nodes=1" in prepare
    assert "afterok:<prepare job id>" in train and "#SBATCH --kill-on-invalid-dep=yes" in train
    assert "afterok:<train job id>" in export and "--gpus-per-node" not in export
    assert "afterok:<export job id>" in evaluate and "#SBATCH --gpus-per-node=8" in evaluate
    assert "#SBATCH --ntasks-per-node=8" in evaluate and "#SBATCH --nodes=1" in evaluate
    assert "#SBATCH --job-name=starcoder15b-full-ft-eval" in evaluate


def test_every_task_gets_its_cpus_and_a_crashed_rank_ends_the_step(launch: Launch) -> None:
    """srun does not inherit --cpus-per-task (SLURM >= 22.05) and, without --kill-on-bad-exit, the other ranks of a
    crashed one wait in a collective until it times out; GPU stages leave every GPU of the node to each task."""
    result = launch("full-ft", "starcoder15b", "--dry-run", *CLUSTER_FLAGS, "--name", "golden", "--runs-dir", "/RUNS")
    for stage in ("prepare", "train", "export", "eval"):
        lines = sbatch_of(result, stage).splitlines()
        cpus = next(line for line in lines if line.startswith("#SBATCH --cpus-per-task=")).removeprefix("#SBATCH ")
        srun = next(line for line in lines if line.startswith("srun "))
        assert f" {cpus} --kill-on-bad-exit=1" in srun, (stage, srun)
        assert ("--gpu-bind=none" in srun) == (stage in ("train", "eval")), (stage, srun)


def test_overrides_may_follow_flags(launch: Launch) -> None:
    result = launch("lora-fim", "starcoderbase-1b", "-p", "gpu", "training.max_steps=10", "--dry-run")
    assert result.code == 0, result.err
    assert "#SBATCH --partition=gpu" in result.out


def test_help_exits_zero_and_lists_commands(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    started = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "launchers.cli.main", "--help"], cwd=tmp_path, env=clean_env(),
                          capture_output=True, text=True, timeout=120, check=False)
    elapsed = time.perf_counter() - started
    with capsys.disabled():
        print(f"\n[timing] launch --help: {elapsed:.2f} s wall (informational, not asserted)")
    assert proc.returncode == 0, proc.stderr
    assert "launch recipes" in proc.stdout
    assert "launch show" in proc.stdout
    assert proc.stderr == ""
