"""A stand-in rank for tests/integration/test_forkserver.py: what a forked process sees, then an exit status.

    python -u -m forked_probe OUT_JSON EXIT_CODE [SLEEP_S]      # from a directory holding a copy of it

Prints a line at once (the log must show it while the process still runs), writes its working directory, argv,
environment, standard input and whether the stdlib's `wave` can be found (a fork server may leave it out) to
OUT_JSON, sleeps SLEEP_S (default 0), then exits with EXIT_CODE, leaving a thread to join and an atexit handler to
run.
"""

from __future__ import annotations

import atexit
import importlib.util
import json
import os
import sys
import threading
import time

if __name__ == "__main__":
    out, code = sys.argv[1], int(sys.argv[2])
    print("probe started", flush=False)  # no flush: unbuffered output is the fork server's job
    print("probe stderr", file=sys.stderr)
    with open(out, "w", encoding="utf-8") as handle:
        json.dump({"cwd": os.getcwd(), "argv": sys.argv, "env": dict(os.environ), "stdin": sys.stdin.read(),
                   "wave_found": importlib.util.find_spec("wave") is not None}, handle)
    time.sleep(float(sys.argv[3]) if len(sys.argv) > 3 else 0)
    atexit.register(print, "atexit ran", flush=True)  # an ending rank still runs its exit handlers
    threading.Thread(target=lambda: (time.sleep(0.3), print("thread done", flush=True))).start()  # and joins
    sys.exit(code)
