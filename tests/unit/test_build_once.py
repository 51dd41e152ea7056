"""jobs.common.build_once: rank 0 builds, the other ranks wait; a failure of rank 0 ends their wait at once, and only for
the same attempt (a requeue never reads an earlier attempt's failure).

    .venv/bin/python -m pytest tests/unit/test_build_once.py -q
"""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest

from jobs.common.build_once import build_once, failure_file
from jobs.spec.context import RankContext
from jobs.spec.rundir import COMPLETE_MARKER


def ranks(tmp_path: Path, attempt: str) -> tuple[RankContext, RankContext]:
    return (RankContext(tmp_path, rank=0, world_size=2, attempt=attempt),
            RankContext(tmp_path, rank=1, world_size=2, attempt=attempt))


def test_a_failing_rank_0_ends_the_others_wait(tmp_path: Path) -> None:
    target = tmp_path / "base"
    main, other = ranks(tmp_path, "77.0")
    errors: list[BaseException] = []

    def waiter() -> None:
        try:
            build_once(target, other, lambda: None, timeout_s=60, what="the base")
        except BaseException as err:  # noqa: BLE001 - collected for the assertion
            errors.append(err)

    thread = threading.Thread(target=waiter)
    started = time.monotonic()
    thread.start()

    def broken() -> None:
        time.sleep(0.2)
        raise ValueError("data.source: line 3 is not JSON\nmore detail")

    with pytest.raises(ValueError):
        build_once(target, main, broken, timeout_s=60, what="the base")
    thread.join(timeout=10)
    assert time.monotonic() - started < 5, "the waiting rank did not wait out its timeout"
    assert "rank 0 failed to build the base (ValueError: data.source: line 3 is not JSON)" in str(errors[0])
    assert failure_file(target, "77.0").exists()


def test_a_requeue_ignores_an_earlier_failure_and_builds(tmp_path: Path) -> None:
    target = tmp_path / "base"
    failure_file(target, "77.0").write_text("ValueError: old\n")
    main, other = ranks(tmp_path, "77.1")

    def make() -> None:
        target.mkdir()
        (target / COMPLETE_MARKER).write_text("ok\n")

    waiter = threading.Thread(target=build_once, args=(target, other, lambda: None, 60, "the base"))
    waiter.start()
    time.sleep(0.3)  # the other rank is waiting, and must not read attempt 77.0's failure
    assert waiter.is_alive()
    build_once(target, main, make, timeout_s=60, what="the base")
    waiter.join(timeout=10)
    assert not waiter.is_alive() and not failure_file(target, "77.0").exists()
