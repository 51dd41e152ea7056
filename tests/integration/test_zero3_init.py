"""ZeRO-3 loads under zero.Init: on 2 CPU ranks, a model of ~100M parameters is partitioned as soon as the train
stage's loading (`jobs.train.stage.load_for_training`) returns — each rank holds its share of every weight, not a
whole copy. The model loaded the old way (before the arguments register the DeepSpeed config) is checked too, so
the test can tell the two apart. Uses bench/zero3_load.py's worker (2 ranks under torchrun, gloo).

    .venv/bin/python -m pytest tests/integration/test_zero3_init.py -q
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[2] / "bench" / "zero3_load.py"


@pytest.fixture(scope="module")
def bench():  # noqa: ANN201
    spec = importlib.util.spec_from_file_location("zero3_load", BENCH)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_every_parameter_is_partitioned_when_loading_returns(bench, tmp_path: Path) -> None:  # noqa: ANN001
    base = bench.write_base(bench.write_config(tmp_path / "model.json", hidden=768, layers=17), tmp_path / "base")
    run_dir = tmp_path / "runs" / "t" / "load"
    run_dir.mkdir(parents=True)
    loaded = bench.run_world("zero_init", run_dir, base, tmp_path / "zero-init")
    for rank in loaded:
        assert rank["parameters"] >= 100e6 and rank["dtype"] == "torch.bfloat16"
        assert rank["partitioned"] == rank["tensors"], rank
    whole = bench.run_world("whole_copy", run_dir, base, tmp_path / "whole")
    assert all(rank["partitioned"] == 0 for rank in whole), whole
