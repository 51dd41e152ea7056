"""Model FLOPs per token and MFU (model FLOPs utilization), as the PaLM paper defines them (appendix B).

    from jobs.train.flops import flops_per_token, peak_flops, mfu
    per_token = flops_per_token(model, seq_length=2048)     # 6·N + 12·L·H·Q·T
    peak = peak_flops("NVIDIA H100 80GB HBM3")               # 989e12 (dense bf16), None for an unknown device or CPU
    mfu(tokens_per_s_per_device=3100.0, per_token=per_token, peak=peak)

N counts the weights of every matrix multiply (each nn.Linear, the output head included, tied or not; embedding
lookups are not multiplies) from the layers' shapes, never by building another model (under ZeRO-3 that would start
a collective on one rank): the same number for full, LoRA and QLoRA runs, so MFU compares methods on the model's
FLOPs (a LoRA step does less backward work; its MFU reads lower).
L layers, H heads, Q head size, T the sequence length: the attention score and value products.
"""

from __future__ import annotations

from typing import Any

from jobs.spec.gpus import gpu_of_device


def matmul_parameters(model: Any) -> int:
    """Weights of every nn.Linear of `model`, from in_features × out_features: right for 4-bit layers (packed
    weights) and ZeRO-3 (partitioned weights) alike; LoRA's own factors are not the model's FLOPs."""
    import torch

    return sum(module.in_features * module.out_features for name, module in model.named_modules()
               if isinstance(module, torch.nn.Linear) and "lora_" not in name)


def flops_per_token(model: Any, seq_length: int) -> float:
    """Training FLOPs per token: 6·N (forward and backward of every matmul) + 12·L·H·Q·T (attention)."""
    config = model.config
    layers = getattr(config, "num_hidden_layers", None) or config.n_layer
    heads = getattr(config, "num_attention_heads", None) or config.n_head
    hidden = getattr(config, "hidden_size", None) or config.n_embd
    head_dim = getattr(config, "head_dim", None) or hidden // heads
    return 6.0 * matmul_parameters(model) + 12.0 * layers * heads * head_dim * seq_length


def peak_flops(device_name: str | None) -> float | None:
    """The device's dense bf16 peak from the GPU catalog (jobs.spec.gpus), None for CPU or a device not listed."""
    gpu = gpu_of_device(device_name)
    return gpu.peak_flops if gpu is not None else None


def mfu(tokens_per_s_per_device: float, per_token: float, peak: float) -> float:
    return tokens_per_s_per_device * per_token / peak
