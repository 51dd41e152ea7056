"""Which files of a source directory become documents (format code): the rule the launch check and prepare share.

    for path, skipped in code_files(Path("my-repo"), "**/*.py"):
        ...   # skipped is None for a file to read, else why not ("vendored or hidden directory", "over 1 MB", ...)

Only regular files inside the directory count: a symlink that leads outside it, a FIFO or a device is skipped (a
FIFO would block the reader forever). Torch- and datasets-free: the light launcher imports it.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

VENDORED_DIRS = {".git", ".hg", ".svn", "node_modules", "vendor", "third_party", "__pycache__", ".venv", "venv",
                 "site-packages", "dist", "build", ".tox", ".mypy_cache", ".pytest_cache"}
MAX_SOURCE_FILE_BYTES = 1 << 20


def code_files(root: Path, pattern: str) -> Iterator[tuple[Path, str | None]]:
    """Every regular file under `root` matching `pattern`, in path order, with the reason it is skipped (or None)."""
    inside = os.path.realpath(root)
    for path in sorted(root.glob(pattern)):
        try:
            regular = path.is_file()
        except OSError:  # a symlink loop
            regular = False
        if not regular:
            continue
        relative = path.relative_to(root).parts
        if os.path.commonpath([inside, os.path.realpath(path)]) != inside:
            yield path, "outside the source directory"
        elif any(part in VENDORED_DIRS or part.startswith(".") for part in relative[:-1]):
            yield path, "vendored or hidden directory"
        elif path.stat().st_size > MAX_SOURCE_FILE_BYTES:
            yield path, "over 1 MB"
        else:
            yield path, None


def read_code_file(path: Path) -> tuple[str | None, str | None]:
    """The file's text, or None and why not ("binary", "not UTF-8", "empty")."""
    raw = path.read_bytes()
    if b"\0" in raw[:8192]:
        return None, "binary"
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        return None, "not UTF-8"
    return (text, None) if text.strip() else (None, "empty")
