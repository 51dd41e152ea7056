"""Reading the files a user names (recipe YAML, config.json, DeepSpeed JSON, data files) without hanging or a traceback.

    text = read_text(path, "recipes/x/lora.yaml", limit=RECIPE_BYTES)   # a UserError naming the file, or the text
    with open_regular(path, shown) as handle: ...                        # data files, read by the caller
    data = parse_json(text, shown)                                       # one line for bad or absurdly nested JSON

Only regular files are opened, and without blocking: a FIFO or a device named `data.jsonl` is refused instead of
hanging the launcher, a symlink loop is one line (`Too many levels of symbolic links`), and a file larger than its
limit is refused before it is read.
"""

from __future__ import annotations

import json
import os
import stat
from typing import IO, Any

from jobs.spec.errors import UserError

RECIPE_BYTES = 1_000_000  # recipe YAML and configs: the largest shipped one is under 4 KB


def open_regular(path: os.PathLike[str] | str, shown: str) -> IO[bytes]:
    """`path` opened for binary reading, or a UserError when it cannot be read or is not a regular file."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError as err:
        raise UserError(f"{shown}: cannot read: {err.strerror}") from None
    mode = os.fstat(fd).st_mode
    if not stat.S_ISREG(mode):
        os.close(fd)
        raise UserError(f"{shown}: not a regular file ({_kind(mode)})")
    os.set_blocking(fd, True)
    return os.fdopen(fd, "rb")


def read_text(path: os.PathLike[str] | str, shown: str, limit: int = RECIPE_BYTES) -> str:
    """The UTF-8 text of a regular file of at most `limit` bytes."""
    with open_regular(path, shown) as handle:
        raw = handle.read(limit + 1)
    if len(raw) > limit:
        raise UserError(f"{shown}: larger than {limit:,} bytes; a recipe or config file is a few KB")
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        raise UserError(f"{shown}: not UTF-8 text") from None


def parse_json(text: str | bytes, shown: str, *, numbered: bool = True) -> Any:
    """json.loads with its failures as one line naming `shown` (and, when `numbered`, the line JSON names; a caller
    parsing one line of a file passes `file:line` and numbered=False)."""
    try:
        return json.loads(text)
    except UnicodeDecodeError:
        raise UserError(f"{shown}: not UTF-8 text") from None
    except json.JSONDecodeError as err:
        where = f"{shown}:{err.lineno}" if numbered else shown
        raise UserError(f"{where}: invalid JSON: {err.msg} (column {err.colno})") from None
    except RecursionError:
        raise UserError(f"{shown}: JSON nested too deeply to read") from None
    except ValueError as err:  # an integer of thousands of digits
        raise UserError(f"{shown}: a value is not a usable number ({str(err).split(':')[0]})") from None


def _kind(mode: int) -> str:
    kinds = ((stat.S_ISDIR, "a directory"), (stat.S_ISFIFO, "a FIFO"), (stat.S_ISCHR, "a character device"),
             (stat.S_ISBLK, "a block device"), (stat.S_ISSOCK, "a socket"))
    return next((name for test, name in kinds if test(mode)), "not a plain file")
