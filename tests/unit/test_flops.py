"""MFU's ingredients: FLOPs per token from a config (counted on the meta device), the device peak table, and the
train job's progress metrics (tokens/s per device, MFU only where a peak is known).

    .venv/bin/python -m pytest tests/unit/test_flops.py -q
"""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import pytest

from jobs.train.flops import flops_per_token, matmul_parameters, mfu, peak_flops

transformers = pytest.importorskip("transformers")
from transformers import AutoModelForCausalLM, GPTBigCodeConfig, LlamaConfig  # noqa: E402


def test_flops_per_token_by_hand() -> None:
    llama = LlamaConfig(vocab_size=100, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                        num_attention_heads=4, num_key_value_heads=2)
    # per layer: q 32·32, k and v 32·16 each (2 kv heads of 8), o 32·32, gate/up/down 3·32·64; the head 100·32
    n = 2 * (32 * 32 + 2 * 32 * 16 + 32 * 32 + 3 * 32 * 64) + 100 * 32
    model = AutoModelForCausalLM.from_config(llama)
    assert matmul_parameters(model) == n
    assert flops_per_token(model, seq_length=128) == 6 * n + 12 * 2 * 4 * 8 * 128
    from peft import LoraConfig, get_peft_model

    assert matmul_parameters(get_peft_model(model, LoraConfig(r=4, target_modules=["q_proj"]))) == n  # not LoRA's
    bigcode = GPTBigCodeConfig(vocab_size=100, n_embd=32, n_layer=1, n_head=4, multi_query=True)
    # c_attn 32 → 32 + 2·8 (one shared k/v head), c_proj 32·32, c_fc/c_proj 2·32·128, the (tied) head 100·32
    assert matmul_parameters(AutoModelForCausalLM.from_config(bigcode)) == (32 * 48 + 32 * 32 + 2 * 32 * 128
                                                                            + 100 * 32)


def test_peak_table_and_mfu() -> None:
    assert peak_flops("NVIDIA H100 80GB HBM3") == 989e12
    assert peak_flops("NVIDIA H100 PCIe") == 756e12
    assert peak_flops("NVIDIA A100-SXM4-80GB") == 312e12
    assert peak_flops(None) is None and peak_flops("NVIDIA GeForce GTX 1080") is None
    assert mfu(1000.0, 3e11, 1e15) == pytest.approx(0.3)


def test_progress_metrics_carry_per_device_throughput_and_mfu(tmp_path: Any) -> None:
    from jobs.spec.rundir import RunDir
    from jobs.train.stage import ProgressCallback

    logged: list[dict[str, float]] = []
    tracker = SimpleNamespace(log_metrics=lambda metrics, step: logged.append(metrics))
    state = SimpleNamespace(is_world_process_zero=True, global_step=0, max_steps=10)
    for peak in (1e15, None):
        callback = ProgressCallback(tracker, tokens_per_step=4096, run=RunDir(tmp_path), world_size=4,  # type: ignore[arg-type]
                                    flops_per_token=1e9, peak_flops=peak)
        state.global_step = 0
        callback.on_train_begin(None, state, None)
        state.global_step = 10
        callback.on_log(None, state, None, logs={"loss": 1.0})
    with_peak, without = logged
    assert with_peak["train/tokens_per_s_per_device"] == pytest.approx(with_peak["train/tokens_per_s"] / 4)
    assert with_peak["train/mfu"] == pytest.approx(with_peak["train/tokens_per_s_per_device"] * 1e9 / 1e15)
    assert "train/mfu" not in without
