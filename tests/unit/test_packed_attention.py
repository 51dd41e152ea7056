"""data.packed_attention: packed rows train padding-free by default (each document attends to itself), or as whole
rows with causal attention across documents (`row`, what tools/pretrain_base.py pretrains with: no block mask).

    .venv/bin/python -m pytest tests/unit/test_packed_attention.py -q
"""

from __future__ import annotations

from pathlib import Path

import pytest

from jobs.spec.rundir import RunDir
from launchers.recipe.load import resolve
from launchers.recipe.plan import make_plan


@pytest.mark.parametrize(("overrides", "padding_free"), [
    ([], True),
    (["data.packed_attention=document"], True),
    (["data.packed_attention=row"], False),
    (["data.packing=false"], False),
])
def test_padding_free_only_for_document_attention(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                  overrides: list[str], padding_free: bool) -> None:
    from jobs.train import stage

    monkeypatch.setattr(stage, "SFTConfig", dict)  # the arguments, without starting torch.distributed for ddp
    resolved = resolve("full-ft", "tiny-starcoder", overrides)
    args = stage.sft_config(resolved.recipe, make_plan(resolved), RunDir(tmp_path / "run"))
    assert args["padding_free"] is padding_free
