"""One rank builds a shared directory, every other rank waits for it, and a failure is never waited out.

    from jobs.common.build_once import build_once
    build_once(target, context, build=lambda: make(target), timeout_s=600, what="the random-init base")

Rank 0 runs `build` unless `target` is already marked complete (`build` writes the COMPLETE_MARKER itself, last).
If `build` raises, rank 0 first writes <target>.failed-<attempt> with the error's first line, so the ranks of the
same attempt (context.attempt: job id and requeue count) waiting for the marker raise at once with that line instead
of sleeping until the timeout (SLURM does not stop the other tasks of a job when one of them fails). Another
attempt never reads it: a requeue or a later run waits for its own rank 0.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

from jobs.spec.context import RankContext
from jobs.spec.rundir import COMPLETE_MARKER, write_atomic

POLL_S = 0.5


def failure_file(target: Path, attempt: str) -> Path:
    return target.with_name(f"{target.name}.failed-{attempt}")


def build_once(target: Path, context: RankContext, build: Callable[[], None], timeout_s: float, what: str) -> None:
    failed = failure_file(target, context.attempt)
    if context.is_main and not (target / COMPLETE_MARKER).exists():
        for stale in target.parent.glob(f"{target.name}.failed-*"):
            stale.unlink(missing_ok=True)
        try:
            build()
        except BaseException as err:
            target.parent.mkdir(parents=True, exist_ok=True)
            write_atomic(failed, f"{type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}\n")
            raise
    deadline = time.monotonic() + timeout_s
    while not (target / COMPLETE_MARKER).exists():
        if failed.exists():
            raise RuntimeError(f"rank {context.rank}: rank 0 failed to build {what} ({failed.read_text().strip()})")
        if time.monotonic() > deadline:
            raise TimeoutError(f"rank {context.rank}: rank 0 did not build {what} at {target} within {timeout_s:.0f} s")
        time.sleep(POLL_S)
