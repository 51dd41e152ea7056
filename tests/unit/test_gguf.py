"""GGUF export parity on the tiny models, for each type: read back, the model computes what the HF model computes
with the weights each type can hold (F16-rounded, or quantized and dequantized by gguf's own codecs).

    .venv/bin/python -m pytest tests/unit/test_gguf.py -q

tiny-llama is read back by transformers itself (its GGUF loader undoes llama.cpp's q/k permutation independently of
ours); tiny-starcoder (which transformers cannot read) through our reader and GPTBigCode as the reference forward.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch

from jobs.export.gguf import read_gguf_state_dict, write_gguf
from launchers.recipe.load import RECIPES_ROOT
from tests.unit.launch_harness import CliResult, assert_one_error_line
from tests.unit.test_export import make_run, with_export

gguf = pytest.importorskip("gguf")
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer  # noqa: E402

IDS = torch.randint(10, 2000, (2, 24), generator=torch.Generator().manual_seed(3))


def saved_model(tmp_path: Path, name: str) -> tuple[Path, Any]:
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(RECIPES_ROOT / name / "config.json")).eval()
    path = tmp_path / name / "model"
    model.save_pretrained(path)
    AutoTokenizer.from_pretrained(RECIPES_ROOT / "assets" / "tokenizer").save_pretrained(path)
    return path, model


def representable(model: Any, quant: str) -> Any:
    """`model` with every matrix as the GGUF type stores it: F16-rounded, or through gguf's quantize/dequantize."""
    types = {"q8_0": gguf.GGMLQuantizationType.Q8_0, "q4_0": gguf.GGMLQuantizationType.Q4_0}
    copy = AutoModelForCausalLM.from_config(model.config).eval()
    state = {}
    for name, tensor in model.state_dict().items():
        if tensor.ndim == 2 and quant != "f16" and tensor.shape[-1] % 32 == 0:
            array = tensor.float().numpy()
            tensor = torch.from_numpy(gguf.quants.dequantize(gguf.quants.quantize(array, types[quant]), types[quant]))
        elif tensor.ndim == 2:
            tensor = tensor.half().float()
        state[name] = tensor
    copy.load_state_dict(state)
    return copy


def logits(model: Any) -> torch.Tensor:
    with torch.no_grad():
        return model(input_ids=IDS, use_cache=False).logits


@pytest.mark.parametrize("quant", ["f16", "q8_0", "q4_0"])
@pytest.mark.parametrize("name", ["tiny-llama", "tiny-starcoder"])
def test_gguf_reads_back_to_the_same_model(tmp_path: Path, name: str, quant: str) -> None:
    path, model = saved_model(tmp_path, name)
    out = write_gguf(path, tmp_path / f"{name}-{quant}.gguf", quant)
    expected = representable(model, quant)
    config = json.loads((path / "config.json").read_text())
    reference = AutoModelForCausalLM.from_config(model.config).eval()
    reference.load_state_dict(read_gguf_state_dict(out, config))
    torch.testing.assert_close(logits(reference), logits(expected), atol=1e-5, rtol=0)
    if quant == "f16":
        torch.testing.assert_close(logits(reference), logits(model), atol=2e-3, rtol=0)
    if name == "tiny-llama":  # transformers' own GGUF reader, and a short greedy generation on CPU
        loaded = AutoModelForCausalLM.from_pretrained(out.parent, gguf_file=out.name).eval()
        torch.testing.assert_close(logits(loaded), logits(expected), atol=1e-5, rtol=0)
        generated = loaded.generate(IDS[:1, :8], max_new_tokens=6, do_sample=False)
        assert torch.equal(generated, expected.generate(IDS[:1, :8], max_new_tokens=6, do_sample=False))


def test_gguf_metadata_and_vocabulary(tmp_path: Path) -> None:
    path, model = saved_model(tmp_path, "tiny-starcoder")
    out = write_gguf(path, tmp_path / "m.gguf", "q8_0")
    reader = gguf.GGUFReader(out)
    fields = {name: field.contents() for name, field in reader.fields.items()}
    tokenizer = json.loads((path / "tokenizer.json").read_text())
    assert fields["general.architecture"] == "starcoder" and fields["starcoder.block_count"] == 2
    assert fields["starcoder.attention.head_count_kv"] == 1  # multi-query
    assert fields["tokenizer.ggml.model"] == "gpt2" and len(fields["tokenizer.ggml.tokens"]) == 2048
    assert fields["tokenizer.ggml.tokens"][3] == "<fim_suffix>" and fields["tokenizer.ggml.eos_token_id"] == 0
    assert len(fields["tokenizer.ggml.merges"]) == len(tokenizer["model"]["merges"])
    assert "output.weight" not in {t.name for t in reader.tensors}, "a tied head is not written twice"
    assert fields["tokenizer.ggml.pre"] == "starcoder"  # one digit per token, as the tokenizer splits them


BYTE_LEVEL = {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": True}


@pytest.mark.parametrize(("pre", "name"), [
    ({"type": "Sequence", "pretokenizers": [{"type": "Digits", "individual_digits": True}, BYTE_LEVEL]}, "starcoder"),
    (BYTE_LEVEL, "gpt-2"),
    ({"type": "Sequence", "pretokenizers": [{"type": "Digits", "individual_digits": False}, BYTE_LEVEL]}, "default"),
    (None, "default"),
])
def test_the_pre_tokenizer_is_named_for_llama_cpp(pre: Any, name: str, capsys: pytest.CaptureFixture[str]) -> None:
    from jobs.export.gguf import llama_cpp_pre_tokenizer

    assert llama_cpp_pre_tokenizer(pre, Path("tokenizer.json")) == name
    warned = "llama.cpp may split some text differently" in capsys.readouterr().err
    assert warned == (name == "default")


def test_a_missing_llama_cpp_says_how_to_install_it(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import sys

    from jobs.export import llama_cpp

    monkeypatch.delitem(sys.modules, llama_cpp.MODULE_NAME, raising=False)
    monkeypatch.setenv(llama_cpp.LIBRARY_ENV, str(tmp_path))
    with pytest.raises(llama_cpp.LlamaCppMissing, match="tools/install_llama_cpp.py"):
        llama_cpp.LlamaCpp(tmp_path / "m.gguf")


def test_export_writes_gguf_next_to_the_merged_model(tmp_path: Path, launch: Callable[..., CliResult]) -> None:
    from jobs.export.stage import export_run

    run, recipe = make_run(tmp_path, "lora")
    done = export_run(run, with_export(recipe, gguf="q4_0"))
    assert [p.name for p in (done.path / "gguf").iterdir()] == ["tiny-llama-q4_0.gguf"]
    record = json.loads((done.path / "export.json").read_text())
    assert record["gguf"]["bytes"] > 0 and len(record["gguf"]["sha256"]) == 64
    assert "--format gguf --quant q4_0" in (done.path / "model" / "README.md").read_text()
    assert "flag --quant q8_0: only with --format gguf" in assert_one_error_line(launch("export", "r1", "--quant",
                                                                                        "q8_0"))
    assert "export.gguf needs the merged model" in assert_one_error_line(
        launch("export", "r1", "--format", "gguf", "--adapter-only"))
    assert "export.gguf: Input should be 'f16', 'q8_0' or 'q4_0'" in assert_one_error_line(
        launch("export", "r1", "--format", "gguf", "--quant", "q2_k"))
    assert len(run.versions()) == 1


def test_other_architectures_are_refused(tmp_path: Path) -> None:
    from tests.unit.test_merge import gpt2_config, save_base

    path = save_base(gpt2_config(), tmp_path / "gpt2")
    with pytest.raises(ValueError, match="GGUF export supports llama, gpt_bigcode, not model_type 'gpt2'"):
        write_gguf(path, tmp_path / "x.gguf", "f16")
    assert not list(tmp_path.glob("*.gguf")) and not list(tmp_path.glob(".*partial*"))
