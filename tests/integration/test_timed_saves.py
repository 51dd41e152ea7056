"""Saving by wall time on 2 real gloo ranks whose clocks disagree: rank 0 decides, every rank saves at the same
step (a collective save where ranks disagree would hang), and the interval restarts at every save.

    .venv/bin/python -m pytest tests/integration/test_timed_saves.py -q
"""

from __future__ import annotations

import os
import socket
from types import SimpleNamespace

import torch.multiprocessing as mp

STEPS = 12
MINUTES = 1.0


def steps_that_save(rank: int, world: int, port: int, queue: mp.Queue) -> None:
    import torch.distributed as dist

    from jobs.train.save_policy import TimedSaves

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    now = [0.0]
    # Rank 0's steps take 25 s, rank 1's 7 s: by its own clock rank 1 would save every 9th step, rank 0 every 3rd.
    step_s = 25.0 if rank == 0 else 7.0
    saves = TimedSaves(MINUTES, clock=lambda: now[0])
    state = SimpleNamespace(global_step=0, max_steps=STEPS)
    saves.on_train_begin(None, state, None)
    saved = []
    for step in range(1, STEPS + 1):
        now[0] += step_s
        state.global_step = step
        control = SimpleNamespace(should_save=False)
        saves.on_step_end(None, state, control)
        if control.should_save:
            saved.append(step)
            saves.on_save(None, state, control)
    dist.barrier()
    dist.destroy_process_group()
    queue.put((rank, saved))


def test_every_rank_saves_when_rank_zero_says_so() -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    context = mp.get_context("spawn")
    queue = context.Queue()
    workers = [context.Process(target=steps_that_save, args=(rank, 2, port, queue)) for rank in range(2)]
    for worker in workers:
        worker.start()
    results = dict(queue.get(timeout=300) for _ in workers)
    for worker in workers:
        worker.join(timeout=60)
        assert worker.exitcode == 0
    # rank 0's clock: 60 s have passed after steps 3, 6, 9 (25 s each, restarting at each save); step 12 is the last
    assert results == {0: [3, 6, 9], 1: [3, 6, 9]}
