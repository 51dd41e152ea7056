"""A GPU stage's rank takes its GPU: cuda:LOCAL_RANK, after checking the task sees one GPU for each rank of its node.

SLURM leaves every GPU of the node visible to each task (srun --gpu-bind=none, launchers/submit/slurm.py); a site
whose binding shows a task fewer GPUs than its node runs ranks would put two ranks on one device, or fail later
with "invalid device ordinal". This fails first, with one line. On a machine without CUDA it does nothing.

    claim_gpu(context)      # at the start of the train and eval stages
Tested by tests/unit/test_device.py (CUDA replaced by a stand-in: there is no GPU here).
"""

from __future__ import annotations

import os

from jobs.spec.context import RankContext


def claim_gpu(context: RankContext) -> None:
    import torch

    if not torch.cuda.is_available():
        return
    visible = torch.cuda.device_count()
    if visible < context.local_world_size:
        raise RuntimeError(
            f"rank {context.rank} sees {visible} GPU(s) (CUDA_VISIBLE_DEVICES={os.environ.get('CUDA_VISIBLE_DEVICES')}) "
            f"but its node runs {context.local_world_size} ranks: every task must see every GPU of its node "
            "(srun --gpu-bind=none; check the site's GPU binding)")
    torch.cuda.set_device(context.local_rank)
