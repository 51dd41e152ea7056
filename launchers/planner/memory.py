"""Memory per GPU (or CPU rank) while training, by component, and CPU memory per node at load, checkpoint save and
the final save. Bytes throughout; docs/planning.md gives each formula's reasoning and sources.

    gpu = gpu_memory(setup)        # GpuMemory: model_states (params, grads, optimizer), activations, buffers
    cpu = cpu_memory(setup)        # CpuMemory per node: load, checkpoint, final_save
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from launchers.planner.setup import GiB, Setup

QUANT_BLOCK = 64  # bitsandbytes' NF4/FP4 block: one absmax per 64 weights
DOUBLE_QUANT_BLOCK = 256  # double quantization: absmaxes quantized to 8 bits, one fp32 scale per 256 of them
CUDA_CONTEXT = int(0.6 * GiB)  # the CUDA context with cuBLAS/cuDNN handles: outside torch's allocator
NCCL_BUFFERS = int(0.5 * GiB)  # communicator buffers when ranks talk (NCCL_BUFFSIZE 4 MiB × channels × peers)
FRAGMENTATION = 0.10  # torch's caching allocator: reserved above allocated (an assumption the GPU script checks)
HOST_RUNTIME_GPU = 3 * GiB  # CPU memory of a GPU rank's process: Python, torch, CUDA libraries, the stack
HOST_RUNTIME_CPU = int(0.6 * GiB)  # ... of a CPU rank's (measured here: 570 MiB after the training imports)
SAVE_SHARD = 5 * 10**9  # save_pretrained writes shards of at most 5 GB, one at a time


@dataclass(frozen=True)
class GpuMemory:
    parameters: int
    gradients: int
    optimizer: int
    activations: int
    transient: int  # one layer gathered (ZeRO-3, FSDP) or dequantized (QLoRA) at a time
    runtime: int  # the CUDA context and communication buffers: outside torch's allocator
    fragmentation: int

    @property
    def model_states(self) -> int:
        return self.parameters + self.gradients + self.optimizer

    @property
    def buffers(self) -> int:
        return self.transient + self.runtime + self.fragmentation

    @property
    def allocated(self) -> int:
        """What torch's allocator hands out at the peak (torch.cuda.max_memory_allocated)."""
        return self.model_states + self.activations + self.transient

    @property
    def total(self) -> int:
        return self.model_states + self.activations + self.buffers

    def components(self) -> dict[str, int]:
        return {"parameters": self.parameters, "gradients": self.gradients, "optimizer states": self.optimizer,
                "activations": self.activations, "buffers": self.buffers}


@dataclass(frozen=True)
class CpuMemory:
    load: int
    checkpoint: int
    final_save: int


def zero3_model_states(total: int, largest: int, gpus_per_node: int, nodes: int, offload_optimizer: bool,
                       offload_params: bool, zero_init: bool = True, buffer_factor: float = 1.5) -> tuple[int, int]:
    """(CPU bytes per node, GPU bytes per GPU) of ZeRO-3's model states, as DeepSpeed's own estimator counts them
    (deepspeed.runtime.zero.stage3.estimate_zero3_model_states_mem_needs: 18 bytes per parameter sharded over every
    GPU — bf16 weight, fp32 gradient, fp32 master weight and Adam's two moments — plus 4 bytes per parameter of the
    largest layer, gathered whole)."""
    gpus = nodes * gpus_per_node
    largest_layer = 4 * largest
    if offload_optimizer:
        on_cpu = 18 if offload_params else 16  # bytes per parameter kept on the CPU
        gpu = largest_layer + (0 if offload_params else int(2 * total / gpus))
        per_parameter = on_cpu / nodes if zero_init else max(4 * gpus_per_node, on_cpu / nodes)
        cpu = total * per_parameter * buffer_factor
    else:
        gpu = largest_layer + int(18 * total / gpus)
        cpu = largest * 4 * gpus_per_node * buffer_factor if zero_init else total * 4 * gpus_per_node * buffer_factor
    return int(cpu), int(gpu)


def quantized_base(setup: Setup) -> int:
    """A QLoRA base in bytes: the layers' linear weights in 4 bits with their block scales, the rest 16-bit."""
    linear = setup.shape.linear_parameters
    blocks = math.ceil(linear / QUANT_BLOCK)
    scales = blocks + 4 * math.ceil(blocks / DOUBLE_QUANT_BLOCK) if setup.double_quant else 4 * blocks
    return linear // 2 + scales + (setup.shape.parameters - linear) * setup.weight_bytes


def gpu_memory(setup: Setup) -> GpuMemory:
    shape, world, e = setup.shape, setup.world, setup.weight_bytes
    shards = world if setup.sharded else 1
    transient = 0  # what is gathered or dequantized for one layer at a time
    if setup.kind == "full" and setup.backend == "deepspeed-zero3" and setup.device is None and e == 4:
        return _zero3_on_cpu(setup)
    if setup.kind == "full" and setup.backend == "deepspeed-zero3":
        _, states = zero3_model_states(shape.parameters, shape.largest_module, setup.ranks_per_node, setup.nodes,
                                       setup.zero_offload_optimizer, setup.zero_offload_params)
        # DeepSpeed's total, split: the bf16 partition and the largest layer gathered, the fp32 gradient partition,
        # the fp32 master weights and Adam's moments (what an offload moves to the CPU is absent)
        gathered = 4 * shape.largest_module
        parameters = gathered + (0 if setup.zero_offload_params else 2 * shape.parameters // world)
        gradients = 0 if setup.zero_offload_optimizer else 4 * shape.parameters // world
        optimizer = states - parameters - gradients
    elif setup.kind == "full":
        parameters = gradients = shape.parameters * e // shards
        optimizer = int(shape.parameters * setup.optimizer_bytes(e)) // shards
        if setup.backend == "ddp" and world > 1:
            gradients += shape.parameters * e  # DDP's gradient buckets: a second copy of every gradient
        if setup.backend == "fsdp" and world > 1:
            transient = 3 * shape.layer_parameters * e  # a layer's weights gathered, the next prefetched, its grads
    else:  # LoRA or QLoRA: a frozen base, an fp32 adapter with its gradients and optimizer states
        base = quantized_base(setup) if setup.kind == "qlora" else shape.parameters * e
        adapter = setup.lora_parameters
        parameters = base // shards + 4 * adapter // shards
        gradients = 4 * adapter // shards
        optimizer = int(adapter * setup.optimizer_bytes(4)) // shards
        if setup.backend == "deepspeed-zero3" and world > 1:
            optimizer += 4 * adapter // shards  # DeepSpeed's fp32 master copy of the trainable weights
            transient = 4 * shape.largest_module
        elif setup.sharded:
            transient = 2 * shape.layer_parameters * e
        if setup.kind == "qlora":
            transient += max(linear.inputs * linear.outputs for linear in shape.layer_linears) * 2  # dequantized
    activations = activation_bytes(setup)
    runtime = 0 if setup.device is None else CUDA_CONTEXT + (NCCL_BUFFERS if world > 1 else 0)
    fragmentation = int(FRAGMENTATION * (parameters + gradients + optimizer + activations))
    return GpuMemory(parameters, gradients, optimizer, activations, transient, runtime, fragmentation)


def _zero3_on_cpu(setup: Setup) -> GpuMemory:
    """ZeRO-3 of an fp32 model on CPU ranks, as DeepSpeed 0.19 runs it (measured: bench/planner_cpu.py): the flat
    weight partition, an fp32 master copy of it (the no-copy branch of `_create_fp32_partitions` compares a device
    with the string "cpu", never equal on CPU), the flat gradient partition and Adam's moments — 20 bytes per
    parameter per rank; gathered weights kept whole while stage3_max_live_parameters allows (the shipped 1e9 does);
    and at the optimizer step 12 bytes per parameter of temporaries (the flattened gradient, AdamW's intermediates),
    which glibc's default allocator places on top of the heap the forward's activations and gathered weights left
    (freed, not reused: measured 2.2 GB of heap with 0.2 GB in use), so they add up rather than take turns. So do
    the backward's full-size fp32 gradients of the gathered weights, 4 bytes per parameter, each made whole before
    its reduce-scatter to the partition and freed into the same heap: with it the plan is within 10% of the median
    of three runs at 50M and 109M parameters (bench/planner_cpu.py); the ranks still hold 2.4-2.8 bytes per
    parameter more than this sum, unexplained."""
    shape, world = setup.shape, setup.world
    partition = shape.parameters // world
    gathered = 4 * (shape.parameters if setup.zero_max_live >= shape.parameters else shape.largest_module)
    activations = activation_bytes(setup)
    transient = 12 * partition + 4 * shape.parameters
    fragmentation = int(FRAGMENTATION * (20 * partition + activations))
    return GpuMemory(4 * partition + gathered, 4 * partition, 12 * partition, activations, transient, 0, fragmentation)


def activation_bytes(setup: Setup) -> int:
    """Activations of one micro-batch at their peak: what autograd keeps for the backward (`saved_activations`),
    then in the backward the larger of the loss's gradients over the whole vocabulary (fp32 log-probabilities' and
    the logits') and, with gradient checkpointing, one layer's activations rebuilt."""
    tokens = setup.micro_batch * setup.seq_length
    loss_gradients = tokens * setup.shape.vocab * (4 + setup.activation_bytes)
    rebuilt = _layer_activations(setup) * tokens if setup.checkpointing else 0
    return saved_activations(setup) + max(loss_gradients, rebuilt)


def saved_activations(setup: Setup) -> int:
    """What autograd keeps for the backward (Korthikanti et al. 2022, per layer, generalized to multi-query/grouped
    attention, RMSNorm and gated MLPs; equal within 10% to the saved tensors of real models on CPU:
    tests/unit/test_planner_shape.py)."""
    shape, a = setup.shape, setup.activation_bytes
    tokens = setup.micro_batch * setup.seq_length
    if setup.checkpointing:  # each layer's input alone (the layer is rebuilt in the backward)
        layers = shape.layers * a * shape.hidden * tokens
    else:
        layers = shape.layers * _layer_activations(setup) * tokens
    log_probabilities = 4 * tokens * shape.vocab  # the loss keeps its fp32 log-softmax
    return layers + log_probabilities + 3 * a * shape.hidden * tokens  # + the final norm and the head's input


def _layer_activations(setup: Setup) -> int:
    """Bytes one decoder layer keeps per token."""
    shape, a = setup.shape, setup.activation_bytes
    llama_like = shape.gated_mlp  # RMSNorm (keeps 3 tensors), SDPA reading grouped k/v as they are
    mask = a if setup.device is None else 1  # a dropout mask: a byte on GPUs, the activations' dtype on CPU
    # the attention probabilities are kept by eager attention, and on CPU by SDPA's math kernel (taken with dropout)
    probabilities = setup.eager_attention or (setup.device is None and shape.attention_dropout > 0)
    q = shape.heads * shape.head_dim
    repeated = probabilities or not (setup.flash_attention or llama_like)
    kv = q if repeated else shape.kv_heads * shape.head_dim  # k and v, repeated per head where the kernel needs it
    norms = (6 if llama_like else 4) * shape.hidden
    attention = 2 * q + 2 * kv + (0 if probabilities else q)  # q, k, v, the output (and a fused kernel's own copy)
    mlp = (4 if shape.gated_mlp else 2) * shape.intermediate
    per_token = a * (norms + attention + mlp)
    per_token += 2 * shape.hidden * mask if shape.residual_dropout > 0 else 0
    if probabilities:
        per_token += shape.heads * setup.seq_length * (a + (a + mask if shape.attention_dropout > 0 else 0))
    return per_token


def cpu_memory(setup: Setup) -> CpuMemory:
    """CPU memory per node (the busiest node: where rank 0 is)."""
    shape, ranks, world = setup.shape, setup.ranks_per_node, setup.world
    runtime = ranks * (HOST_RUNTIME_GPU if setup.device is not None else HOST_RUNTIME_CPU)
    whole16 = shape.parameters * setup.weight_bytes
    shard = min(whole16, SAVE_SHARD)
    if setup.device is None:  # CPU ranks: the training itself lives here
        training = ranks * gpu_memory(setup).total
        return CpuMemory(runtime + training, runtime + training, runtime + training + whole16)
    if setup.kind == "qlora" or (setup.backend == "deepspeed-zero3" and world > 1):
        load = shard  # read shard by shard: into each rank's partition (zero.Init) or quantized on its GPU
    elif setup.backend == "fsdp" and world > 1:
        load = whole16  # rank 0 reads the whole model; the others build it empty and receive it
    else:
        load = ranks * whole16  # every rank reads the whole model into CPU memory before moving it to its GPU
    if setup.kind == "full" and setup.backend == "deepspeed-zero3" and world > 1:
        checkpoint = ranks * 4 * shape.parameters // world  # torch.save copies each rank's flat fp32 partitions
        final = whole16  # the 16-bit model gathered whole on rank 0, once
    elif setup.kind == "full":
        checkpoint = shard  # written tensor by tensor (DCP) or in save_pretrained's shards
        final = whole16 if setup.sharded else shard  # FSDP: rank 0 reads the shards back whole
    else:
        checkpoint = final = 16 * setup.lora_parameters  # the adapter and its optimizer state
    return CpuMemory(runtime + load, runtime + checkpoint, runtime + final)
