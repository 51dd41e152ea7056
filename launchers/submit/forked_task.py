"""Warm starts for local single-rank chains: the chain's fork server, and a rank it forks as its controller sees it.

A fresh process per stage re-imports torch, transformers, TRL, PEFT and datasets, four times for one chain. When every
stage of a local chain has one rank, the launcher starts one fork server (jobs/forkserver/server.py) that imports them
once, and each stage's controller asks it for its rank instead of starting `python -u -m submitit.core._submit`:

    with ForkServer.started(modules, log) as server:      # the launcher, around the chain
        env[SOCKET_ENV] = server.socket_path               # each controller's environment
    task = ForkedTask.start(socket_path, command, env, cwd, stdout, stderr)   # in the controller: Popen's poll and
    task.poll(); task.send_signal(signal.SIGINT)                               # send_signal, as submitit uses them

The forked rank is not the controller's child, so the controller records it (<job>_forked.json: pid and start time)
for `launch status` and `launch cancel` (launchers/submit/local_job.py). Anything that keeps a warm start from
happening (no server, a refusal) is a ForkUnavailable: the controller then starts the rank afresh.
"""

from __future__ import annotations

import contextlib
import os
import shlex
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

from jobs.spec.forkserver import Lines, send
from launchers.submit.processes import ProcessId

CONNECT_WAIT_S = 10.0  # for a server that was just started to bind its socket
ANSWER_WAIT_S = 300.0  # it answers once it has imported the stack: seconds, minutes on a loaded machine
STOP_WAIT_S = 5.0


class ForkUnavailable(Exception):
    """No warm start for this rank (why): start it afresh."""


class ForkServer:
    """One chain's fork server: its socket lies in a private directory, and it ends when the chain does."""

    def __init__(self, process: subprocess.Popen[bytes], directory: str) -> None:
        self.process, self.directory = process, directory
        self.socket_path = os.path.join(directory, "socket")

    @classmethod
    @contextlib.contextmanager
    def started(cls, modules: Sequence[str], log: Path, leave_out: Sequence[str] = ()) -> Iterator[ForkServer]:
        """A server importing `modules` (its own output to `log`) with the `leave_out` modules looking absent,
        stopped and cleaned up on exit."""
        directory = tempfile.mkdtemp(prefix="clusterft-fork-")  # 0700: no other user reaches the socket
        with log.open("ab") as output:
            process = subprocess.Popen(
                [sys.executable, "-m", "jobs.forkserver.server", os.path.join(directory, "socket"),
                 *(f"--leave-out={module}" for module in leave_out), *modules],
                stdin=subprocess.PIPE, stdout=output, stderr=output, start_new_session=True)
        server = cls(process, directory)
        try:
            yield server
        finally:
            server.stop()

    def stop(self) -> None:
        """Close its input (it ends by itself; ranks it forked run on), then remove the socket's directory."""
        if self.process.stdin is not None:
            self.process.stdin.close()
        try:
            self.process.wait(timeout=STOP_WAIT_S)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        shutil.rmtree(self.directory, ignore_errors=True)


class ForkedTask:
    """A rank the fork server forked, seen by its controller through Popen's `poll` and `send_signal`."""

    def __init__(self, connection: socket.socket, process: ProcessId) -> None:
        self.connection, self.process = connection, process
        self.pid = process.pid
        self.returncode: int | None = None
        self._lines = Lines(connection)

    @classmethod
    def start(cls, socket_path: str, command: Sequence[str], env: dict[str, str], cwd: str, stdout: Path,
              stderr: Path) -> ForkedTask:
        """Ask the server to fork `command` (`PYTHON -u -m MODULE ARGS...`, as submitit runs a rank)."""
        words = list(command)
        if words[1:3] != ["-u", "-m"] or len(words) < 4:
            raise ForkUnavailable(f"not a python -u -m command: {shlex.join(words)}")
        connection = connect(socket_path)
        connection.settimeout(ANSWER_WAIT_S)
        try:
            send(connection, {"module": words[3], "args": words[4:], "env": env, "cwd": cwd, "stdout": str(stdout),
                              "stderr": str(stderr)})
            answer = Lines(connection).next()
        except (OSError, ValueError) as err:
            connection.close()
            raise ForkUnavailable(f"the fork server did not answer ({err})") from None
        if answer is None or "error" in answer or type(answer.get("pid")) is not int:
            connection.close()
            raise ForkUnavailable(str((answer or {}).get("error", "the fork server ended")))
        process = ProcessId.of(answer["pid"])
        if process is None:  # ended already: its exit status is on its way
            process = ProcessId(answer["pid"], -1)
        connection.setblocking(False)
        return cls(connection, process)

    def poll(self) -> int | None:
        """Its exit status once it ended (negative: killed by that signal), else None."""
        if self.returncode is not None:
            return self.returncode
        try:
            message = self._lines.next()
        except BlockingIOError:
            return None
        except (OSError, ValueError):
            message = None
        if message is not None and type(message.get("exit")) is int:
            self.returncode = message["exit"]
        elif message is None and not self.process.alive():  # the server ended: its status is lost
            self.returncode = 1
        return self.returncode

    def send_signal(self, signum: int) -> None:
        if self.poll() is None:
            self.process.send(signum)


def connect(socket_path: str) -> socket.socket:
    deadline = time.monotonic() + CONNECT_WAIT_S
    while True:
        connection = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            connection.connect(socket_path)
            return connection
        except (FileNotFoundError, ConnectionRefusedError) as err:
            connection.close()
            if time.monotonic() > deadline:
                raise ForkUnavailable(f"no fork server at {socket_path} ({err.strerror})") from None
            time.sleep(0.05)
