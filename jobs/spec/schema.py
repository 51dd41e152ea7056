"""The recipe: what to train, as one validated, immutable object.

A recipe is resolved once (schema defaults → recipes/<model>/model.yaml → recipes/<model>/<method>.yaml →
user overrides) by `launchers.recipe.load`; every later step reads this object and never the YAML again.
Rules that involve only the recipe's own fields live here, next to the fields; rules that need files (the model's
config, the accelerate config, the data) live in `launchers.recipe.checks`.

Try it: `launch show lora tiny-starcoder` prints a resolved recipe.
"""

from __future__ import annotations

from pathlib import PurePosixPath
from typing import Annotated, Literal

from pydantic import Field, model_validator

from jobs.spec.resources import ResourcesSpec
from jobs.spec.section import NonNegativeInt, PositiveInt, RuleError, Section

Dtype = Literal["bfloat16", "float16", "float32"]
UnitFloat = Annotated[float, Field(ge=0.0, le=1.0)]
BITSANDBYTES_OPTIMIZERS = ("adamw_8bit", "paged_adamw_8bit", "paged_adamw_32bit")  # the optimizers it implements

# The columns each data format reads, by canonical name; `data.fields` may rename them.
FORMAT_FIELDS: dict[str, tuple[str, ...]] = {
    "prompt_completion": ("prompt", "completion"),
    "alpaca": ("instruction", "input", "output"),
    "chat": ("messages",),
    "code": ("content",),
}


class ModelSpec(Section):
    name_or_path: str = Field(description="hub id or local directory")
    revision: str = "main"
    config: str | None = Field(
        None,
        description="local config.json: the architecture for random init and for offline checks "
        "(LoRA targets on the meta device, context length, parameter count)",
    )
    init: Literal["pretrained", "random"] = "pretrained"
    tokenizer: str | None = Field(None, description="hub id or directory; default: name_or_path")
    dtype: Dtype = "bfloat16"
    attn_implementation: Literal["auto", "flash_attention_2", "sdpa", "eager"] = Field(
        "auto", description="auto: flash_attention_2 when flash-attn is installed and a GPU is present, else sdpa"
    )
    trust_remote_code: bool = False

    @model_validator(mode="after")
    def _random_init_needs_config(self) -> ModelSpec:
        if self.init == "random" and self.config is None:
            raise RuleError("init: random builds the model from a config: set model.config", "config", "init")
        return self


class LoraSpec(Section):
    r: PositiveInt
    alpha: Annotated[float, Field(gt=0)]
    dropout: Annotated[float, Field(ge=0.0, lt=1.0)] = 0.0
    target_modules: list[str] | Literal["all-linear"]
    bias: Literal["none", "all", "lora_only"] = "none"
    use_rslora: bool = False


class QuantizationSpec(Section):
    """bitsandbytes 4-bit loading for QLoRA."""

    quant_type: Literal["nf4", "fp4"] = "nf4"
    double_quant: bool = True
    compute_dtype: Dtype = "bfloat16"
    storage_dtype: Literal["uint8", "bfloat16", "float16", "float32"] = Field(
        "uint8", description="bnb_4bit_quant_storage; FSDP-QLoRA needs it equal to model.dtype"
    )


class MethodSpec(Section):
    kind: Literal["full", "lora", "qlora"]
    lora: LoraSpec | None = None
    quantization: QuantizationSpec | None = None

    @model_validator(mode="after")
    def _sections_match_kind(self) -> MethodSpec:
        needs_lora = self.kind in ("lora", "qlora")
        if needs_lora and self.lora is None:
            raise RuleError(f"method.kind {self.kind} needs a method.lora section", "kind")
        if not needs_lora and self.lora is not None:
            raise RuleError("method.kind full trains every weight: remove method.lora", "lora", "kind")
        if self.kind == "qlora" and self.quantization is None:
            raise RuleError("method.kind qlora needs a method.quantization section", "kind")
        if self.kind != "qlora" and self.quantization is not None:
            raise RuleError(f"method.quantization is only for kind qlora (this recipe is {self.kind})",
                            "quantization", "kind")
        return self


class DataSpec(Section):
    source: str = Field(description="a local .jsonl/.json/.parquet file or directory, or a hub dataset id")
    format: Literal["prompt_completion", "alpaca", "chat", "code"]
    template: Literal["alpaca", "chat"] = Field(
        "alpaca",
        description="format alpaca only: 'alpaca' renders the two Alpaca prompts; 'chat' renders each row as a "
        "user/assistant conversation through the tokenizer's chat template (loss on the assistant turn)",
    )
    fields: dict[str, str] = Field(default_factory=dict, description="canonical column -> column in the source")
    split: str = "train"
    seq_length: PositiveInt
    packing: bool = False
    packed_attention: Literal["document", "row"] = Field(
        "document", description="packing: document = each document attends to itself only (padding-free batches); "
        "row = causal attention over the whole row, across documents (pretraining style: no block mask, ~3x faster "
        "with sdpa on CPU)")
    fim_rate: UnitFloat = Field(0.0, description="fraction of documents rewritten fill-in-the-middle")
    fim_spm_rate: UnitFloat = Field(0.0, description="fraction of FIM documents in SPM order (else PSM)")
    fim_mode: Literal["token", "character"] = Field(
        "token", description="token: split token ids (the seed); character: split the text, encode each piece"
    )
    glob: str = Field("**/*", description="directory sources: which files to read (binaries, vendored and "
                      "files over 1 MB are skipped and counted)")
    eval_fraction: Annotated[float, Field(ge=0.0, lt=1.0)] = Field(
        0.0, description="a seeded fraction held out for evaluation: of the rows, or of a source directory's files "
        "(chosen by path, each file keeping its side as others come and go)")
    eval_source: str | None = Field(None, description="held-out data in its own file or directory")
    eval_files: list[str] = Field(
        default_factory=list, description="directory sources: the files held out for evaluation, by path, as "
        "data.glob patterns inside data.source (e.g. src/utils.py, tests/**/*.py); the eval stage also draws its "
        "FIM spans from them")
    max_samples: PositiveInt | None = None

    @model_validator(mode="after")
    def _consistent(self) -> DataSpec:
        allowed = FORMAT_FIELDS[self.format]
        unknown = sorted(set(self.fields) - set(allowed))
        if unknown:
            raise RuleError(
                f"data.fields renames {', '.join(unknown)}, not a column of format {self.format} "
                f"(allowed: {', '.join(allowed)})", "fields", "format"
            )
        if self.template == "chat" and self.format != "alpaca":
            raise RuleError(f"data.template chat renders instruction rows: it needs format alpaca, not {self.format}",
                            "template", "format")
        held_out = [key for key in ("eval_fraction", "eval_source", "eval_files") if getattr(self, key)]
        if len(held_out) > 1:
            raise RuleError(f"set one of data.eval_fraction, data.eval_source and data.eval_files, not "
                            f"{' and '.join(f'data.{key}' for key in held_out)}", *held_out)
        if self.eval_files and self.format != "code":
            raise RuleError(f"data.eval_files holds files of a source directory out: it needs format code, not "
                            f"{self.format}", "eval_files", "format")
        for key, pattern in [("glob", self.glob)] + [("eval_files", p) for p in self.eval_files]:
            if not pattern.strip() or pattern.startswith(("/", "~")) or ".." in PurePosixPath(pattern).parts:
                raise RuleError(f"{pattern!r} must be a relative, non-empty pattern inside the source directory "
                                "(no '..'), e.g. **/*.py", key)
        if self.packed_attention == "row" and not self.packing:
            raise RuleError("data.packed_attention row trains packed rows: set data.packing true", "packed_attention",
                            "packing")
        if self.fim_rate and self.format in ("chat", "alpaca"):
            raise RuleError(f"FIM rewrites raw code documents: data.fim_rate needs format code or "
                            f"prompt_completion, not {self.format}", "fim_rate", "format")
        return self

    def column(self, canonical: str) -> str:
        """The source column that holds `canonical` (e.g. 'prompt')."""
        return self.fields.get(canonical, canonical)


class TrainingSpec(Section):
    learning_rate: Annotated[float, Field(gt=0)]
    lr_scheduler: Literal["cosine", "linear", "constant", "constant_with_warmup"] = "cosine"
    warmup_steps: NonNegativeInt | None = None
    warmup_ratio: Annotated[float, Field(ge=0.0, lt=1.0)] | None = None
    max_steps: PositiveInt | None = None
    epochs: Annotated[float, Field(gt=0)] | None = None
    per_device_batch_size: PositiveInt
    gradient_accumulation_steps: PositiveInt | None = Field(
        None, description="set this or global_batch_size (GA is then derived from the world size), not both"
    )
    global_batch_size: PositiveInt | None = None
    gradient_checkpointing: bool = False
    optimizer: Literal[
        "adamw_torch", "adamw_torch_fused", "adamw_8bit", "paged_adamw_8bit", "paged_adamw_32bit", "adafactor", "sgd"
    ] = "adamw_torch"
    weight_decay: Annotated[float, Field(ge=0)] = 0.0
    max_grad_norm: Annotated[float, Field(gt=0)] = 1.0
    seed: NonNegativeInt = 42
    logging_steps: PositiveInt = 10
    save_steps: PositiveInt = 500
    save_every_minutes: Annotated[float, Field(gt=0)] | None = Field(
        None, description="also save a checkpoint after this much training wall time (bounds what a preemption costs)"
    )
    eval_steps: PositiveInt | None = None
    save_total_limit: PositiveInt | None = 2

    @model_validator(mode="after")
    def _one_source_per_number(self) -> TrainingSpec:
        if (self.max_steps is None) == (self.epochs is None):
            raise RuleError("set exactly one of training.max_steps and training.epochs", "max_steps", "epochs")
        if self.warmup_steps is not None and self.warmup_ratio is not None:
            raise RuleError("set training.warmup_steps or training.warmup_ratio, not both", "warmup_steps",
                            "warmup_ratio")
        if self.gradient_accumulation_steps is not None and self.global_batch_size is not None:
            raise RuleError(
                "set training.gradient_accumulation_steps or training.global_batch_size, not both "
                "(gradient accumulation is derived from the global batch and the world size)",
                "gradient_accumulation_steps", "global_batch_size",
            )
        return self


class DistributedSpec(Section):
    backend: Literal["deepspeed-zero3", "fsdp", "ddp", "single"] = "single"
    accelerate_config: str | None = Field(
        None, description="default: recipes/accelerate/<backend>.yaml (fsdp_qlora.yaml for FSDP with QLoRA)"
    )
    fsdp_version: Literal[1, 2] | None = Field(
        None, description="backend fsdp: torch FSDP1 or FSDP2 (fully_shard); default 1 for QLoRA (FSDP2 can alter "
                          "NF4 weights packed in bf16, bitsandbytes#1945), else 2")


# export.combine modes that need adapters of one rank (checked at launch from the runs' recipes, and by jobs.export.mix
# on the tensors themselves).
EQUAL_RANK_COMBINATIONS = ("linear", "ties", "dare_linear")


class ExportSpec(Section):
    """What the export stage writes; `launch export RUN` overrides it for one export (--checkpoint, --weight, ...)."""

    checkpoint: PositiveInt | None = Field(None, description="export checkpoints/checkpoint-N instead of final/")
    adapter_weight: Annotated[float, Field(gt=0.0, le=4.0)] = Field(
        1.0, description="LoRA/QLoRA: scale of the adapter in the merged model (the seed down-weighted to 0.8)")
    dtype: Dtype | None = Field(None, description="cast floating weights to this dtype (default: a merged model in "
                                                  "model.dtype, the one trained; a full model as it was saved)")
    merge: bool = Field(True, description="LoRA/QLoRA: write the merged model next to the adapter "
                        "(false: adapter only)")
    base: str | None = Field(None, description="LoRA/QLoRA: merge into this base instead (a directory or hub id of the "
                             "same architecture and shapes, e.g. a sibling fine-tune)")
    adapters: dict[str, float] | None = Field(None, description="LoRA/QLoRA: mix these runs' final adapters "
                                              "(experiment/name: weight) instead of this run's alone")
    combine: Literal["linear", "svd", "cat", "ties", "dare_linear"] = Field(
        "cat", description="how export.adapters mix (PEFT add_weighted_adapter semantics; linear, ties and dare_linear "
        "need equal ranks)")
    density: Annotated[float, Field(gt=0.0, le=1.0)] | None = Field(None, description="ties, dare_linear: the "
                                                                     "fraction of values kept")
    gguf: Literal["f16", "q8_0", "q4_0"] | None = Field(None, description="also write the merged/full model as GGUF "
                                                         "for llama.cpp (llama and gpt_bigcode), in this type")

    @model_validator(mode="after")
    def _mixing(self) -> ExportSpec:
        if self.adapters is not None and self.adapter_weight != 1.0:
            raise RuleError("export.adapter_weight and export.adapters: give each adapter its weight in "
                            "export.adapters instead", "adapter_weight", "adapters")
        if self.adapters is not None and not self.adapters:
            raise RuleError("export.adapters is empty: name at least one run: weight", "adapters")
        if self.gguf is not None and not self.merge:
            raise RuleError("export.gguf needs the merged model: drop export.merge=false (--adapter-only)", "gguf",
                            "merge")
        if self.combine in ("ties", "dare_linear") and self.density is None:
            raise RuleError(f"export.combine {self.combine} needs export.density (the fraction of values kept)",
                            "density", "combine")
        return self


class EvalSpec(Section):
    """What the eval stage measures; `launch eval RUN` overrides it for one evaluation (--model, --n, ...)."""

    model: Literal["merged", "adapter", "base"] = Field(
        "merged", description="merged: the newest export's model/ (else final/ or base + adapter); adapter: the "
        "base with final/ attached (QLoRA: on its 4-bit base); base: the model before training")
    humaneval_problems: NonNegativeInt | None = Field(None, description="the first N problems (default all 164; 0 "
                                                      "skips HumanEval)")
    samples: PositiveInt = Field(1, description="completions per problem (n of pass@k)")
    temperature: Annotated[float, Field(ge=0.0, le=2.0)] = Field(0.0, description="0: greedy decoding")
    k: list[PositiveInt] = Field([1], description="pass@k for each k (each at most eval.samples)")
    max_new_tokens: PositiveInt = 384
    batch_size: PositiveInt = 8
    timeout_s: Annotated[float, Field(gt=0.0)] = Field(10.0, description="wall-clock limit per HumanEval program")
    workers: PositiveInt | None = Field(None, description="parallel sandboxed programs (default: the CPUs)")
    allow_unsandboxed: bool = Field(False, description="run model-written code with rlimits only where namespaces "
                                    "are unavailable (network and files open to it): accept the risk explicitly")
    fim_samples: NonNegativeInt = Field(64, description="fill-in-the-middle examples (0 skips the FIM eval)")
    fim_source: str | None = Field(None, description="held-out code for the FIM eval: a file or directory (default:"
                                   " HumanEval's canonical programs, never trained on)")
    fim_max_new_tokens: PositiveInt = 64
    heldout: bool = Field(True, description="loss and perplexity on the recipe's eval split, this model and the base")
    ranks: PositiveInt | None = Field(None, description="ranks on one node that split the generation (default: the "
                                      "recipe's GPUs per node, 1 on CPU)")
    engine: Literal["auto", "transformers", "vllm"] = Field(
        "auto", description="what generates: auto (vLLM where it is installed and a GPU is there, else "
        "transformers), transformers, or vllm (each rank its own engine on its GPU)")
    vllm_gpu_memory_utilization: Annotated[float, Field(gt=0.0, le=1.0)] = Field(
        0.85, description="engine vllm: the fraction of its GPU's memory the engine may take (weights + KV cache)")

    @model_validator(mode="after")
    def _k_within_samples(self) -> EvalSpec:
        if max(self.k) > self.samples:
            raise RuleError(f"pass@{max(self.k)} needs at least {max(self.k)} samples per problem (eval.samples is "
                            f"{self.samples})", "k", "samples")
        return self


class Recipe(Section):
    name: str = Field(description="<model>/<method>, filled in by the loader")
    description: str = ""
    model: ModelSpec
    method: MethodSpec
    data: DataSpec
    training: TrainingSpec
    distributed: DistributedSpec = DistributedSpec()
    resources: ResourcesSpec = ResourcesSpec()
    export: ExportSpec = ExportSpec()
    eval: EvalSpec = EvalSpec()

    @model_validator(mode="after")
    def _cross_section(self) -> Recipe:
        quant = self.method.quantization
        if quant is not None and self.distributed.backend == "fsdp" and quant.storage_dtype != self.model.dtype:
            raise RuleError(
                f"FSDP-QLoRA shards the 4-bit weights as model.dtype: method.quantization.storage_dtype must be "
                f"{self.model.dtype} (got {quant.storage_dtype})",
                "method.quantization.storage_dtype", "model.dtype", "distributed.backend",
            )
        world = self.resources.nodes * self.resources.ranks_per_node
        if self.distributed.backend == "single" and world > 1:
            raise RuleError(
                f"distributed.backend single runs one rank but resources ask for {world}: "
                "choose ddp, fsdp or deepspeed-zero3",
                "resources.nodes", "resources.tasks_per_node", "resources.gpus_per_node", "distributed.backend",
            )
        return self

    def to_yaml(self) -> str:
        """The resolved recipe as YAML: what <run>/recipe.yaml holds and `launch show` prints."""
        import yaml

        return yaml.safe_dump(self.model_dump(mode="json"), sort_keys=False, allow_unicode=True)

    @property
    def uses_bitsandbytes(self) -> bool:
        """A 4-bit base (QLoRA) or an 8-bit/paged optimizer: the only recipes whose stages need bitsandbytes."""
        return self.method.quantization is not None or self.training.optimizer in BITSANDBYTES_OPTIMIZERS

    @property
    def model_name(self) -> str:
        return self.name.split("/", 1)[0]

    @property
    def method_name(self) -> str:
        return self.name.split("/", 1)[1]
