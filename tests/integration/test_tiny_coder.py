"""The laptop copilot's chain, short: a full fine-tune of the shipped pretrained base on the bundled codebase, then
its eval on the files held out by path — held-out loss below the base's, FIM spans drawn from those files for the
model and for the base (files longer than the model's context trimmed to fit, not an error).

    .venv/bin/python -m pytest tests/integration/test_tiny_coder.py -q
"""

from __future__ import annotations

import json
from pathlib import Path

from tests.integration.conftest import assert_ok, launch


def test_full_ft_of_the_base_beats_it_on_the_held_out_files(tmp_path: Path) -> None:
    result = launch("full-ft", "tiny-coder", "--local", "--name", "r1", "training.max_steps=10",
                    "training.eval_steps=10", "training.save_steps=10", "eval.humaneval_problems=0",
                    "eval.fim_samples=6", "eval.fim_max_new_tokens=8", cwd=tmp_path)
    assert_ok(result)
    runs = tmp_path / "runs"
    (report_file,) = (runs / "cache" / "prepared").glob("*/report.json")
    held_out = json.loads(report_file.read_text())["heldout_files"]
    assert len(held_out) == 3, held_out

    (results,) = (runs / "tiny-coder" / "r1" / "eval").glob("merged-*")
    metrics = json.loads((results / "results.json").read_text())["metrics"]
    assert metrics["heldout_loss"] < metrics["base_heldout_loss"], metrics
    for name in ("fim.jsonl", "base_fim.jsonl"):
        rows = [json.loads(line) for line in (results / name).read_text().splitlines()]
        assert len(rows) == 6 and {row["name"] for row in rows} <= set(held_out), rows
    assert {"fim_edit_similarity", "base_fim_edit_similarity"} <= set(metrics)
