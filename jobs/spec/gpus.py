"""The one GPU catalog: memory, dense bf16 peak, interconnect and the MFU the planner assumes, per device type.

    from jobs.spec.gpus import GPUS, gpu_named, gpu_of_device
    GPUS["a100-80gb"].memory_gib                      # 79.2: what torch reports as total capacity
    gpu_of_device("NVIDIA H100 80GB HBM3").peak_flops  # 989e12; None for CPU or a device not listed

The planner (launchers/planner/) reads it by key (`--gpu`, `resources.gpu_type`); the train stage's MFU
(jobs/train/flops.py) by torch's device name. Figures are vendor datasheets (dense bf16 tensor-core peak, no
sparsity; V100 and T4, without bf16: fp16; NVLink per GPU per direction; the usual InfiniBand build-out per node:
8 × HDR 200 Gb/s for A100 nodes, 8 × NDR 400 Gb/s for H100/H200, 2 × 200 Gb/s for PCIe cards), memory as torch
reports it (GiB, after the driver's reservation). `assumed_mfu` is the share of peak a Trainer + DeepSpeed/FSDP
full fine-tune with flash attention typically reaches; docs/benchmarks.md's measured figures replace it
(docs/planning.md).
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Gpu:
    key: str
    device_names: tuple[str, ...]  # substrings of torch.cuda.get_device_name(); the first catalog match wins
    memory_gib: float
    peak_flops: float  # dense bf16 (V100: fp16), per device
    intra_node_gbs: float  # GB/s per GPU per direction to the node's other GPUs (NVLink, else PCIe)
    inter_node_gbs: float  # GB/s per node per direction to other nodes (InfiniBand/RoCE)
    assumed_mfu: float


CATALOG: tuple[Gpu, ...] = (
    Gpu("gh200", ("GH200",), 94.5, 989e12, 450, 400, 0.40),
    Gpu("h200", ("H200",), 139.8, 989e12, 450, 400, 0.40),
    Gpu("h100-pcie", ("H100 PCIe",), 79.1, 756e12, 64, 50, 0.35),
    Gpu("h100-nvl", ("H100 NVL",), 93.1, 835e12, 300, 100, 0.35),
    Gpu("h100", ("H100",), 79.1, 989e12, 450, 400, 0.40),
    Gpu("a100-80gb", ("A100-SXM4-80GB", "A100 80GB", "A100-80GB", "A100-SXM-80GB"), 79.2, 312e12, 300, 200, 0.40),
    Gpu("a100-40gb", ("A100",), 39.4, 312e12, 300, 200, 0.40),
    Gpu("l40s", ("L40S",), 44.4, 362e12, 32, 50, 0.35),
    Gpu("l40", ("L40",), 44.4, 181e12, 32, 50, 0.35),
    Gpu("a6000", ("A6000",), 47.4, 155e12, 56, 25, 0.35),
    Gpu("a40", ("A40",), 44.4, 150e12, 56, 25, 0.35),
    Gpu("a10", ("A10",), 22.1, 125e12, 32, 25, 0.35),
    Gpu("l4", ("L4",), 22.0, 121e12, 32, 25, 0.35),
    Gpu("v100", ("V100",), 31.7, 125e12, 150, 100, 0.35),
    Gpu("t4", ("T4",), 14.6, 65e12, 16, 12.5, 0.30),  # no bf16: its fp16 tensor-core peak
)
GPUS = {gpu.key: gpu for gpu in CATALOG}


def gpu_named(key: str) -> Gpu | None:
    """A catalog entry by key (`--gpu`, `resources.gpu_type`), ignoring case; None if it is not listed."""
    return GPUS.get(key.lower())


def gpu_of_device(device_name: str | None) -> Gpu | None:
    """The catalog entry of a torch device name ("NVIDIA A100-SXM4-80GB"), None for CPU or a device not listed."""
    if not device_name:
        return None
    return next((gpu for gpu in CATALOG if any(name in device_name for name in gpu.device_names)), None)
