"""Hub weights for a run: fetched once by the prepare stage into the shared cache, read offline by every later stage.

    from jobs.common.hub import fetch_snapshot, model_directory, work_offline
    fetch_snapshot("bigcode/starcoder", "<commit>")   # prepare: download (resumable) the pinned revision, report it
    work_offline()                                    # train, export, eval: no rank ever contacts the hub
    model_directory("bigcode/starcoder", "<commit>")  # the snapshot directory (a local directory as it is)

The launcher pins `model.revision` to a commit at launch (launchers/recipe/hub.py), so every stage and every
requeue reads the same weights. The cache is huggingface_hub's ($HF_HUB_CACHE, default $HF_HOME/hub): on a
cluster it must be on a filesystem every node sees. Nothing here imports torch (the launcher's `launch export
--base` check uses `model_directory`).
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

from jobs.spec.errors import UserError

HUB_PATTERNS = ["*.json", "*.safetensors", "*.model", "*.txt", "*.jinja", "*.py"]  # what a hub snapshot fetches
OFFLINE_ENV = "HF_HUB_OFFLINE"


def is_hub_id(name_or_path: str) -> bool:
    """A hub repo id rather than a local directory."""
    return not Path(name_or_path).is_dir()


def work_offline() -> None:
    """From here on, this process reads the hub cache only (set before huggingface_hub is imported; where it
    already is, --debug runs every stage in one process, its switch is turned too)."""
    os.environ[OFFLINE_ENV] = "1"
    constants = sys.modules.get("huggingface_hub.constants")
    if constants is not None:
        constants.HF_HUB_OFFLINE = True  # type: ignore[attr-defined]


def model_directory(name_or_path: str, revision: str | None) -> Path:
    """A local model directory as it is, or the snapshot (weights, configs, tokenizer) of a hub id: from the cache
    when offline, fetched when not."""
    if not is_hub_id(name_or_path):
        return Path(name_or_path)
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import LocalEntryNotFoundError

    try:
        return Path(snapshot_download(name_or_path, revision=revision, allow_patterns=HUB_PATTERNS))
    except LocalEntryNotFoundError:
        raise UserError(
            f"model {name_or_path}@{revision or 'main'} is not in the hub cache {cache_directory()}: the prepare "
            "stage fetches it (run it, e.g. --stages prepare,train), and HF_HOME must be on a filesystem every "
            "node shares") from None


def fetch_snapshot(name_or_path: str, revision: str | None) -> Path:
    """The prepare stage's download of a hub model: once, resumable, into the shared cache; says what it fetched."""
    started = time.monotonic()
    print(f"[prepare] fetching {name_or_path}@{revision or 'main'} into {cache_directory()}", flush=True)
    directory = model_directory(name_or_path, revision)
    size = sum(path.stat().st_size for path in directory.rglob("*") if path.is_file())
    weights = list(directory.glob("*.safetensors"))
    if not weights:
        raise UserError(f"model {name_or_path}@{revision or 'main'} has no *.safetensors weights")
    print(f"[prepare] {name_or_path}: {len(weights)} weight file(s), {size / 1e9:.2f} GB, ready in "
          f"{time.monotonic() - started:.0f} s ({directory})", flush=True)
    return directory


def cache_directory() -> str:
    from huggingface_hub import constants

    return str(constants.HF_HUB_CACHE)
