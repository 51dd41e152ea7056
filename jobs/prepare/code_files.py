"""Which files of a source directory become documents (format code): the rule the launch check, prepare and the
eval stage share.

    for path, skipped in code_files(Path("my-repo"), "**/*.py"):
        ...   # skipped is None for a file to read, else why not ("vendored or hidden directory", "over 1 MB", ...)
    files = read_code_files(Path("my-repo"), "**/*.py", skipped)      # [(path, text)] of the files read
    held_out(Path("my-repo"), [path for path, _ in files], data, seed)  # the eval split's files, by path

Only regular files inside the directory count: a symlink that leads outside it, a FIFO or a device is skipped (a
FIFO would block the reader forever). Torch- and datasets-free: the light launcher imports it.
"""

from __future__ import annotations

import hashlib
import os
from collections import Counter
from collections.abc import Iterator, Sequence
from pathlib import Path

from jobs.spec.schema import DataSpec

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


def read_code_files(root: Path, pattern: str, skipped: Counter[str]) -> list[tuple[Path, str]]:
    """(path, text) of every file under `root` that prepare reads, in path order; the others counted by reason."""
    files: list[tuple[Path, str]] = []
    for path, reason in code_files(root, pattern):
        text = None
        if reason is None:
            text, reason = read_code_file(path)
        if text is not None:
            files.append((path, text))
        else:
            skipped[str(reason)] += 1
    return files


def held_out(root: Path, files: Sequence[Path], data: DataSpec, seed: int) -> set[Path]:
    """Which of a directory source's `files` make the eval split, by path. data.eval_files names them; with
    data.eval_fraction, that share of the files (at least one, never all) ranked by a seeded hash of their path, so
    each file keeps its side as others are added or removed."""
    if data.eval_files:
        return held_out_files(root, data.eval_files) & set(files)
    if data.eval_fraction == 0 or len(files) < 2:
        return set()
    count = min(len(files) - 1, max(1, round(data.eval_fraction * len(files))))
    rank = sorted(files, key=lambda p: hashlib.sha256(f"{seed}/{p.relative_to(root).as_posix()}".encode()).digest())
    return set(rank[:count])


def held_out_files(root: Path, patterns: Sequence[str]) -> set[Path]:
    """The files under `root` that data.eval_files names: each pattern matched as data.glob is (Path.glob); a
    directory it matches (`tests`, `tests/**`) holds out every file under it."""
    matched = {path for pattern in patterns for path in root.glob(pattern)}
    return {file for path in matched for file in ([path] if not path.is_dir() else path.rglob("*"))}


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
