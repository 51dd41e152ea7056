"""S: what the sample's interpreter runs first (its text is handed over with `python -I -S -c`).

Reads the run's nonce from stdin, then runs program.py from its cwd (the sample's /tmp) and prints the nonce once the
program has returned. Exit statuses: 0 (with the nonce: passed), 3 syntax, 4 assertion, 5 crash, 6 MemoryError.
"""

import os
import sys
import traceback


def main() -> None:
    nonce = sys.stdin.readline().strip()
    with open("program.py", encoding="utf-8") as f:
        source = f.read()
    try:
        code = compile(source, "program.py", "exec")
    except (SyntaxError, ValueError) as e:
        print(f"{type(e).__name__}: {e}", file=sys.stderr, flush=True)
        os._exit(3)
    try:
        exec(code, {"__name__": "__main__", "__builtins__": __builtins__})
        sys.stdout.flush()
    except MemoryError:
        os.write(2, b"MemoryError\n")
        os._exit(6)
    except BaseException as e:
        try:
            sys.stdout.flush()
            traceback.print_exc()
            sys.stderr.flush()
        except BaseException:
            os.write(2, f"{type(e).__name__}\n".encode())
        os._exit(4 if isinstance(e, AssertionError) else 5)
    os.write(1, f"\n{nonce}\n".encode())
    os._exit(0)


if __name__ == "__main__":
    main()
