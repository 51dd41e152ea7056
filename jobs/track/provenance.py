"""Where a run's code and model come from, and the redacted copies of the files the tracker sends.

- `git_commit()`: the project checkout's commit (the parent run's tags clusterft.git_commit and
  mlflow.source.git.commit)
- `model_manifest(final)`: each file's size and the weights' sha256 (the train run's clusterft.final_bytes,
  clusterft.final_sha256 and final-manifest.json; jobs.export.stage records the same for each export)
- `is_text(path)`, `write_redacted(source, target)`: a text file logged as an artifact is sent as a redacted copy
  (jobs.spec.redaction)

Nothing here imports MLflow or torch (PyYAML only for a YAML file). Tested by tests/unit/test_tracking_system.py
(git_commit), tests/unit/test_tracking_redaction.py (redacted copies) and tests/unit/test_tracking_spool.py (a full
model's manifest).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import subprocess
from pathlib import Path
from typing import Any

from jobs.spec.redaction import redact_text, redact_tree
from jobs.spec.rundir import write_atomic

PROJECT_ROOT = Path(__file__).resolve().parents[2]


def git_commit(root: Path = PROJECT_ROOT) -> str:
    """The project checkout's commit (read from .git, else `git rev-parse`), or "unknown". Never fails."""
    try:
        git = root / ".git"
        gitdir = git
        if git.is_file():  # a worktree or submodule: "gitdir: <path>"
            gitdir = (root / git.read_text().split("gitdir:", 1)[1].strip()).resolve()
        head = (gitdir / "HEAD").read_text().strip()
        if re.fullmatch(r"[0-9a-f]{40,64}", head):
            return head
        if head.startswith("ref:"):
            ref = head[4:].strip()
            common = gitdir
            if (gitdir / "commondir").exists():
                common = (gitdir / (gitdir / "commondir").read_text().strip()).resolve()
            for base in (gitdir, common):
                if (base / ref).exists():
                    return (base / ref).read_text().strip()
            packed = common / "packed-refs"
            if packed.exists():
                for line in packed.read_text().splitlines():
                    if line.endswith(" " + ref):
                        return line.split()[0]
    except (OSError, IndexError, ValueError):
        pass
    try:
        done = subprocess.run(["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True, text=True,
                              timeout=5, check=False)
        if done.returncode == 0 and re.fullmatch(r"[0-9a-f]{40,64}", done.stdout.strip()):
            return done.stdout.strip()
    except (OSError, subprocess.SubprocessError):
        pass
    return "unknown"


def model_manifest(final: Path) -> dict[str, Any]:
    """Size of every file in `final` and the sha256 of its weights (safetensors or GGUF, else .bin), hashed streaming.
    `sha256` is the digest of the `sha256sum` listing of the weight files, so
    `cd final && sha256sum *.safetensors | sha256sum` gives the same value."""
    files = sorted(p for p in final.rglob("*") if p.is_file())
    weights = [p for p in files if p.suffix in (".safetensors", ".gguf")] or [p for p in files if p.suffix == ".bin"]
    listing = []
    per_file: dict[str, Any] = {}
    for path in files:
        name = str(path.relative_to(final))
        entry: dict[str, Any] = {"bytes": path.stat().st_size}
        if path in weights:
            digest = hashlib.sha256()
            with path.open("rb") as handle:
                while block := handle.read(1 << 24):
                    digest.update(block)
            entry["sha256"] = digest.hexdigest()
            listing.append(f"{entry['sha256']}  {name}\n")
        per_file[name] = entry
    return {"path": str(final), "bytes": sum(e["bytes"] for e in per_file.values()),
            "sha256": hashlib.sha256("".join(listing).encode()).hexdigest(), "files": per_file}


def is_text(path: Path) -> bool:
    try:
        with path.open("rb") as handle:
            head = handle.read(8192)
    except OSError:
        return False
    if b"\0" in head:
        return False
    try:
        head.decode("utf-8")
    except UnicodeDecodeError as err:
        return err.start > len(head) - 4  # a character cut at the block's end
    return True


def write_redacted(source: Path, target: Path) -> None:
    """A redacted copy of a text file: YAML and JSON structurally (keys named like secrets), then by shape."""
    text = source.read_text(encoding="utf-8", errors="replace")
    if source.suffix in (".yaml", ".yml", ".json"):
        try:
            if source.suffix == ".json":
                redacted = json.dumps(redact_tree(json.loads(text)), indent=2, sort_keys=True) + "\n"
            else:
                import yaml

                redacted = yaml.safe_dump(redact_tree(yaml.safe_load(text)), sort_keys=False, allow_unicode=True)
            write_atomic(target, redact_text(redacted))
            return
        except Exception:  # noqa: BLE001 - not parseable (ValueError, yaml.YAMLError): redact it as text
            pass
    tmp = target.with_name(f".{target.name}.{os.getpid()}.tmp")
    with source.open("r", encoding="utf-8", errors="replace") as src, tmp.open("w", encoding="utf-8") as dst:
        for line in src:
            dst.write(redact_text(line))
    os.replace(tmp, target)
