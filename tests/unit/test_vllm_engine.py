"""What the eval stage hands vLLM: its sampling options, the engine's options for each kind of model, the child's
environment (its own GPU, no torch.distributed world), when vLLM is chosen and what it cannot serve. No vLLM is
needed (the end-to-end path runs in tests/integration/test_vllm_engine.py against a stand-in).

    .venv/bin/python -m pytest tests/unit/test_vllm_engine.py -q
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from jobs.common.hub import model_directory
from jobs.common.run_models import RunModel
from jobs.eval.generation import GenerationSettings, engine_name
from jobs.eval.vllm_engine import PROJECT_ROOT, child_environment, engine_options, sampling_options, unsupported
from launchers.recipe.load import resolve


def test_greedy_asks_for_one_completion_and_sampling_for_all() -> None:
    greedy = sampling_options(GenerationSettings(max_new_tokens=64, samples=5, stop=("\ndef ", "")))
    assert greedy == {"n": 1, "temperature": 0.0, "top_p": 1.0, "max_tokens": 64, "stop": ["\ndef "], "seed": 0,
                      "skip_special_tokens": True}
    sampled = sampling_options(GenerationSettings(temperature=0.2, samples=20, seed=3))
    assert (sampled["n"], sampled["top_p"], sampled["stop"], sampled["seed"]) == (20, 0.95, None, 3)
    assert "top_k" not in sampled  # off, as in the transformers engine (whose own default would be 50)
    assert sampling_options(GenerationSettings(temperature=0.2, top_k=40))["top_k"] == 40


def test_each_rank_gets_its_own_gpu_and_no_distributed_world() -> None:
    job = {"RANK": "1", "WORLD_SIZE": "2", "LOCAL_RANK": "1", "MASTER_ADDR": "node1", "MASTER_PORT": "29500",
           "TORCHELASTIC_RUN_ID": "x", "HF_HOME": "/cache", "CUDA_VISIBLE_DEVICES": "4,5,6,7", "PYTHONPATH": "/site"}
    assert child_environment(job, 1) == {"HF_HOME": "/cache", "CUDA_VISIBLE_DEVICES": "5",
                                         "PYTHONPATH": f"{PROJECT_ROOT}:/site"}
    assert child_environment({"CUDA_VISIBLE_DEVICES": "3"}, 2)["CUDA_VISIBLE_DEVICES"] == "3"  # bound by SLURM
    assert child_environment({}, 2)["CUDA_VISIBLE_DEVICES"] == "2"
    assert child_environment({"CUDA_VISIBLE_DEVICES": ""}, 0)["CUDA_VISIBLE_DEVICES"] == ""  # none granted
    with pytest.raises(RuntimeError, match="local rank 2 has no GPU of its own: CUDA_VISIBLE_DEVICES is 0,1"):
        child_environment({"CUDA_VISIBLE_DEVICES": "0,1"}, 2)


def adapter(tmp_path: Path, r: int, rank_pattern: dict[str, int] | None = None) -> Path:
    (tmp_path / "adapter_config.json").write_text(json.dumps({"r": r, "rank_pattern": rank_pattern or {}}))
    return tmp_path


def test_lora_ranks_round_up_to_the_ranks_vllm_serves(tmp_path: Path) -> None:
    recipe = resolve("lora", "tiny-llama").recipe

    def slot(r: int, rank_pattern: dict[str, int] | None = None) -> int:
        chosen = RunModel(tmp_path, adapter(tmp_path, r, rank_pattern), False, "")
        return int(engine_options(chosen, recipe)["max_lora_rank"])

    assert (slot(8), slot(24), slot(8, {"mlp.c_fc": 100})) == (8, 32, 128)


def test_what_vllm_cannot_serve_as_trained_is_named(tmp_path: Path) -> None:
    qlora = resolve("qlora", "starcoder15b").recipe
    attached = RunModel(tmp_path, adapter(tmp_path, 32), True, "")
    assert unsupported(attached, qlora) is None
    assert unsupported(RunModel(tmp_path, None, False, ""), qlora) is None
    fp4 = resolve("qlora", "starcoder15b", ["method.quantization.quant_type=fp4"]).recipe
    assert "nf4 with double quantization, not as it was trained (fp4" in str(unsupported(attached, fp4))
    bias = resolve("lora", "tiny-llama", ["method.lora.bias=all"]).recipe
    assert "without bias terms" in str(unsupported(RunModel(tmp_path, tmp_path, False, ""), bias))
    wide = RunModel(tmp_path, adapter(tmp_path, 1024), True, "")
    assert "LoRA ranks up to 512, the adapter's is 1024" in str(unsupported(wide, qlora))


def test_engine_options_follow_the_model_chosen(tmp_path: Path) -> None:
    recipe = resolve("qlora", "starcoder15b", ["eval.vllm_gpu_memory_utilization=0.7"]).recipe
    merged = engine_options(RunModel(tmp_path / "model", None, False, "merged"), recipe)
    snapshot = model_directory("bigcode/starcoder", recipe.model.revision)  # the tokenizer the prepare stage fetched
    assert merged == {"model": str(tmp_path / "model"), "tokenizer": str(snapshot), "dtype": "bfloat16",
                      "seed": recipe.training.seed, "trust_remote_code": False, "gpu_memory_utilization": 0.7}
    attached = engine_options(RunModel(tmp_path / "base", adapter(tmp_path, 32), True, "qlora"), recipe)
    assert attached["quantization"] == "bitsandbytes"
    assert (attached["enable_lora"], attached["max_loras"], attached["max_lora_rank"]) == (True, 1, 32)
    assert "adapter" not in attached  # attached per request (LoRARequest), not an engine option


def test_auto_takes_vllm_only_where_it_is_installed_and_a_gpu_is_there(monkeypatch: pytest.MonkeyPatch) -> None:
    import torch

    from jobs.eval import generation

    monkeypatch.setattr(generation, "vllm_installed", lambda: False)
    assert engine_name("auto") == "transformers"
    with pytest.raises(RuntimeError, match="eval.engine=vllm: vLLM is not installed here"):
        engine_name("vllm")
    monkeypatch.setattr(generation, "vllm_installed", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert engine_name("auto") == "transformers" and engine_name("vllm") == "vllm"
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert engine_name("auto") == "vllm" and engine_name("transformers") == "transformers"


def test_auto_generates_with_transformers_what_vllm_cannot_serve(tmp_path: Path,
                                                                  capsys: pytest.CaptureFixture[str]) -> None:
    from jobs.common.run_models import choose_run_model
    from jobs.eval.stage import choose_engine
    from jobs.spec.context import RankContext
    from tests.unit.test_export import make_run

    run, recipe = make_run(tmp_path, "lora")
    chosen = choose_run_model(run, recipe, "adapter")
    biased = recipe.model_copy(update={"method": recipe.method.model_copy(update={
        "lora": recipe.method.lora.model_copy(update={"bias": "all"})})})  # type: ignore[union-attr]
    engine, model = choose_engine("vllm", chosen, biased, None, RankContext(run.path))
    assert engine.name == "transformers" and model is not None
    said = capsys.readouterr().out
    assert "[eval] generating with transformers: vLLM serves LoRA adapters without bias terms" in said
    asked = biased.model_copy(update={"eval": biased.eval.model_copy(update={"engine": "vllm"})})
    with pytest.raises(RuntimeError, match="eval.engine=vllm: vLLM serves LoRA adapters without bias terms"):
        choose_engine("vllm", chosen, asked, None, RankContext(run.path))
