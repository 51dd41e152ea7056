"""jobs.export.merge on tiny random models (Llama, GPTBigCode, GPT-2) saved in several shards: the streamed merge must give
the logits PEFT gives with the adapter attached, load strictly, and refuse what it cannot merge correctly.

    .venv/bin/python -m pytest tests/unit/test_merge.py -q

Every adapter has its lora_B (and lora_A) set to random non-zero values, so an adapter that is ignored, applied
twice, transposed or scaled wrongly changes the logits by far more than the tolerances.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file

from jobs.export.merge import MergeReport, main, merge_adapter

transformers = pytest.importorskip("transformers")
peft = pytest.importorskip("peft")

from peft import LoraConfig, PeftModel, get_peft_model  # noqa: E402
from peft.tuners.lora import LoraLayer  # noqa: E402
from transformers import AutoModelForCausalLM, GPT2Config, GPTBigCodeConfig, LlamaConfig  # noqa: E402

LLAMA_TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj"]
BIGCODE_TARGETS = ["c_attn", "c_proj", "c_fc"]
SHARD = "20KB"
FP32_ATOL = 1e-5


def llama_config() -> LlamaConfig:
    return LlamaConfig(vocab_size=128, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                       num_attention_heads=4, num_key_value_heads=2, bos_token_id=1, eos_token_id=2)


def bigcode_config() -> GPTBigCodeConfig:
    return GPTBigCodeConfig(vocab_size=128, n_embd=32, n_layer=2, n_head=4, multi_query=True, n_positions=64,
                            bos_token_id=1, eos_token_id=2)


def gpt2_config() -> GPT2Config:
    return GPT2Config(vocab_size=128, n_embd=32, n_layer=2, n_head=4, n_positions=64, bos_token_id=1, eos_token_id=2)


def save_base(config: Any, path: Path, dtype: torch.dtype = torch.float32, shard: str | None = SHARD,
              seed: int = 0) -> Path:
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(config, dtype=dtype)
    model.save_pretrained(path, **({"max_shard_size": shard} if shard else {}))
    return path


def save_adapter(base: Path, path: Path, seed: int = 1, randomize: Callable[[str], bool] | None = None,
                 **lora: Any) -> Path:
    """A LoRA adapter for the model in `base` with every LoRA factor (and whatever else `randomize` selects among
    the trainable parameters: biases, modules_to_save) set to random non-zero values."""
    model = AutoModelForCausalLM.from_pretrained(base)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # GPT-2's Conv1D: "fan_in_fan_out is set to True"
        peft_model = get_peft_model(model, LoraConfig(**{"r": 4, "lora_alpha": 8, **lora}))
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, parameter in peft_model.named_parameters():
            if "lora_" in name or (randomize and parameter.requires_grad and randomize(name)):
                noise = torch.randn(parameter.shape, generator=generator) * 0.1
                parameter.copy_(noise if "lora_" in name else parameter + noise)
    peft_model.save_pretrained(path)
    return path


INPUT_IDS = torch.randint(3, 128, (2, 12), generator=torch.Generator().manual_seed(7))


def logits(model: Any) -> torch.Tensor:
    model.eval()
    with torch.no_grad():
        return model(input_ids=INPUT_IDS, use_cache=False).logits.float()


def merged_logits(path: Path, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Logits of the merged model, loaded strictly: no missing, unexpected or mismatched keys."""
    model, info = AutoModelForCausalLM.from_pretrained(path, dtype=dtype, output_loading_info=True)
    for kind in ("missing_keys", "unexpected_keys", "mismatched_keys", "error_msgs"):
        assert not info.get(kind), f"{kind} loading {path}: {info[kind]}"
    return logits(model)


def peft_logits(base: Path, adapter: Path, dtype: torch.dtype = torch.float32, scale: float = 1.0) -> torch.Tensor:
    """The reference: PEFT with the adapter attached (unmerged), optionally with every LoRA scaling × `scale`."""
    model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base, dtype=dtype), adapter)
    if scale != 1.0:  # by hand: peft 0.21's LoraLayer.scale_layer skips embedding layers (it looks in lora_A only)
        for module in model.modules():
            if isinstance(module, LoraLayer):
                module.scaling = {name: value * scale for name, value in module.scaling.items()}
    return logits(model)


def tensors(path: Path) -> dict[str, torch.Tensor]:
    found = {}
    for shard in sorted(path.glob("*.safetensors")):
        with safe_open(str(shard), framework="pt") as handle:
            found.update({key: handle.get_tensor(key) for key in handle.keys()})
    return found


def snapshot(path: Path) -> dict[str, str]:
    return {str(p.relative_to(path)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(path.rglob("*")) if p.is_file()}


def assert_close(actual: torch.Tensor, expected: torch.Tensor, atol: float) -> None:
    difference = (actual - expected).abs().max().item()
    assert difference <= atol, f"max |Δlogit| {difference:.3g} > {atol:.3g}"


@pytest.fixture(scope="module")
def llama(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("llama")
    base = save_base(llama_config(), root / "base")
    return base, save_adapter(base, root / "adapter", target_modules=LLAMA_TARGETS)


# --- merges that must equal PEFT -----------------------------------------------------------------------------------


def test_llama_fp32_merge_equals_peft_and_keeps_the_shard_layout(llama: tuple[Path, Path], tmp_path: Path) -> None:
    base, adapter = llama
    report = merge_adapter(base, adapter, tmp_path / "merged")

    shards = sorted(p.name for p in base.glob("model-*.safetensors"))
    assert len(shards) > 2, "the fixture must be sharded"
    assert isinstance(report, MergeReport)
    assert report.shards == tuple(shards) and report.modules_merged == 2 * len(LLAMA_TARGETS)
    assert report.tensors_replaced == 0 and report.elapsed_s >= 0
    out = tmp_path / "merged"
    assert report.bytes_written == sum(p.stat().st_size for p in out.iterdir())
    assert (out / "model.safetensors.index.json").read_bytes() == (base / "model.safetensors.index.json").read_bytes()
    assert (out / "config.json").read_bytes() == (base / "config.json").read_bytes()
    assert (out / "generation_config.json").is_file()
    for shard in shards:  # same tensors, same order, same metadata in every shard
        with safe_open(str(base / shard), "pt") as before, safe_open(str(out / shard), "pt") as after:
            assert list(after.keys()) == list(before.keys()) and after.metadata() == before.metadata()

    assert_close(merged_logits(out), peft_logits(base, adapter), FP32_ATOL)
    # and the adapter matters: the base alone is far away
    assert (merged_logits(base) - peft_logits(base, adapter)).abs().max() > 100 * FP32_ATOL

    merged, original = tensors(out), tensors(base)
    changed = {key for key in original if not torch.equal(original[key], merged[key])}
    assert changed == {f"model.layers.{i}.self_attn.{t}.weight" for i in range(2) for t in LLAMA_TARGETS}


def test_gpt_bigcode_multi_query_merge_equals_peft(tmp_path: Path) -> None:
    base = save_base(bigcode_config(), tmp_path / "base")
    adapter = save_adapter(base, tmp_path / "adapter", target_modules=BIGCODE_TARGETS)
    assert json.loads((adapter / "adapter_config.json").read_text())["fan_in_fan_out"] is False  # nn.Linear here
    report = merge_adapter(base, adapter, tmp_path / "merged")
    assert report.modules_merged == 2 * 4  # c_attn, attn.c_proj, mlp.c_fc, mlp.c_proj per layer
    assert_close(merged_logits(tmp_path / "merged"), peft_logits(base, adapter), FP32_ATOL)


def test_gpt2_conv1d_fan_in_fan_out_is_transposed(tmp_path: Path) -> None:
    base = save_base(gpt2_config(), tmp_path / "base")
    adapter = save_adapter(base, tmp_path / "adapter", target_modules=BIGCODE_TARGETS)
    config = json.loads((adapter / "adapter_config.json").read_text())
    assert config["fan_in_fan_out"] is True  # PEFT sets it for Conv1D (weights stored [in, out])
    merge_adapter(base, adapter, tmp_path / "merged")
    assert_close(merged_logits(tmp_path / "merged"), peft_logits(base, adapter), FP32_ATOL)

    (adapter / "adapter_config.json").write_text(json.dumps(dict(config, fan_in_fan_out=False)))
    with pytest.raises(ValueError, match=r"c_attn: base weight .* is \[32, 96\], the LoRA update is \[96, 32\]"):
        merge_adapter(base, adapter, tmp_path / "wrong")
    assert not (tmp_path / "wrong").exists()


def test_single_file_base(tmp_path: Path) -> None:
    base = save_base(llama_config(), tmp_path / "base", shard=None)
    assert (base / "model.safetensors").is_file() and not (base / "model.safetensors.index.json").exists()
    adapter = save_adapter(base, tmp_path / "adapter", target_modules=LLAMA_TARGETS)
    report = merge_adapter(base, adapter, tmp_path / "merged")
    assert report.shards == ("model.safetensors",)
    assert_close(merged_logits(tmp_path / "merged"), peft_logits(base, adapter), FP32_ATOL)


def test_bf16_base_stays_bf16_and_is_rounded_once(tmp_path: Path) -> None:
    """The merged bf16 weights are the exact float32 merge rounded once to bf16 — within bf16's rounding (relative
    2⁻⁹, checked at 2⁻⁸), and never worse on average than PEFT's own merge_and_unload (which, with the float32 LoRA
    factors PEFT keeps by default, also rounds W + ΔW once; with bf16 factors it would round ΔW first).

    Logits: the reference is PEFT on the bf16 base upcast to float32 with the adapter unmerged, i.e. the exact
    merged function; the merged model (upcast likewise) differs only by the rounding of its merged weights to bf16.
    Each merged weight moves by at most 2⁻⁹ (0.2 %) of itself; the four adapted projections of each of the two
    layers compound that to about 0.6 % of the logit scale here (observed max|Δ| / max|logit| = 6e-3, and PEFT's own
    bf16 merge_and_unload lands at the same 6e-3), so the bound is max|Δ| ≤ 2e-2 · max|logit| — the size of a few
    bf16 roundings, far below what a wrong scale or a missing module does (≈ 100 % of the scale, see the fp32 test).
    """
    base = save_base(llama_config(), tmp_path / "base", dtype=torch.bfloat16)
    adapter = save_adapter(base, tmp_path / "adapter", target_modules=LLAMA_TARGETS)
    merge_adapter(base, adapter, tmp_path / "merged")

    merged, original = tensors(tmp_path / "merged"), tensors(base)
    assert {t.dtype for t in merged.values()} == {torch.bfloat16}
    config = json.loads((adapter / "adapter_config.json").read_text())
    scale = config["lora_alpha"] / config["r"]
    with safe_open(str(adapter / "adapter_model.safetensors"), "pt") as handle:
        lora = {key: handle.get_tensor(key).float() for key in handle.keys()}
    peft_model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base, dtype=torch.bfloat16), adapter)
    peft_merged = peft_model.merge_and_unload().state_dict()
    ours_error = peft_error = 0.0
    for key in [k for k in original if k.endswith(tuple(f"{t}.weight" for t in LLAMA_TARGETS))]:
        module = key.removesuffix(".weight")
        exact = original[key].float() + scale * (lora[f"base_model.model.{module}.lora_B.weight"]
                                                 @ lora[f"base_model.model.{module}.lora_A.weight"])
        assert torch.allclose(merged[key].float(), exact, rtol=2**-8, atol=0), key
        ours_error += (merged[key].float() - exact).abs().mean().item()
        peft_error += (peft_merged[key].float() - exact).abs().mean().item()
    assert ours_error <= peft_error

    reference = peft_logits(base, adapter, dtype=torch.float32)
    assert_close(merged_logits(tmp_path / "merged", dtype=torch.float32), reference,
                 2e-2 * reference.abs().max().item())


def test_bf16_base_merged_into_float32(tmp_path: Path) -> None:
    base = save_base(llama_config(), tmp_path / "base", dtype=torch.bfloat16)
    adapter = save_adapter(base, tmp_path / "adapter", target_modules=LLAMA_TARGETS)
    merge_adapter(base, adapter, tmp_path / "merged", dtype="float32")

    out = tmp_path / "merged"
    assert {t.dtype for t in tensors(out).values()} == {torch.float32}
    assert json.loads((out / "config.json").read_text())["dtype"] == "float32"
    index = json.loads((out / "model.safetensors.index.json").read_text())
    assert index["metadata"]["total_size"] == 2 * json.loads(
        (base / "model.safetensors.index.json").read_text())["metadata"]["total_size"]
    assert index["weight_map"] == json.loads((base / "model.safetensors.index.json").read_text())["weight_map"]
    assert_close(merged_logits(out), peft_logits(base, adapter, dtype=torch.float32), FP32_ATOL)


def test_weight_down_scales_the_adapter_like_peft_scaling(llama: tuple[Path, Path], tmp_path: Path) -> None:
    base, adapter = llama
    merge_adapter(base, adapter, tmp_path / "merged", weight=0.8)
    assert_close(merged_logits(tmp_path / "merged"), peft_logits(base, adapter, scale=0.8), FP32_ATOL)
    assert (merged_logits(tmp_path / "merged") - peft_logits(base, adapter)).abs().max() > 100 * FP32_ATOL


def test_rslora_scales_by_the_square_root_of_r(tmp_path: Path) -> None:
    base = save_base(llama_config(), tmp_path / "base")
    adapter = save_adapter(base, tmp_path / "adapter", target_modules=LLAMA_TARGETS, use_rslora=True)
    merge_adapter(base, adapter, tmp_path / "merged")
    assert_close(merged_logits(tmp_path / "merged"), peft_logits(base, adapter), FP32_ATOL)


def test_rank_and_alpha_patterns_per_module(tmp_path: Path) -> None:
    base = save_base(llama_config(), tmp_path / "base")
    adapter = save_adapter(base, tmp_path / "adapter", target_modules=LLAMA_TARGETS,
                           rank_pattern={"q_proj": 2, "layers.1.self_attn.v_proj": 8}, alpha_pattern={"o_proj": 32})
    with safe_open(str(adapter / "adapter_model.safetensors"), "pt") as handle:
        assert handle.get_slice("base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight").get_shape()[0] == 2
        assert handle.get_slice("base_model.model.model.layers.1.self_attn.v_proj.lora_A.weight").get_shape()[0] == 8
    merge_adapter(base, adapter, tmp_path / "merged")
    assert_close(merged_logits(tmp_path / "merged"), peft_logits(base, adapter), FP32_ATOL)


@pytest.mark.parametrize("bias", ["all", "lora_only"])
def test_trained_biases_and_modules_to_save_replace_the_base_tensors(bias: str, tmp_path: Path) -> None:
    base = save_base(bigcode_config(), tmp_path / "base")
    adapter = save_adapter(base, tmp_path / "adapter", target_modules=BIGCODE_TARGETS, bias=bias,
                           modules_to_save=["ln_f"], randomize=lambda name: name.endswith("bias") or "ln_f" in name)
    report = merge_adapter(base, adapter, tmp_path / "merged")
    assert report.tensors_replaced > 2  # ln_f weight and bias, and the trained biases
    assert_close(merged_logits(tmp_path / "merged"), peft_logits(base, adapter), FP32_ATOL)


def test_lora_on_an_untied_embedding(tmp_path: Path) -> None:
    base = save_base(llama_config(), tmp_path / "base")
    adapter = save_adapter(base, tmp_path / "adapter", target_modules=["q_proj", "v_proj", "embed_tokens"])
    merge_adapter(base, adapter, tmp_path / "merged")
    assert_close(merged_logits(tmp_path / "merged"), peft_logits(base, adapter), FP32_ATOL)


@pytest.mark.parametrize("model", ["llama-embedding", "gpt2", "bigcode-bias"])
def test_row_blocks_and_copy_chunks_do_not_change_the_result(model: str, tmp_path: Path,
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    """The test models' tensors are far smaller than a block: shrink the blocks (and copy pieces) to a few rows
    so that every tensor is merged, replaced, interpolated and copied in many pieces."""
    import jobs.export.merge

    if model == "llama-embedding":
        base = save_base(llama_config(), tmp_path / "base")
        adapter = save_adapter(base, tmp_path / "adapter", target_modules=[*LLAMA_TARGETS, "embed_tokens"])
    elif model == "gpt2":
        base = save_base(gpt2_config(), tmp_path / "base")
        adapter = save_adapter(base, tmp_path / "adapter", target_modules=BIGCODE_TARGETS)
    else:
        base = save_base(bigcode_config(), tmp_path / "base")
        adapter = save_adapter(base, tmp_path / "adapter", target_modules=BIGCODE_TARGETS, bias="all",
                               modules_to_save=["ln_f"], randomize=lambda n: n.endswith("bias") or "ln_f" in n)
    merge_adapter(base, adapter, tmp_path / "whole", weight=0.8)
    monkeypatch.setattr(jobs.export.merge, "BLOCK_BYTES", 3 * 32 * 4)  # 3 rows of a 32-column float32 block
    monkeypatch.setattr(jobs.export.merge, "COPY_CHUNK_BYTES", 100)  # not a multiple of any element count
    merge_adapter(base, adapter, tmp_path / "pieces", weight=0.8)

    whole, pieces = tensors(tmp_path / "whole"), tensors(tmp_path / "pieces")
    assert whole.keys() == pieces.keys()
    for key in whole:  # a BLAS kernel may sum the r products in another order for another block shape
        assert torch.allclose(whole[key], pieces[key], rtol=1e-6, atol=1e-7), key
    assert_close(merged_logits(tmp_path / "pieces"), peft_logits(base, adapter, scale=0.8) if model != "bigcode-bias"
                 else merged_logits(tmp_path / "whole"), FP32_ATOL)


def test_float16_output_refuses_values_it_cannot_hold(llama: tuple[Path, Path], tmp_path: Path) -> None:
    base = tmp_path / "base"
    shutil.copytree(llama[0], base)
    merge_adapter(base, llama[1], tmp_path / "fp16", dtype="float16")
    assert {t.dtype for t in tensors(tmp_path / "fp16").values()} == {torch.float16}
    assert_close(merged_logits(tmp_path / "fp16"), peft_logits(base, llama[1]), 1e-2)

    shard = next(p for p in sorted(base.glob("model-*.safetensors")) if "model.norm.weight" in safe_open(
        str(p), "pt").keys())
    with safe_open(str(shard), "pt") as handle:
        state = {key: handle.get_tensor(key) for key in handle.keys()}
    state["model.norm.weight"][0] = 1e5
    save_file(state, str(shard), metadata={"format": "pt"})
    with pytest.raises(ValueError, match=r"model\.norm\.weight holds values beyond float16's range"):
        merge_adapter(base, llama[1], tmp_path / "overflow", dtype="float16")
    assert not (tmp_path / "overflow").exists()
    assert not list(tmp_path.glob(".overflow*"))  # the partial output is removed


def test_side_files_are_copied_and_the_adapters_tokenizer_wins(llama: tuple[Path, Path], tmp_path: Path) -> None:
    base, adapter = tmp_path / "base", tmp_path / "adapter"
    shutil.copytree(llama[0], base)
    shutil.copytree(llama[1], adapter)
    for name in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
        (base / name).write_text(f"base {name}")
    (adapter / "tokenizer_config.json").write_text("trained tokenizer_config")
    (adapter / "chat_template.jinja").write_text("{{ messages }}")
    merge_adapter(base, adapter, tmp_path / "merged")
    out = tmp_path / "merged"
    assert (out / "tokenizer_config.json").read_text() == "trained tokenizer_config"
    assert (out / "chat_template.jinja").is_file()
    assert not (out / "tokenizer.json").exists()  # one tokenizer, not a mix of two
    assert not (out / "adapter_config.json").exists()


def test_cli(llama: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    base, adapter = llama
    assert main([str(base), str(adapter), str(tmp_path / "merged"), "--weight", "0.5"]) == 0
    assert "merged 8 LoRA modules" in capsys.readouterr().out
    assert main([str(base), str(adapter), str(tmp_path / "merged")]) == 2
    error = capsys.readouterr().err
    assert error.startswith("merge: error: output ") and error.count("\n") == 1


# --- refusals: one line, nothing written ---------------------------------------------------------------------------


def assert_refused(base: Path, adapter: Path, out: Path, match: str) -> None:
    before = sorted(p.name for p in out.parent.iterdir())
    with pytest.raises(ValueError, match=match) as raised:
        merge_adapter(base, adapter, out)
    assert "\n" not in str(raised.value)
    assert sorted(p.name for p in out.parent.iterdir()) == before  # no output, no partial directory


def test_existing_out_dir_is_never_overwritten_and_a_second_merge_changes_nothing(
        llama: tuple[Path, Path], tmp_path: Path) -> None:
    base, adapter = llama
    occupied = tmp_path / "occupied"
    occupied.mkdir()
    (occupied / "keep.txt").write_text("mine")
    assert_refused(base, adapter, occupied, r"output .*occupied exists: refusing to overwrite")
    assert snapshot(occupied) == {"keep.txt": hashlib.sha256(b"mine").hexdigest()}
    (tmp_path / "empty").mkdir()
    assert_refused(base, adapter, tmp_path / "empty", "exists")

    merge_adapter(base, adapter, tmp_path / "merged")
    first = snapshot(tmp_path / "merged")
    assert_refused(base, adapter, tmp_path / "merged", "exists")  # idempotence guard: a rerun cannot merge twice
    assert snapshot(tmp_path / "merged") == first


def test_dora_is_refused(tmp_path: Path) -> None:
    base = save_base(llama_config(), tmp_path / "base")
    adapter = save_adapter(base, tmp_path / "adapter", target_modules=["q_proj"], use_dora=True)
    assert_refused(base, adapter, tmp_path / "out", r"sets use_dora: DoRA .*only plain LoRA merges here")


def test_other_adapter_types_and_variants_are_refused(llama: tuple[Path, Path], tmp_path: Path) -> None:
    base, adapter = tmp_path / "base", tmp_path / "adapter"
    shutil.copytree(llama[0], base)
    shutil.copytree(llama[1], adapter)
    config = json.loads((adapter / "adapter_config.json").read_text())
    for change, match in [({"peft_type": "IA3"}, "is 'IA3', not LORA"),
                          ({"lora_bias": True}, "sets lora_bias"),
                          ({"alora_invocation_tokens": [5, 6]}, "sets alora_invocation_tokens"),
                          ({"init_lora_weights": "pissa_niter_4"}, "rewrites the base weights"),
                          ({"bias": "everything"}, "bias='everything'")]:
        (adapter / "adapter_config.json").write_text(json.dumps(dict(config, **change)))
        assert_refused(base, adapter, tmp_path / "out", match)


def test_a_4bit_base_is_refused(llama: tuple[Path, Path], tmp_path: Path) -> None:
    base = tmp_path / "base"
    shutil.copytree(llama[0], base)
    config = json.loads((base / "config.json").read_text())
    quantized = dict(config, quantization_config={"quant_method": "bitsandbytes", "load_in_4bit": True})
    (base / "config.json").write_text(json.dumps(quantized))
    assert_refused(base, llama[1], tmp_path / "out",
                   r"quantization_config \(bitsandbytes\): merge into the original 16-bit weights, not the 4-bit base")

    # the state dict bitsandbytes writes for a 4-bit Linear, even without the config saying so
    (base / "config.json").write_text(json.dumps(config))
    shard = base / "model-00002-of-00007.safetensors"
    assert shard.is_file()
    with safe_open(str(shard), "pt") as handle:
        state = {key: handle.get_tensor(key) for key in handle.keys()}
    prefix = "model.layers.0.self_attn.q_proj.weight"
    state.update({prefix: torch.zeros(512, 1, dtype=torch.uint8), f"{prefix}.absmax": torch.ones(16),
                  f"{prefix}.quant_map": torch.ones(16),
                  f"{prefix}.quant_state.bitsandbytes__nf4": torch.zeros(64, dtype=torch.uint8)})
    save_file(state, str(shard), metadata={"format": "pt"})
    assert_refused(base, llama[1], tmp_path / "out", r"bitsandbytes-quantized state .*not the 4-bit base")


def test_a_real_bitsandbytes_4bit_save_is_refused(llama: tuple[Path, Path], tmp_path: Path) -> None:
    """What a QLoRA run's base looks like when saved quantized (bitsandbytes runs on CPU too): refused by its state
    dict alone, once the config's quantization_config is gone."""
    pytest.importorskip("bitsandbytes")
    from transformers import BitsAndBytesConfig

    try:
        model = AutoModelForCausalLM.from_pretrained(
            llama[0], quantization_config=BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4"),
            device_map="cpu")
    except Exception as error:  # noqa: BLE001 - a bitsandbytes build without a CPU back end
        pytest.skip(f"bitsandbytes cannot quantize on this machine: {error}")
    model.save_pretrained(tmp_path / "base-4bit")
    assert_refused(tmp_path / "base-4bit", llama[1], tmp_path / "out", "quantization_config .*not the 4-bit base")
    config = json.loads((tmp_path / "base-4bit" / "config.json").read_text())
    del config["quantization_config"]
    (tmp_path / "base-4bit" / "config.json").write_text(json.dumps(config))
    assert_refused(tmp_path / "base-4bit", llama[1], tmp_path / "out",
                   r"bitsandbytes-quantized state \(.*\.weight\.absmax\): merge into the original 16-bit weights")


def test_an_adapter_for_another_base_names_the_first_missing_module(llama: tuple[Path, Path], tmp_path: Path) -> None:
    three_layers = save_base(LlamaConfig(**{**llama_config().to_dict(), "num_hidden_layers": 3}), tmp_path / "big")
    adapter = save_adapter(three_layers, tmp_path / "adapter", target_modules=LLAMA_TARGETS)
    assert_refused(llama[0], adapter, tmp_path / "out",
                   r"adapter module model\.layers\.2\.self_attn\.k_proj not found in the base")

    wider = save_base(LlamaConfig(**{**llama_config().to_dict(), "hidden_size": 64}), tmp_path / "wide")
    adapter = save_adapter(wider, tmp_path / "wide-adapter", target_modules=LLAMA_TARGETS)
    assert_refused(llama[0], adapter, tmp_path / "out",
                   r"k_proj: base weight .* is \[16, 32\], the LoRA update is \[16, 64\]")


def test_lora_on_a_tied_embedding_is_refused(tmp_path: Path) -> None:
    base = save_base(bigcode_config(), tmp_path / "base")
    adapter = save_adapter(base, tmp_path / "adapter", target_modules=["c_attn", "wte"])
    assert_refused(base, adapter, tmp_path / "out", "input embedding that the base ties to its output head")
