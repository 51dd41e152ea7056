"""The real SLURM cluster for `cluster` tests: brought up once per session by tests/cluster/slurm_up.sh (which
installs slurm-wlm, munge, slurmdbd and MariaDB when missing), taken down at the end if this session started it.
Autouse: every test module in this directory gets it, whichever runs first."""

from __future__ import annotations

import os
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

HERE = Path(__file__).parent
UP_TIMEOUT_S = 900


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if "tests/cluster/" in str(item.fspath):
            item.add_marker(pytest.mark.cluster)


@pytest.fixture(scope="session", autouse=True)
def slurm_cluster() -> Iterator[None]:
    if os.geteuid() != 0:
        pytest.skip("the test cluster needs root: it installs and starts slurm, munge and MariaDB")
    started = time.perf_counter()
    up = subprocess.run(["bash", str(HERE / "slurm_up.sh"), "--no-verify"], capture_output=True, text=True,
                        timeout=UP_TIMEOUT_S, check=False)
    assert up.returncode == 0, f"slurm_up.sh failed:\n{up.stdout[-3000:]}\n{up.stderr[-3000:]}"
    print(f"\n[cluster] {up.stdout.strip().splitlines()[-1]} ({time.perf_counter() - started:.1f} s)")
    yield
    if "already running" not in up.stdout:
        subprocess.run(["bash", str(HERE / "slurm_down.sh")], capture_output=True, timeout=120, check=False)
