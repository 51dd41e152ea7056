"""The GPU acceptance script starts anywhere: without CUDA every part says it skipped, in one line, and nothing is
written (on a GPU machine it runs them: bench/gpu/acceptance.py).

    .venv/bin/python -m pytest tests/unit/test_acceptance_script.py -q
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch

SCRIPT = Path(__file__).resolve().parents[2] / "bench" / "gpu" / "acceptance.py"


@pytest.mark.skipif(torch.cuda.is_available(), reason="with CUDA the parts run (minutes): run the script itself")
def test_without_cuda_each_part_skips_in_one_line(tmp_path: Path) -> None:
    out = tmp_path / "benchmarks.md"
    done = subprocess.run([sys.executable, str(SCRIPT), "--out", str(out)], capture_output=True, text=True,
                          timeout=120, check=False)
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    parts = ("gpu-tests", "full-ft", "lora-qlora", "fsdp-qlora", "vllm", "planner")
    assert lines == [f"[acceptance] {part}: skipped: no CUDA device here" for part in parts]
    assert not out.exists()
