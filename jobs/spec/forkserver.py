"""What the launcher's local controllers and the fork server (jobs/forkserver/server.py) say to each other.

A local chain whose every stage has one rank imports the training stack once: a fork server imports it, then forks
one process per stage rank. Over a Unix socket in a private (0700) directory, one connection per rank, one JSON
object per line:

    controller → server   {"module": "submitit.core._submit", "args": [FOLDER], "env": {...}, "cwd": DIR,
                           "stdout": PATH, "stderr": PATH}
    server → controller   {"pid": N}            the rank was forked (or {"error": TEXT}: start it afresh instead)
    server → controller   {"exit": CODE}        it ended: its exit status (negative: killed by that signal)

Torch-free: both sides import it (launchers/submit/forked_task.py and the server).
"""

from __future__ import annotations

import json
import socket
from typing import Any

SOCKET_ENV = "CLUSTERFT_FORKSERVER"  # the server's socket path, in a local controller's environment
MAX_LINE = 1 << 20  # a request carries the whole environment: far below this


def send(connection: socket.socket, message: dict[str, Any]) -> None:
    connection.sendall(json.dumps(message).encode() + b"\n")


class Lines:
    """JSON objects read from a connection, one per line; `next()` is None at the end of the stream."""

    def __init__(self, connection: socket.socket) -> None:
        self.connection = connection
        self.buffer = b""

    def next(self) -> dict[str, Any] | None:
        """The next whole message; None when the peer closed. Raises BlockingIOError on a non-blocking connection
        with no whole line yet, ValueError on a line that is not a JSON object or is too long."""
        while b"\n" not in self.buffer:
            if len(self.buffer) > MAX_LINE:
                raise ValueError("message too long")
            chunk = self.connection.recv(65536)
            if not chunk:
                return None
            self.buffer += chunk
        line, self.buffer = self.buffer.split(b"\n", 1)
        message = json.loads(line)
        if not isinstance(message, dict):
            raise ValueError("not a JSON object")
        return message
