"""Guards a user meets before anything is submitted: no sbatch on this machine, SLURM-only flags with --local, a
relative data path (checked like any local file), a secret-looking override (never echoed, never written).

    .venv/bin/python -m pytest tests/unit/test_launch_guards.py -q
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest

from launchers.cli.main import main


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_submitting_where_there_is_no_sbatch_is_one_line_and_leaves_nothing(
        tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("PATH", str(tmp_path))  # no sbatch anywhere
    code, _, err = run(capsys, "lora", "tiny-starcoder")
    assert code == 2 and err.startswith("launch: error: sbatch not found") and err.count("\n") == 1
    assert not (tmp_path / "runs").exists()


@pytest.mark.parametrize("flags", [["-N", "2", "--local"], ["--gpus-per-node", "1", "--debug"]])
def test_slurm_only_flags_are_refused_locally(capsys: pytest.CaptureFixture[str], flags: list[str]) -> None:
    code, _, err = run(capsys, "lora", "tiny-starcoder", "--dry-run", *flags)
    assert code == 2 and "SLURM only" in err


def test_a_relative_data_path_is_checked_like_any_local_file(
        tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "mine.jsonl").write_text('{"prompt": "a", "completion": "b"}\nnot json\n')
    code, _, err = run(capsys, "lora", "tiny-starcoder", "--dry-run", "data.source=mine.jsonl",
                          "data.format=prompt_completion")
    assert code == 2 and err.startswith("launch: error: mine.jsonl:2: invalid JSON")


def test_a_secret_in_an_override_is_redacted_and_never_echoed(capsys: pytest.CaptureFixture[str]) -> None:
    secret = "hf_" + "a1B2c3D4e5F6g7H8i9J0k1L2m3N4o5P6"
    code, out, err = run(capsys, "show", "lora", "tiny-starcoder", f"description={secret}")
    assert code == 0 and "***redacted***" in out
    assert secret not in out + err


@pytest.mark.parametrize(("text", "message"), [
    ("afterok:4242424_7", "job 4242424_7 does not exist"),  # an array task id is a valid dependency
    ("afterok:4242424+10", "job 4242424 does not exist"),
    ("afterok:12x", "'afterok:12x' is not TYPE:JOBID"),
    ("before:1", "'before:1' is not TYPE:JOBID"),
])
def test_dependency_format_and_lookup(text: str, message: str) -> None:
    from jobs.spec.errors import UserError
    from launchers.submit.slurm import check_dependency

    with pytest.raises(UserError, match=re.escape(message)):
        check_dependency(text)


def test_a_refused_first_submission_leaves_no_directory(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    """sbatch refuses (a stand-in here; tests/cluster/test_slurm.py has the real one): the run directory, and the
    runs root this first launch made, are gone again."""
    shim = tmp_path / "bin" / "sbatch"
    shim.parent.mkdir()
    shim.write_text("#!/bin/sh\necho 'sbatch: error: invalid partition specified: nosuch' >&2\nexit 1\n")
    shim.chmod(0o755)
    monkeypatch.setenv("PATH", f"{shim.parent}:{os.environ['PATH']}")
    monkeypatch.chdir(tmp_path)
    code, _, err = run(capsys, "lora", "tiny-starcoder", "-p", "nosuch")
    assert code == 2 and err == "launch: error: sbatch refused the prepare job: invalid partition specified: nosuch\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bin"]
