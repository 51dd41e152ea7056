"""The eval stage's vLLM engine, end to end on CPU: `launch eval --engine vllm` over 2 ranks, each rank's engine in a
child process of its own, against a stand-in for vLLM's offline API (tests/shims/vllm_on_cpu: vLLM itself needs a
GPU) that generates with transformers. It must write what the transformers engine writes on 1 rank — the same
completions in problem order, the same scores, the same held-out loss (loaded with transformers after the engine has
exited) — and give each engine no torch.distributed world and no GPU it was not granted (which GPU a rank's engine
gets is tests/unit/test_vllm_engine.py's).

    .venv/bin/python -m pytest tests/integration/test_vllm_engine.py -q
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from tests.integration.conftest import assert_ok, launch
from tests.integration.test_eval_ranks import results
from tests.unit.test_export import make_run, with_export

SHIM = Path(__file__).parents[1] / "shims" / "vllm_on_cpu"
EVAL = ("--problems", "4", "eval.fim_samples=4", "eval.max_new_tokens=24", "eval.fim_max_new_tokens=12")


def vllm_env(record: Path) -> dict[str, str]:
    path = os.pathsep.join(filter(None, [str(SHIM), os.environ.get("PYTHONPATH")]))
    return {"PYTHONPATH": path, "FAKE_VLLM_RECORD": str(record)}


def test_vllm_engine_on_two_ranks_writes_what_transformers_writes(tmp_path: Path) -> None:
    run, _ = make_run(tmp_path, "lora")
    record = tmp_path / "engines.jsonl"
    assert_ok(launch("eval", "r1", "--ranks", "1", "--engine", "transformers", *EVAL, cwd=tmp_path))
    result = launch("eval", "r1", "--ranks", "2", "--engine", "vllm", *EVAL, cwd=tmp_path, env=vllm_env(record))
    assert_ok(result)
    assert "generating with vllm" in result.stdout

    one, two = results(run.path, 1), results(run.path, 2)
    assert [r["task_id"] for r in two[1]] == [f"HumanEval/{i}" for i in range(4)]
    assert [r["completion"] for r in two[1]] == [r["completion"] for r in one[1]]
    assert [r["written"] for r in two[2]] == [r["written"] for r in one[2]]
    assert two[0] == one[0] and "heldout_loss" in two[0] and "base_heldout_loss" in two[0]
    engines = [json.loads(line) for line in record.read_text().splitlines()]
    # one engine per rank; on a CPU the local executor grants no GPU (CUDA_VISIBLE_DEVICES=""), and none is made up
    assert [e["CUDA_VISIBLE_DEVICES"] for e in engines] == ["", ""]
    assert all(e["distributed"] == [] for e in engines)                     # and no torch.distributed world
    assert all(e["model"] == str(run.path / "base") and e["enable_lora"] and e["max_lora_rank"] == 8
               for e in engines)                                           # no export yet: base + adapter (r=8)


def test_vllm_engine_serves_the_merged_export_and_reports_its_failure(tmp_path: Path) -> None:
    from jobs.export.stage import export_run

    run, recipe = make_run(tmp_path, "lora")
    done = export_run(run, with_export(recipe))
    record = tmp_path / "engines.jsonl"
    result = launch("eval", "r1", "--engine", "vllm", *EVAL, "eval.heldout=false", cwd=tmp_path,
                    env=vllm_env(record))
    assert_ok(result)
    (engine,) = [json.loads(line) for line in record.read_text().splitlines()]
    assert engine["model"] == str(done.path / "model") and not engine["enable_lora"]

    # an engine that dies (here: the stand-in cannot write its record) fails the stage, saying what to do
    broken = launch("eval", "r1", "--engine", "vllm", *EVAL, "eval.heldout=false", cwd=tmp_path,
                    env={**vllm_env(record), "FAKE_VLLM_RECORD": str(tmp_path)})
    assert broken.returncode != 0
    assert "vLLM generation failed (exit 1" in broken.stdout + broken.stderr
    assert "eval.engine=transformers" in broken.stdout + broken.stderr
