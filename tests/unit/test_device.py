"""A GPU stage's rank checks it sees a GPU for every rank of its node, then takes cuda:LOCAL_RANK.

CUDA cannot exist here: torch.cuda's three calls are replaced by a stand-in of a node with `visible` GPUs.

    .venv/bin/python -m pytest tests/unit/test_device.py -q
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from jobs.common.device import claim_gpu
from jobs.spec.context import RankContext


def node_with(visible: int, monkeypatch: pytest.MonkeyPatch) -> list[int]:
    taken: list[int] = []
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: visible)
    monkeypatch.setattr(torch.cuda, "set_device", taken.append)
    return taken


def test_rank_r_takes_cuda_r(monkeypatch: pytest.MonkeyPatch) -> None:
    taken = node_with(8, monkeypatch)
    claim_gpu(RankContext(Path("run"), rank=11, local_rank=3, world_size=16, local_world_size=8))
    assert taken == [3]


def test_a_task_bound_to_one_gpu_of_an_eight_rank_node_fails_first(monkeypatch: pytest.MonkeyPatch) -> None:
    taken = node_with(1, monkeypatch)
    with pytest.raises(RuntimeError, match=r"rank 3 sees 1 GPU\(s\) .* its node runs 8 ranks: .*--gpu-bind=none"):
        claim_gpu(RankContext(Path("run"), rank=3, local_rank=3, world_size=8, local_world_size=8))
    assert taken == []


def test_without_cuda_nothing_happens() -> None:
    claim_gpu(RankContext(Path("run"), local_world_size=8))
