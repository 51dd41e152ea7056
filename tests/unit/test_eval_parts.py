"""The eval stage's parts on a tiny random Llama and the project's tokenizer: batched generation (left padding, stop
sequences), held-out loss, the FIM eval's examples, prompts and scores, and `launch eval`'s bad input.

    .venv/bin/python -m pytest tests/unit/test_eval_parts.py -q
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from datasets import Dataset

from jobs.eval.fim_eval import FimExample, edit_similarity, fim_examples, fim_prompt, score_fim
from jobs.eval.generation import GenerationSettings, cut_at_stop, generate
from jobs.eval.heldout import heldout_loss
from launchers.recipe.load import RECIPES_ROOT
from tests.unit.launch_harness import CliResult, assert_one_error_line
from tests.unit.test_export import make_run

transformers = pytest.importorskip("transformers")
from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaConfig  # noqa: E402

TOKENIZER = RECIPES_ROOT / "assets" / "tokenizer"


@pytest.fixture(scope="module")
def tokenizer() -> object:
    return AutoTokenizer.from_pretrained(TOKENIZER)


@pytest.fixture(scope="module")
def model(tokenizer: object) -> object:
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2,  # type: ignore[arg-type]
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256)
    return AutoModelForCausalLM.from_config(config).eval()


def test_greedy_generation_does_not_depend_on_batching_or_padding(model: object, tokenizer: object) -> None:
    prompts = ["def add(a, b):\n", "x", "class Stack:\n    def push(self, item):\n"]
    settings = GenerationSettings(max_new_tokens=12)
    one_by_one = [generate(model, tokenizer, [p], settings)[0] for p in prompts]
    batched = generate(model, tokenizer, prompts, GenerationSettings(max_new_tokens=12, batch_size=3))
    assert batched == one_by_one
    assert tokenizer.padding_side == "right"  # type: ignore[attr-defined]  # restored


def test_samples_per_prompt_and_stop_sequences(model: object, tokenizer: object) -> None:
    texts = generate(model, tokenizer, ["a", "bb"], GenerationSettings(max_new_tokens=8, temperature=1.0, samples=3,
                                                                       batch_size=4, seed=1))
    assert [len(t) for t in texts] == [3, 3]
    assert cut_at_stop("    return x\ndef other():", ("\ndef ", "\nclass ")) == "    return x"
    assert cut_at_stop("no stop here", ("\ndef ",)) == "no stop here"


def test_heldout_loss_is_the_token_mean_whatever_the_batch_and_packing(model: object) -> None:
    docs = [[5, 9, 12, 40, 41], [7, 8, 9], [100, 101, 102, 103, 104, 105]]
    labels = [[-100, 9, 12, 40, 41], [-100, 8, 9], [-100, -100, 102, 103, 104, 105]]
    rows = Dataset.from_dict({"input_ids": docs, "labels": labels})
    packed = Dataset.from_dict({"input_ids": [sum(docs, [])], "labels": [sum(labels, [])],
                                "seq_lengths": [[len(d) for d in docs]]})
    one = heldout_loss(model, rows, batch_size=1)
    assert heldout_loss(model, rows, batch_size=3).loss == pytest.approx(one.loss, abs=1e-5)
    assert heldout_loss(model, packed, batch_size=2).loss == pytest.approx(one.loss, abs=1e-5)
    expected_sum = 0.0
    for ids, target in zip(docs, labels, strict=True):
        logits = model(input_ids=torch.tensor([ids])).logits[0, :-1]  # type: ignore[operator]
        shifted = torch.tensor(target[1:])
        expected_sum += torch.nn.functional.cross_entropy(logits, shifted, ignore_index=-100, reduction="sum").item()
    assert one.tokens == 10 and one.loss == pytest.approx(expected_sum / 10, abs=1e-5)


def test_fim_examples_are_seeded_whole_lines_inside_the_file() -> None:
    documents = [(f"f{i}.py", "".join(f"line {i}.{j}\n" for j in range(8))) for i in range(20)]
    first, again = fim_examples(documents, 5, seed=3), fim_examples(documents, 5, seed=3)
    assert first == again and len(first) == 5
    for example in first:
        assert example.prefix and example.suffix and example.middle.endswith("\n")
        assert 1 <= example.middle.count("\n") <= 3
        whole = dict(documents)[example.name]
        assert example.prefix + example.middle + example.suffix == whole
    assert fim_examples([("short.py", "a\nb\n")], 5) == []


def test_few_documents_give_several_distinct_spans_each() -> None:
    documents = [(f"f{i}.py", "".join(f"line {i}.{j}\n" for j in range(30))) for i in range(3)]
    examples = fim_examples(documents, 16, seed=0)
    assert len(examples) == 16 and len(set(examples)) == 16
    assert {e.name for e in examples} == {"f0.py", "f1.py", "f2.py"}
    tiny = fim_examples([("t.py", "a\nb\nc\n")], 16)  # one possible span: found once, then the draws give up
    assert [(e.prefix, e.middle, e.suffix) for e in tiny] == [("a\n", "b\n", "c\n")]


def test_a_long_files_prompt_keeps_the_lines_nearest_the_span(tokenizer: object) -> None:
    from jobs.eval.fim_eval import fit_prompt

    prefix = "".join(f"prefix_line_{i} = {i}\n" for i in range(200))
    suffix = "".join(f"suffix_line_{i} = {i}\n" for i in range(50))
    example = FimExample("long.py", "py", prefix, "middle = 0\n", suffix)
    fitted = fit_prompt(example, tokenizer, budget=120)
    ids = tokenizer(fim_prompt(fitted, tokenizer), add_special_tokens=False)["input_ids"]  # type: ignore[operator]
    assert 100 <= len(ids) <= 120
    assert prefix.endswith(fitted.prefix) and suffix.startswith(fitted.suffix) and fitted.middle == example.middle
    assert fitted.prefix.endswith("prefix_line_199 = 199\n") and fitted.suffix.startswith("suffix_line_0 = 0\n")
    assert fit_prompt(example, tokenizer, budget=10_000) == example


def test_fim_prompt_is_psm_with_the_tokenizers_sentinels(tokenizer: object) -> None:
    prompt = fim_prompt(FimExample("a.py", "py", "def f():\n", "    return 1\n", "print(f())\n"), tokenizer)
    assert prompt == "<fim_prefix>def f():\n<fim_suffix>print(f())\n<fim_middle>"


def test_fim_scores_oracle_wrong_and_per_file_type() -> None:
    examples = [FimExample("a.py", "py", "p\n", "    x = 1\n", "s\n"), FimExample("b.js", "js", "p\n", "y();\n", "s\n")]
    metrics, rows = score_fim(examples, ["    x = 1\n", "z();"])
    assert metrics["fim_exact_match"] == 0.5 and metrics["fim_py_exact_match"] == 1.0
    assert metrics["fim_js_exact_match"] == 0.0 and 0 < metrics["fim_js_edit_similarity"] < 1
    assert [r["exact_match"] for r in rows] == [True, False]
    assert edit_similarity("", "") == 1.0 and edit_similarity("abc", "") == 0.0


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--k", "1,10"], "flag --k 1,10: eval.k: pass@10 needs at least 10 samples per problem (eval.samples is 1)"),
        (["--model", "best"], "flag --model best: eval.model: Input should be 'merged', 'adapter' or 'base'"),
        (["--temperature", "-1"], "flag --temperature -1: eval.temperature: Input should be greater than or equal"),
        (["eval.humaneval_problems=many"], "eval.humaneval_problems: Input should be a valid integer"),
        (["--engine", "tgi"], "flag --engine tgi: eval.engine: Input should be 'auto', 'transformers' or 'vllm'"),
        (["eval.vllm_gpu_memory_utilization=1.5"], "eval.vllm_gpu_memory_utilization: Input should be less than"),
    ],
)
def test_bad_eval_requests_exit_2(tmp_path: Path, launch: Callable[..., CliResult], args: list[str],
                                  message: str) -> None:
    run, _ = make_run(tmp_path, "lora")
    assert message in assert_one_error_line(launch("eval", "r1", *args))
    assert not (run.evals).exists()


def test_generate_streams_the_prompt_and_its_completion(tmp_path: Path, launch: Callable[..., CliResult]) -> None:
    make_run(tmp_path, "lora")
    result = launch("generate", "r1", "--prompt", "def add(a, b):", "--max-new-tokens", "6")
    assert result.code == 0, result.err
    assert result.out.startswith("def add(a, b):") and len(result.out) > len("def add(a, b):\n")
    assert "[generate] base " in result.err and "+ adapter " in result.err  # no export yet: base + adapter
    fim = launch("generate", "r1", "--fim-prefix", "def f(x):\n", "--fim-suffix", "    return y\n", "--model", "base",
                 "--max-new-tokens", "4")
    assert fim.code == 0 and "[generate] base model " in fim.err


def test_a_down_weighted_adapter_is_the_model_export_merges_at_that_weight(tmp_path: Path) -> None:
    from jobs.common.run_models import load_run_model
    from jobs.export.stage import export_run
    from jobs.spec.context import RankContext
    from tests.unit.test_export import with_export
    from tests.unit.test_merge import FP32_ATOL, logits

    run, recipe = make_run(tmp_path, "lora")
    export_run(run, with_export(recipe, adapter_weight=0.8))
    attached, described = load_run_model(run, recipe, "adapter", RankContext(run.path), adapter_weight=0.8)
    merged, _ = load_run_model(run, recipe, "merged", RankContext(run.path))
    assert described.endswith("at weight 0.8")
    torch.testing.assert_close(logits(attached), logits(merged), atol=FP32_ATOL, rtol=0)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--prompt", "x", "--adapter-weight", "0.5"], "flag --adapter-weight 0.5: only with --model adapter"),
        (["--prompt", "x", "--fim-suffix", "y"], "flag --fim-suffix: give --fim-prefix too"),
        (["--file", "missing.py"], "flag --file missing.py: cannot read it"),
        ([], "one of the arguments --prompt --file --fim-prefix is required"),
    ],
)
def test_bad_generate_requests_exit_2(tmp_path: Path, launch: Callable[..., CliResult], args: list[str],
                                      message: str) -> None:
    make_run(tmp_path, "lora")
    assert message in assert_one_error_line(launch("generate", "r1", *args))
