"""What a job is told about where it runs: its rank and its run directory. Nothing else.

The launcher (`launchers.submit.stage`) builds this from submitit's environment, and exports the torch.distributed
world as DISTRIBUTED_VARIABLES; a test builds it by hand. Jobs never read SLURM_* variables themselves.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

# The torch.distributed world as the launcher exports it to a rank's environment (launchers.submit.stage).
DISTRIBUTED_VARIABLES = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "GROUP_RANK", "NODE_RANK",
                         "MASTER_ADDR", "MASTER_PORT")


@dataclass(frozen=True)
class RankContext:
    run_dir: Path
    rank: int = 0
    local_rank: int = 0
    world_size: int = 1
    local_world_size: int = 1  # ranks on this node
    attempt: str = "0"  # this attempt of the job, the same on every rank: job id and requeue count ("1234.0")

    @property
    def is_main(self) -> bool:
        """Global rank 0: the only rank that writes shared files and talks to MLflow."""
        return self.rank == 0
