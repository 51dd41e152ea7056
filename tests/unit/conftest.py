"""Fixtures for the unit tests: every test runs in its own empty working directory with a clean environment.

The default runs root is ./runs, so `tmp_path / "runs"` is where a launch would write.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from jobs.spec.rundir import RUNS_DIR_ENV
from launchers.recipe.load import CATALOG_ENV
from tests.unit.launch_harness import CliResult, make_user_catalog, run_launch


@pytest.fixture(autouse=True)
def isolated(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    for variable in (CATALOG_ENV, RUNS_DIR_ENV, "MLFLOW_TRACKING_URI"):
        monkeypatch.delenv(variable, raising=False)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.chdir(tmp_path)


@pytest.fixture
def launch(capsys: pytest.CaptureFixture[str]) -> Callable[..., CliResult]:
    """`launch(*argv)` → CliResult, running `launchers.cli.main.main` in this process."""
    return lambda *argv: run_launch(capsys, *argv)


@pytest.fixture
def user_catalog(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """tmp_path/catalog/tiny-starcoder, a copy of the shipped recipe, on $CLUSTERFT_RECIPES."""
    return make_user_catalog(tmp_path, monkeypatch)
