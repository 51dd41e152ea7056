"""Fixtures for the unit tests: every test runs in its own empty working directory with a clean environment,
offline, with stubs of the catalog's hub models in the hub cache.

The default runs root is ./runs, so `tmp_path / "runs"` is where a launch would write.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import huggingface_hub.constants as hub_constants
import pytest

from jobs.spec.rundir import RUNS_DIR_ENV
from launchers.recipe.load import CATALOG_ENV
from tests.hub_standin import cached_snapshot, catalog_stubs
from tests.unit.launch_harness import CliResult, make_user_catalog, run_launch


@pytest.fixture(scope="session")
def hub_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A hub cache holding a stub of every hub model of the shipped catalog, as a login node that fetched them."""
    cache = tmp_path_factory.mktemp("hub-cache")
    for repo_id, files in catalog_stubs().items():
        cached_snapshot(cache, repo_id, files)
    return cache


@pytest.fixture(autouse=True)
def isolated(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, hub_cache: Path) -> None:
    """Offline, with the catalog's hub models in the cache (for subprocesses through the environment, for this
    process through huggingface_hub's constants, read when it was imported)."""
    for variable in (CATALOG_ENV, RUNS_DIR_ENV, "MLFLOW_TRACKING_URI", "HF_TOKEN"):
        monkeypatch.delenv(variable, raising=False)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(hub_cache))
    monkeypatch.setattr(hub_constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(hub_constants, "HF_HUB_CACHE", str(hub_cache))
    monkeypatch.chdir(tmp_path)


@pytest.fixture
def launch(capsys: pytest.CaptureFixture[str]) -> Callable[..., CliResult]:
    """`launch(*argv)` → CliResult, running `launchers.cli.main.main` in this process."""
    return lambda *argv: run_launch(capsys, *argv)


@pytest.fixture
def user_catalog(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """tmp_path/catalog/tiny-starcoder, a copy of the shipped recipe, on $CLUSTERFT_RECIPES."""
    return make_user_catalog(tmp_path, monkeypatch)
