"""The fork server: a local single-rank chain's stages start warm instead of re-importing the stack four times.

    python -m jobs.forkserver.server SOCKET [--leave-out=NAME...] MODULE [MODULE...]

Started by the launcher (launchers/submit/forked_task.py) for a local chain whose every stage has one rank. It binds
SOCKET (in a 0700 directory; only its own user may connect), leaves out the NAMEs (modules the chain's recipe never
uses: jobs/spec/imports.py), imports the MODULEs (the stages' job modules: torch, transformers, TRL, PEFT, datasets)
in order, and forks one process per request (the protocol: jobs/spec/forkserver.py) as soon as it comes, between two
imports too: the first stage runs while the later stages' modules import. The
forked rank becomes what `python -u -m MODULE ARGS` would have been: the request's environment, working directory and
log files, unbuffered output, default signal handling; it then runs MODULE as __main__ and exits as that process
would. Its exit status goes back to the controller that asked for it.

The server is single-threaded, so it never forks while another Python thread holds a lock. It ends when its standard
input closes (the launcher ended), leaving forked ranks to finish on their own, as a rank of a killed controller
does. Tested by tests/integration/test_forkserver.py and every local single-rank chain.
"""

from __future__ import annotations

import atexit
import importlib
import io
import os
import runpy
import selectors
import signal
import socket
import struct
import sys
import threading
from typing import Any

from jobs.spec.forkserver import Lines, send
from jobs.spec.imports import leave_out

LEAVE_OUT = "--leave-out="
ACCEPT_WAIT_S = 0.2  # how often finished ranks are reaped while nothing else happens


def main(argv: list[str]) -> int:
    path, modules = argv[0], []
    for word in argv[1:]:
        if word.startswith(LEAVE_OUT):
            leave_out(word.removeprefix(LEAVE_OUT))
        else:
            modules.append(word)
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(path)  # at once: controllers connect while the stack imports, and wait for their answer
    listener.listen(16)
    host, server = os.getpid(), Server(listener)
    try:
        request = None
        for module in modules:  # a rank asked for meanwhile starts at once, importing what it lacks itself
            importlib.import_module(module)
            request = server.serve(wait=0)
            if request is not None or server.ended:
                break
        else:
            request = server.serve(wait=None)
    finally:
        if os.getpid() == host:
            server.close()
    if request is None:
        exit_without_teardown(0)  # the server holds nothing to flush: tearing the stack down is a second wasted
    return become_rank(request)  # a forked child, from here on; its exit is the rank's


class Server:
    """The listening socket, the controllers awaiting their ranks' exit statuses, and standard input: when it closes
    (the launcher ended), the server ends."""

    def __init__(self, listener: socket.socket) -> None:
        self.listener = listener
        self.waiting: dict[int, socket.socket] = {}  # forked pid → the controller awaiting its exit status
        self.ended = False
        self.selector = selectors.DefaultSelector()
        self.selector.register(listener, selectors.EVENT_READ)
        self.selector.register(sys.stdin, selectors.EVENT_READ)

    def serve(self, wait: float | None) -> dict[str, Any] | None:
        """Fork a rank per request, for what is ready now (`wait` 0) or until standard input closes (None). Returns
        the request in the forked child, None in the server."""
        while not self.ended:
            events = self.selector.select(ACCEPT_WAIT_S if wait is None else wait)
            reap(self.waiting)
            for key, _ in events:
                if key.fileobj is sys.stdin:
                    self.ended = not os.read(sys.stdin.fileno(), 4096)
                    continue
                connection, _ = self.listener.accept()
                request = read_request(connection)
                if request is None:
                    connection.close()
                elif self._fork(connection):
                    return request
            if wait is not None:
                break
        return None

    def _fork(self, connection: socket.socket) -> bool:
        """True in the forked child (the server's sockets closed there); in the server, the child is answered for."""
        pid = os.fork()
        if pid == 0:
            self.close()
            connection.close()
            return True
        try:
            send(connection, {"pid": pid})
        except OSError:  # its controller was stopped while it waited: the rank must not run unwatched
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
            connection.close()
            return False
        self.waiting[pid] = connection
        return False

    def close(self) -> None:
        self.selector.close()
        for connection in (self.listener, *self.waiting.values()):
            connection.close()


def read_request(connection: socket.socket) -> dict[str, Any] | None:
    """The request of a controller of this user; None (answered with an error where it can be) for any other."""
    connection.settimeout(10)
    try:
        uid = struct.unpack("3i", connection.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, 12))[2]
        if uid != os.getuid():
            return None
        request = Lines(connection).next()
        problem = check(request)
        if problem:
            send(connection, {"error": problem})
            return None
    except (OSError, ValueError):
        return None
    return request


def check(request: dict[str, Any] | None) -> str | None:
    if request is None:
        return "no request"
    if not (isinstance(request.get("module"), str) and isinstance(request.get("args"), list)
            and isinstance(request.get("env"), dict) and all(isinstance(request.get(key), str)
                                                             for key in ("cwd", "stdout", "stderr"))):
        return "a request needs module, args, env, cwd, stdout and stderr"
    if threading.active_count() != 1:
        return "the server runs other threads: forking it is not safe"
    torch = sys.modules.get("torch")
    if torch is not None and torch.cuda.is_initialized():  # an import touched the GPU: a forked child cannot use it
        return "CUDA was initialized while the stack was imported"
    return None


def reap(waiting: dict[int, socket.socket]) -> None:
    """Send each forked rank's exit status, once it ended, to the controller that asked for it."""
    for pid in list(waiting):
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            connection = waiting.pop(pid)
            try:
                send(connection, {"exit": os.waitstatus_to_exitcode(status)})
            except OSError:
                pass  # the controller ended first
            connection.close()


def become_rank(request: dict[str, Any]) -> int:
    """In the forked child: become `python -u -m MODULE ARGS` with the request's environment, directory and logs."""
    signal.signal(signal.SIGINT, signal.default_int_handler)
    for signum in (signal.SIGTERM, signal.SIGCHLD, signal.SIGUSR1, signal.SIGUSR2):
        signal.signal(signum, signal.SIG_DFL)
    os.environ.clear()
    os.environ.update(request["env"])
    os.chdir(request["cwd"])
    sys.path[0] = os.getcwd()  # where `python -m` looks first: its working directory
    stdin = os.open(os.devnull, os.O_RDONLY)
    os.dup2(stdin, 0)
    os.close(stdin)
    for fd, path in ((1, request["stdout"]), (2, request["stderr"])):
        log = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        os.dup2(log, fd)
        os.close(log)
    sys.stdout = sys.__stdout__ = _unbuffered(1)
    sys.stderr = sys.__stderr__ = _unbuffered(2)
    sys.argv = [request["module"], *request["args"]]
    try:
        runpy.run_module(request["module"], run_name="__main__", alter_sys=True)
        code = 0
    except SystemExit as stop:
        code = stop.code if isinstance(stop.code, int) else 0 if stop.code is None else _report(stop.code)
    exit_without_teardown(code)
    return code  # not reached


def _report(message: object) -> int:
    print(message, file=sys.stderr)
    return 1


def exit_without_teardown(code: int) -> None:
    """End as the interpreter would (wait for non-daemon threads, run atexit handlers, flush), but without tearing
    down every module: in a forked child that writes to each page shared with the server, copying hundreds of MB
    (2.3 s measured here, per stage). multiprocessing ends its forked children the same way. An exception other
    than SystemExit is left to the interpreter, which reports it and dies by the signal a KeyboardInterrupt
    stands for."""
    threading._shutdown()  # type: ignore[attr-defined]
    atexit._run_exitfuncs()
    for stream in (sys.stdout, sys.stderr):
        stream.flush()
    os._exit(code)


def _unbuffered(fd: int) -> io.TextIOWrapper:
    """Text output written through at once, as `python -u` gives: the launcher streams rank 0's log as it grows."""
    return io.TextIOWrapper(io.FileIO(fd, "w", closefd=False), encoding="utf-8", errors="backslashreplace",
                            write_through=True)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
