"""What a complete directory held when it was marked complete, recorded in its marker and checked before it is used.

    mark_complete(checkpoint, "step 500")   # writes .complete last: {"note", "files": {path: [bytes, sample sha256]}}
    problem = verify(checkpoint)            # None, or e.g. "model.safetensors: 1048576 bytes, 4194304 when marked"

The train stage marks each checkpoint after verifying it (jobs/train/checkpoints.py) and, before resuming, takes
the newest checkpoint that still verifies. The sample hash covers each file's first and last MiB: a truncated,
replaced or zero-filled file shows; a flipped byte in the middle of a large file does not (reading every byte of a
186 GB checkpoint at each resume would cost minutes). A marker without a manifest (runs from before it) verifies
by being there. Standard library only.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

from jobs.spec.rundir import COMPLETE_MARKER

SAMPLE = 1 << 20  # bytes hashed at each end of a file


def sample_hash(path: Path, size: int) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        digest.update(handle.read(SAMPLE))
        if size > 2 * SAMPLE:
            handle.seek(size - SAMPLE)
        digest.update(handle.read(SAMPLE))
    return digest.hexdigest()


def manifest(directory: Path) -> dict[str, list[int | str]]:
    """Every file under `directory` but the marker: [bytes, sample sha256], by its path relative to it."""
    files: dict[str, list[int | str]] = {}
    for path in sorted(directory.rglob("*")):
        if path.is_file() and path.name != COMPLETE_MARKER:
            size = path.stat().st_size
            files[str(path.relative_to(directory))] = [size, sample_hash(path, size)]
    return files


def mark_complete(directory: Path, note: str) -> None:
    """Record what `directory` holds and mark it complete, atomically (the marker is written last)."""
    marker = directory / COMPLETE_MARKER
    temporary = directory / f".{COMPLETE_MARKER}.{os.getpid()}.tmp"
    temporary.write_text(json.dumps({"note": note, "files": manifest(directory)}), encoding="utf-8")
    os.replace(temporary, marker)


def verify(directory: Path) -> str | None:
    """None when `directory` holds what its marker recorded; else the first difference, in words."""
    marker = directory / COMPLETE_MARKER
    try:
        recorded = json.loads(marker.read_text(encoding="utf-8"))["files"]
    except (OSError, ValueError, KeyError, TypeError):
        return None if marker.is_file() else "not marked complete"  # an older plain-text marker: as before
    for name, (size, sample) in recorded.items():
        path = directory / name
        if not path.is_file():
            return f"{name}: missing"
        actual = path.stat().st_size
        if actual != size:
            return f"{name}: {actual} bytes, {size} when marked"
        if sample_hash(path, actual) != sample:
            return f"{name}: its content changed since it was marked"
    return None
