"""Starting a run's stages through one Runner seam: the SLURM chain (launchers/submit/chain.py), or this machine
(launchers/submit/local.py: a local process per rank, or the debug executor in this process).

Each runner records the job ids in launch.json as it goes; tested through the CLI (tests/unit/test_dry_run.py,
tests/integration/test_local_training.py, tests/cluster/).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from launchers.submit.chain import submit_slurm_chain
from launchers.submit.local import run_debug_chain, run_local_chain
from launchers.submit.request import StartRequest
from launchers.submit.stage import Stage

Runner = Callable[[StartRequest, dict[str, Stage], dict[str, Any]], int]
RUNNERS: dict[str, Runner] = {"slurm": submit_slurm_chain, "local": run_local_chain, "debug": run_debug_chain}


def start(request: StartRequest, record: dict[str, Any]) -> int:
    """Run or submit `request.stages` with the runner of `request.executor`."""
    return RUNNERS[request.executor](request, request.tasks(), record)
