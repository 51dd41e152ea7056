"""jobs.train.checkpoints on synthetic checkpoint directories: the newest *complete* checkpoint that still holds what
was marked wins (a truncated or changed file passes it over), unfinished ones are removed, and adapter verification
catches missing, sharded and untrained LoRA weights.

    .venv/bin/python -m pytest tests/unit/test_checkpoints.py -q
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from jobs.spec.manifest import mark_complete, verify
from jobs.spec.rundir import COMPLETE_MARKER
from jobs.train.checkpoints import latest_verified, remove_incomplete, set_aside, verify_adapter

EXPECTED = {"model.layers.0.q_proj.lora_A.weight": (8, 64), "model.layers.0.q_proj.lora_B.weight": (64, 8)}


def make_checkpoint(root: Path, step: int, complete: bool) -> Path:
    path = root / f"checkpoint-{step}"
    path.mkdir(parents=True)
    (path / "trainer_state.json").write_text("{}")
    (path / "model.safetensors").write_bytes(bytes(range(256)) * 40_000)  # 10 MB: both ends sampled
    if complete:
        mark_complete(path, f"step {step}")
    return path


def test_newest_complete_checkpoint_wins_and_unfinished_ones_go(tmp_path: Path) -> None:
    for step, complete in ((5, True), (10, True), (15, False), (100, False)):
        make_checkpoint(tmp_path, step, complete)
    assert latest_verified(tmp_path) == (tmp_path / "checkpoint-10", [])  # by step, not by name: 100 > 15 > 10 > 5
    assert remove_incomplete(tmp_path) == ["checkpoint-15", "checkpoint-100"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint-10", "checkpoint-5"]


def test_no_checkpoint_directory_means_no_resume(tmp_path: Path) -> None:
    assert latest_verified(tmp_path / "absent") == (None, [])
    assert remove_incomplete(tmp_path / "absent") == []


@pytest.mark.parametrize(("damage", "why"), [
    (lambda f: f.write_bytes(f.read_bytes()[:1000]), "model.safetensors: 1000 bytes, 10240000 when marked"),
    (lambda f: f.write_bytes(f.read_bytes()[:-4096] + bytes(4096)),
     "model.safetensors: its content changed since it was marked"),
    (lambda f: f.unlink(), "model.safetensors: missing"),
])
def test_a_damaged_newest_checkpoint_is_passed_over_for_the_previous_one(tmp_path: Path, damage, why: str) -> None:
    for step in (5, 10):
        make_checkpoint(tmp_path, step, complete=True)
    damage(tmp_path / "checkpoint-10" / "model.safetensors")
    resume, passed = latest_verified(tmp_path)
    assert resume == tmp_path / "checkpoint-5" and passed == [("checkpoint-10", why)]
    aside = set_aside(tmp_path, "checkpoint-10")  # kept, out of the way of the next save of step 10
    assert aside.name.startswith("checkpoint-10.unverified-") and aside.is_dir()
    assert latest_verified(tmp_path) == (tmp_path / "checkpoint-5", [])


def test_a_marker_from_before_manifests_verifies_by_being_there(tmp_path: Path) -> None:
    path = make_checkpoint(tmp_path, 5, complete=False)
    (path / COMPLETE_MARKER).write_text("step 5\n")
    assert verify(path) is None and latest_verified(tmp_path) == (path, [])


def write_adapter(path: Path, tensors: dict[str, torch.Tensor]) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(path / "adapter_model.safetensors"))
    return path


def trained() -> dict[str, torch.Tensor]:
    return {name: torch.ones(shape) for name, shape in EXPECTED.items()}


def test_a_complete_trained_adapter_passes(tmp_path: Path) -> None:
    verify_adapter(write_adapter(tmp_path, trained()), EXPECTED, trained=True)


@pytest.mark.parametrize(
    ("tensors", "says"),
    [
        ({"model.layers.0.q_proj.lora_A.weight": torch.ones(8, 64)}, "lacks 1 of 2"),
        ({**trained(), "model.layers.0.q_proj.lora_B.weight": torch.ones(32, 8)}, "a shard instead of the full"),
        ({**trained(), "model.layers.0.q_proj.lora_B.weight": torch.zeros(64, 8)}, "is zero after training"),
    ],
    ids=["missing-weight", "rank-0-shard", "untrained-lora-B"],
)
def test_a_broken_adapter_fails_loudly(tmp_path: Path, tensors: dict[str, torch.Tensor], says: str) -> None:
    with pytest.raises(RuntimeError, match=says):
        verify_adapter(write_adapter(tmp_path, tensors), EXPECTED, trained=True)


def test_an_adapter_that_was_never_written_fails(tmp_path: Path) -> None:
    with pytest.raises(RuntimeError, match="was not written"):
        verify_adapter(tmp_path, EXPECTED, trained=True)
