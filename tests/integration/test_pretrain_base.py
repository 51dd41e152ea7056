"""tools/pretrain_base.py rebuilds the same bytes from its seed: two short builds (a few steps on a slice of the
standard library, through the real `launch pretrain tiny-coder-base --local`) give the same float32 final/ and the
same float16 weights, and a model card that names them. The slice is 20 files: fewer can leave the 2% held-out split
without a single packed row, which the train stage's evaluation does not survive.

    .venv/bin/python -m pytest tests/integration/test_pretrain_base.py -q
"""

from __future__ import annotations

import hashlib
import subprocess
import sys
from pathlib import Path

from tests.integration.conftest import LAUNCH_TIMEOUT_S, launch_env

BUILDER = Path(__file__).resolve().parents[2] / "tools" / "pretrain_base.py"


def build(tmp_path: Path, name: str) -> tuple[str, str, str]:
    """(float32 final/ sha256, float16 weights sha256, model card) of a 3-step build on the first 20 files."""
    out, work = tmp_path / f"{name}-base", tmp_path / f"{name}-work"
    done = subprocess.run([sys.executable, str(BUILDER), "--steps", "3", "--max-files", "20", "--out", str(out),
                           "--work", str(work)], env=launch_env(), capture_output=True, text=True,
                          timeout=LAUNCH_TIMEOUT_S, check=False)
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-4000:]
    final = work / "runs" / "tiny-coder-base" / "pretrain" / "final" / "model.safetensors"
    return (hashlib.sha256(final.read_bytes()).hexdigest(),
            hashlib.sha256((out / "model.safetensors").read_bytes()).hexdigest(), (out / "MODEL_CARD.md").read_text())


def test_two_builds_are_bit_for_bit_identical(tmp_path: Path) -> None:
    first, second = build(tmp_path, "a"), build(tmp_path, "b")
    assert first[:2] == second[:2]
    assert f"`{first[1]}`" in first[2] and "20 files" in first[2] and "3 steps" in first[2]
