"""The background thread that sends a stage's spool while the stage runs: a jobs.track.sender.Sender in a loop.

    thread = SenderThread(Sender(run_dir, uri), say=print)
    thread.start()                  # rounds of Sender.send() while the stage appends to the spool
    left = thread.flush(timeout)    # at the stage's end: a bounded wait; left.remaining is what was not sent
    thread.stop()

jobs.track.tracker.Tracker runs one on rank 0 and tells, once each, when the server goes away, comes back, or refuses
an operation. Tested through the Tracker by tests/unit/test_tracking_spool.py (a stage during an outage) and
tests/integration/test_mlflow_tracking.py.
"""

from __future__ import annotations

import sys
import threading
import time
from collections.abc import Callable

from jobs.spec.rundir import public_uri
from jobs.track.sender import Sender, SendResult, describe


class SenderThread:
    """Drains the spool in the background while a stage runs: a round every `interval` seconds, every `retry`
    seconds while the server is unreachable. `flush(timeout)` waits, bounded, for everything to be sent."""

    def __init__(self, sender: Sender, interval: float = 2.0, retry: float = 5.0,
                 say: Callable[[str], None] | None = None) -> None:
        self.sender = sender
        self.interval = interval
        self.retry = retry
        self.say = say or (lambda text: print(text, file=sys.stderr, flush=True))
        self.total = SendResult()
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._done = threading.Condition()
        self._started = 0  # rounds begun
        self._finished: list[SendResult] = []  # results of rounds ended, in order
        self._flushing = False
        self._down = False
        self._refused_said = 0
        self._thread = threading.Thread(target=self._loop, name="mlflow-spool-sender", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def _loop(self) -> None:
        while not self._stop.is_set():
            with self._done:
                self._started += 1
            try:
                result = self.sender.send(should_stop=self._stop.is_set, count_remaining=False)
            except Exception as err:  # noqa: BLE001 - a bug here must not take the stage down
                result = SendResult(error=f"sender failed: {describe(err)}", remaining=1)
            self._report(result)
            with self._done:
                self.total.add(result)
                self._finished.append(result)
                self._done.notify_all()
            pause = self.retry if result.error or result.busy else self.interval
            self._wake.wait(min(pause, 1.0) if self._flushing else pause)
            self._wake.clear()

    def _report(self, result: SendResult) -> None:
        uri = public_uri(self.sender.uri)
        if result.error and not self._down:
            self._down = True
            self.say(f"[tracking] MLflow at {uri} unreachable ({result.error}): spooling to "
                     f"{self.sender.spool.dir}; training goes on")
        elif not result.error and not result.busy and self._down:
            self._down = False
            self.say(f"[tracking] MLflow at {uri} reachable again: sending the spool")
        refused = self.sender.refused_reasons
        if len(refused) > self._refused_said:
            self.say(f"[tracking] MLflow refused {len(refused) - self._refused_said} operation(s) ({refused[-1]}); "
                     f"kept in {self.sender.spool.dir}/*.rejected.jsonl")
            self._refused_said = len(refused)

    def flush(self, timeout: float) -> SendResult:
        """Wait (at most `timeout` s) for a round that began after this call to leave nothing behind."""
        deadline = time.monotonic() + timeout
        with self._done:
            first = self._started + 1 if self._thread.is_alive() else None
            self._flushing = True
        self._wake.set()
        with self._done:
            while first is not None:
                ended = self._finished[first - 1:] if len(self._finished) >= first else []
                if any(r.remaining == 0 and not r.error and not r.busy for r in ended):
                    break
                left = deadline - time.monotonic()
                if left <= 0 or not self._thread.is_alive():
                    break
                self._done.wait(min(left, 1.0))
            last = self._finished[-1] if self._finished else SendResult()
        pending = self.sender.spool.pending()
        return SendResult(remaining=pending.operations, remaining_points=pending.points, error=last.error)

    def stop(self, timeout: float = 2.0) -> None:
        """Stop after the current call (bounded wait); a call still in flight ends with the process."""
        self._stop.set()
        self._wake.set()
        if self._thread.is_alive():
            self._thread.join(timeout)
