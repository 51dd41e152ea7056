"""The export stage (jobs.export.stage) and `launch export` on hand-built run directories: a random tiny-llama base, a
LoRA adapter with random non-zero factors, a full fine-tune's final model.

    .venv/bin/python -m pytest tests/unit/test_export.py -q

Merged logits must equal PEFT's with the (scaled) adapter attached; the exported adapter alone must give the same;
every export is a new version; bad input exits 2 with one line and writes nothing.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Callable
from pathlib import Path

import pytest
import torch

from jobs.export.stage import export_run
from jobs.spec.rundir import COMPLETE_MARKER, RunDir
from jobs.spec.schema import Recipe
from launchers.recipe.load import resolve
from launchers.recipe.plan import make_plan
from tests.unit.launch_harness import CliResult, assert_one_error_line
from tests.unit.test_merge import FP32_ATOL, merged_logits, peft_logits, save_adapter, save_base

pytest.importorskip("peft")

from transformers import AutoConfig, AutoTokenizer  # noqa: E402

LLAMA_TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj"]


def make_run(root: Path, method: str, name: str = "r1") -> tuple[RunDir, Recipe]:
    """runs/tiny-llama/<name> as training leaves it: recipe.yaml, plan.json, launch.json, base/ with the tokenizer
    (LoRA), final/ (complete), a complete checkpoint-10 and a partial checkpoint-20."""
    resolved = resolve(method, "tiny-llama")
    recipe = resolved.recipe
    run = RunDir.new(root / "runs", "tiny-llama", name)
    run.create()
    (run.recipe_file).write_text(recipe.to_yaml(), encoding="utf-8")
    run.write_json(run.plan_file, make_plan(resolved).as_dict())
    run.write_json(run.launch_file, {"argv": ["launch", method, "tiny-llama", "--local"], "executor": "local",
                                   "stages": ["prepare", "train", "export", "eval"], "jobs": {}})
    assert recipe.model.config is not None
    config = AutoConfig.from_pretrained(recipe.model.config)
    tokenizer = AutoTokenizer.from_pretrained(recipe.model.tokenizer)
    if recipe.method.lora is None:
        save_base(config, run.final, shard="1MB")
        tokenizer.save_pretrained(run.final)
    else:
        save_base(config, run.path / "base", shard="1MB")
        tokenizer.save_pretrained(run.path / "base")
        (run.path / "base" / COMPLETE_MARKER).write_text("random init\n")
        save_adapter(run.path / "base", run.final, target_modules=LLAMA_TARGETS)
        save_adapter(run.path / "base", run.checkpoints / "checkpoint-10", seed=3, target_modules=LLAMA_TARGETS)
        (run.checkpoints / "checkpoint-10" / COMPLETE_MARKER).write_text("step 10\n")
        (run.checkpoints / "checkpoint-20").mkdir()
    (run.final / COMPLETE_MARKER).write_text("done\n")
    return run, recipe


def with_export(recipe: Recipe, **export: object) -> Recipe:
    return recipe.model_copy(update={"export": recipe.export.model_copy(update=export)})


def test_lora_export_merges_down_weighted_and_writes_the_adapter_alone(tmp_path: Path) -> None:
    run, recipe = make_run(tmp_path, "lora")
    done = export_run(run, with_export(recipe, adapter_weight=0.8))

    assert done.path == run.path / "export" / "v1" and done.version == 1
    expected = peft_logits(run.path / "base", run.final, scale=0.8)
    torch.testing.assert_close(merged_logits(done.path / "model"), expected, atol=FP32_ATOL, rtol=0)
    # the exported adapter carries the weight itself: attached at weight 1 it gives the merged model's logits
    torch.testing.assert_close(peft_logits(run.path / "base", done.path / "adapter"), expected, atol=FP32_ATOL,
                               rtol=0)
    record = json.loads((done.path / "export.json").read_text())
    assert record["source"] == "final" and record["adapter_weight"] == 0.8 and record["version"] == 1
    assert record["model"]["bytes"] > record["adapter"]["bytes"] > 0 and len(record["model"]["sha256"]) == 64
    card = (done.path / "model" / "README.md").read_text()
    assert "launch lora tiny-llama --local" in card and "launch export tiny-llama/r1 --weight 0.8" in card
    assert not list((done.path / "adapter").glob("optimizer*")), "only the adapter's files are exported"


def test_every_export_is_a_new_version_and_earlier_ones_stay(tmp_path: Path) -> None:
    run, recipe = make_run(tmp_path, "lora")
    first = export_run(run, recipe)
    before = {p.name: p.read_bytes() for p in (first.path / "model").glob("*.safetensors")}
    second = export_run(run, with_export(recipe, checkpoint=10, merge=False))

    assert [p.name for p in run.versions()] == ["v1", "v2"]
    assert {p.name: p.read_bytes() for p in (first.path / "model").glob("*.safetensors")} == before
    assert not (second.path / "model").exists(), "merge: false writes the adapter only"
    assert json.loads((second.path / "export.json").read_text())["source"] == "checkpoints/checkpoint-10"


def test_a_killed_exports_leftovers_are_removed_and_others_kept(tmp_path: Path) -> None:
    import socket

    run, recipe = make_run(tmp_path, "lora")
    root = run.path / "export"
    root.mkdir()
    dead = root / f".v1.partial-{socket.gethostname()}-999999999"
    other_host = root / ".v1.partial-elsewhere-1"
    for path in (dead, other_host):
        path.mkdir()
    export_run(run, with_export(recipe, merge=False))
    assert not dead.exists() and other_host.exists()
    assert [p.name for p in run.versions()] == ["v1"]


def test_full_fine_tune_export_is_a_streaming_copy_cast_on_request(tmp_path: Path) -> None:
    run, recipe = make_run(tmp_path, "full-ft")
    config = json.loads((run.final / "config.json").read_text())
    (run.final / "config.json").write_text(json.dumps({**config, "use_cache": False}))  # as the Trainer saves it
    done = export_run(run, with_export(recipe, dtype="bfloat16"))

    from transformers import AutoModelForCausalLM

    exported = AutoModelForCausalLM.from_pretrained(done.path / "model")
    original = AutoModelForCausalLM.from_pretrained(run.final)
    assert exported.dtype == torch.bfloat16
    assert exported.config.use_cache is True, "the Trainer saved use_cache false; an exported model generates"
    for (name, got), (_, want) in zip(exported.state_dict().items(), original.state_dict().items(), strict=True):
        assert torch.equal(got, want.to(torch.bfloat16)), name
    assert sorted(json.loads((done.path / "export.json").read_text())) == sorted(
        ["version", "source", "checkpoint", "method", "adapter_weight", "dtype", "base", "adapters", "combine", "created",
         "seconds", "model"])


@pytest.mark.parametrize(
    ("method", "args", "message"),
    [
        ("lora", ["--checkpoint", "20"], "flag --checkpoint 20: checkpoint-20 of run r1 is partial (a save was "
                                         "interrupted); complete checkpoints: 10"),
        ("lora", ["--checkpoint", "30"], "checkpoint-30 of run r1 is missing; complete checkpoints: 10"),
        ("lora", ["--weight", "-1"], "flag --weight -1.0: export.adapter_weight: Input should be greater than 0"),
        ("lora", ["--dtype", "int4"], "flag --dtype int4: export.dtype: Input should be 'bfloat16', 'float16' or "
                                      "'float32'"),
        ("lora", ["export.merge=maybe"], "override export.merge=maybe: export.merge: Input should be a valid boolean"),
        ("full-ft", ["--adapter-only"], "flag --adapter-only: run r1 is a full fine-tune, it has no adapter"),
    ],
)
def test_bad_export_requests_exit_2_and_write_nothing(tmp_path: Path, launch: Callable[..., CliResult],
                                                      method: str, args: list[str], message: str) -> None:
    run, _ = make_run(tmp_path, method)
    line = assert_one_error_line(launch("export", "r1", *args))
    assert message in line
    assert not (run.path / "export").exists()


def test_export_without_a_finished_training_names_what_there_is(tmp_path: Path,
                                                                launch: Callable[..., CliResult]) -> None:
    run, _ = make_run(tmp_path, "lora")
    os.remove(run.final / COMPLETE_MARKER)
    line = assert_one_error_line(launch("export", "tiny-llama/r1"))
    assert line.endswith("no complete final model in " f"{run.final} (did the train stage finish?); "
                         "complete checkpoints: 10")


def test_an_adapter_transfers_to_a_base_of_the_same_shapes(tmp_path: Path, launch: Callable[..., CliResult]) -> None:
    run, recipe = make_run(tmp_path, "lora")
    assert recipe.model.config is not None
    sibling = save_base(AutoConfig.from_pretrained(recipe.model.config), tmp_path / "sibling", seed=5)
    done = export_run(run, with_export(recipe, base=str(sibling)))
    expected = peft_logits(sibling, run.final)
    torch.testing.assert_close(merged_logits(done.path / "model"), expected, atol=FP32_ATOL, rtol=0)
    assert json.loads((done.path / "export.json").read_text())["base"] == str(sibling)
    assert f"launch export tiny-llama/r1 --base {sibling}" in (done.path / "model" / "README.md").read_text()

    from transformers import LlamaConfig

    config = AutoConfig.from_pretrained(recipe.model.config).to_dict()
    wider = save_base(LlamaConfig(**{**config, "intermediate_size": config["intermediate_size"] * 2}),
                      tmp_path / "wider")
    line = assert_one_error_line(launch("export", "r1", "--base", str(wider)))
    assert line.endswith("model.layers.0.mlp.down_proj.weight is [128, 768], [128, 384] in the base the adapter was "
                         "trained on: transfer needs identical shapes")
    assert [p.name for p in run.versions()] == ["v1"], "nothing written for a refused transfer"

    four_bit = tmp_path / "sibling-4bit"
    shutil.copytree(sibling, four_bit)
    config_path = four_bit / "config.json"
    config_path.write_text(json.dumps({**json.loads(config_path.read_text()),
                                       "quantization_config": {"quant_method": "bitsandbytes", "load_in_4bit": True}}))
    line = assert_one_error_line(launch("export", "r1", "--base", str(four_bit)))
    assert line.endswith("merge into the original 16-bit weights, not the 4-bit base"), line
    assert [p.name for p in run.versions()] == ["v1"]


def test_a_transfer_to_another_architecture_is_refused(tmp_path: Path) -> None:
    from jobs.common.hf_files import check_transfer
    from tests.unit.test_merge import bigcode_config, llama_config

    llama, bigcode = save_base(llama_config(), tmp_path / "llama"), save_base(bigcode_config(), tmp_path / "bigcode")
    with pytest.raises(ValueError, match="is model_type 'gpt_bigcode', the adapter was trained on 'llama'"):
        check_transfer(llama, bigcode)


def test_export_mixes_runs_adapters(tmp_path: Path, launch: Callable[..., CliResult]) -> None:
    from jobs.export.mix import mix_adapters

    run, recipe = make_run(tmp_path, "lora")
    other, _ = make_run(tmp_path, "lora", "r2")
    for path in other.final.iterdir():
        if path.name != COMPLETE_MARKER:
            path.unlink()
    save_adapter(other.path / "base", other.final, seed=7, r=8, target_modules=["q_proj"])
    mix = {"tiny-llama/r1": 0.6, "tiny-llama/r2": 0.4}
    done = export_run(run, with_export(recipe, adapters=mix, combine="svd")).path
    reference = mix_adapters([(run.final, 0.6), (other.final, 0.4)], "svd", tmp_path / "reference")
    expected = peft_logits(run.path / "base", reference)
    torch.testing.assert_close(merged_logits(done / "model"), expected, atol=FP32_ATOL, rtol=0)
    torch.testing.assert_close(peft_logits(run.path / "base", done / "adapter"), expected, atol=FP32_ATOL, rtol=0)
    record = json.loads((done / "export.json").read_text())
    assert record["adapters"] == mix and record["combine"] == "svd"
    assert "launch export tiny-llama/r1 --adapters tiny-llama/r1=0.6,tiny-llama/r2=0.4 --combine svd" in (
        done / "model" / "README.md").read_text()
    with pytest.raises(ValueError, match="combine linear needs adapters of equal rank"):
        export_run(run, with_export(recipe, adapters=mix, combine="linear"))

    for args, message in (
        (["--adapters", "r1=half"], "flag --adapters r1=half: 'r1=half' is not RUN=WEIGHT (e.g. copilot=0.5)"),
        (["--adapters", "r1=1,nope=1"], "no run 'nope' under"),
        (["--adapters", "r1=1", "--weight", "0.5"], "give each adapter its weight in export.adapters instead"),
        (["--adapters", "r1=1", "--combine", "ties"], "export.combine ties needs export.density"),
        (["--adapters", "r1=1", "--combine", "best"], "export.combine: Input should be 'linear', 'svd', 'cat', "),
    ):
        assert message in assert_one_error_line(launch("export", "r1", *args))
    assert len(run.versions()) == 1


def test_unequal_ranks_are_refused_at_launch_for_the_combinations_that_need_one(
        tmp_path: Path, launch: Callable[..., CliResult]) -> None:
    run, _ = make_run(tmp_path, "lora")
    other, _ = make_run(tmp_path, "lora", "r2")
    wider = resolve("lora", "tiny-llama", ["method.lora.r=16"]).recipe
    (other.path / "recipe.yaml").write_text(wider.to_yaml(), encoding="utf-8")
    for combine in ("linear", "ties"):
        refused = launch("export", "r1", "--adapters", "r1=0.5,r2=0.5", "--combine", combine, "--density", "0.5")
        assert (f"flag --combine {combine}: needs adapters of equal rank, got r1: r=8, r2: r=16: use cat or svd"
                in assert_one_error_line(refused))
    assert not run.versions() and not (run.path / "export").exists()


def test_status_shows_the_newest_export_and_evaluation(tmp_path: Path) -> None:
    from launchers.runs import describe

    run, recipe = make_run(tmp_path, "lora")
    export_run(run, with_export(recipe, merge=False))
    export_run(run, recipe)
    results = run.evals / "merged-20261123-000000" / "results.json"
    results.parent.mkdir(parents=True)
    results.write_text(json.dumps({"metrics": {"humaneval_pass_at_1": 0.25, "heldout_loss": 1.5}}))
    text = describe(run)
    assert f"export v2 (2 in all, from final): model 3.8 MB, adapter 0.0 MB  {run.path / 'export' / 'v2'}" in text
    assert "eval merged-20261123-000000: heldout_loss=1.5  humaneval_pass_at_1=0.25" in text


def test_a_merge_is_written_in_the_dtype_the_run_trained_in(tmp_path: Path) -> None:
    """A base stored in fp32 (as StarCoder's hub weights are) merged for a bf16 run gives a bf16 model, not fp32."""
    from safetensors import safe_open

    run, recipe = make_run(tmp_path, "lora")  # the base is saved in float32
    trained_in_bf16 = recipe.model_copy(update={"model": recipe.model.model_copy(update={"dtype": "bfloat16"})})
    done = export_run(run, trained_in_bf16)
    dtypes = set()
    for shard in (done.path / "model").glob("*.safetensors"):
        with safe_open(str(shard), "pt") as handle:
            dtypes |= {handle.get_slice(name).get_dtype() for name in handle.keys()}
    assert dtypes == {"BF16"}
