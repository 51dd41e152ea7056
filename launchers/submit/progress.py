"""Rank 0's output as a person at a terminal wants it, while `launch` follows a local run.

    view = ProgressView(sys.stdout)            # a terminal: a live status line; anything else: lines unchanged
    view.feed(chunk)                           # text as it arrives (partial lines are kept until they end)
    view.close()                               # the status line ends with a newline

On a terminal, the train stage's `step N/M ...` lines (jobs.train.step_line) redraw one status line in place: a bar,
step/total, the line's numbers and an ETA from the step rate so far; every other line prints above it. Elsewhere (a
pipe, a file, CI) each line passes unchanged, so logs stay greppable. submitit's own INFO lines are not shown in
either case: they stay in the stage's log files (`launch logs RUN --stage S`).
"""

from __future__ import annotations

import re
import shutil
import time
from collections.abc import Callable
from typing import TextIO

STEP = re.compile(r"^step (\d+)/(\d+)  (.*)$")
SUBMITIT_INFO = re.compile(r"^submitit INFO \(")
BAR = 20


class ProgressView:
    def __init__(self, out: TextIO, tty: bool | None = None, clock: Callable[[], float] = time.monotonic) -> None:
        self.out = out
        self.tty = out.isatty() if tty is None else tty
        self.clock = clock
        self.pending = ""
        self.status = ""  # the status line on screen (a terminal only)
        self.first: tuple[int, float] | None = None  # (step, time) of the first step line seen

    def feed(self, text: str) -> None:
        lines = (self.pending + text).split("\n")
        self.pending = lines.pop()
        for line in lines:
            self._line(line)
        self.out.flush()

    def close(self) -> None:
        if self.pending:
            self._line(self.pending)
            self.pending = ""
        if self.status:
            self.out.write("\n")
            self.status = ""
        self.out.flush()

    def _line(self, line: str) -> None:
        if SUBMITIT_INFO.match(line):
            return
        step = STEP.match(line)
        if not self.tty:
            self.out.write(line + "\n")
        elif step and not step.group(3).startswith(("eval", "finished")):
            self._draw(int(step.group(1)), int(step.group(2)), step.group(3))
        else:
            self.out.write("\r\033[K" + line + "\n" + (self.status if self.status else ""))

    def _draw(self, step: int, total: int, numbers: str) -> None:
        now = self.clock()
        if self.first is None or step < self.first[0]:
            self.first = (step, now)
        done = min(step / total, 1.0) if total else 0.0
        bar = "█" * round(done * BAR) + "░" * (BAR - round(done * BAR))
        eta = ""
        steps_run, seconds = step - self.first[0], now - self.first[1]
        if steps_run > 0 and seconds > 0 and total > step:
            eta = f"  ETA {_clock((total - step) * seconds / steps_run)}"
        width = shutil.get_terminal_size((120, 24)).columns - 1
        self.status = f"[train] {bar} {step}/{total}  {numbers}{eta}"[:width]
        self.out.write("\r\033[K" + self.status)


def _clock(seconds: float) -> str:
    minutes, secs = divmod(int(seconds + 0.5), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"
