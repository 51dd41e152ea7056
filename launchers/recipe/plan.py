"""Deriving the plan (`jobs.spec.plan.Plan`): every number derived from a recipe, computed once, checked against
the accelerate config.

World size comes from the resources; gradient accumulation from the global batch when the recipe gives one;
precision from the model dtype (or the QLoRA compute dtype). The accelerate YAML and the DeepSpeed JSON may leave
these out or say "auto"; when they state a value that disagrees with the recipe, that is an error naming both —
never two numbers for one thing.

    >>> from launchers.recipe.load import resolve
    >>> make_plan(resolve("lora", "tiny-llama", ["resources.tasks_per_node=2"])).gradient_accumulation_steps
    1
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from jobs.spec.errors import UserError
from jobs.spec.plan import Plan, Precision
from jobs.spec.schema import Recipe
from launchers.recipe.load import RECIPES_ROOT, Resolved, display_path, read_yaml
from launchers.recipe.user_files import parse_json, read_text

ACCELERATE_DIR = RECIPES_ROOT / "accelerate"
DISTRIBUTED_TYPE = {"ddp": "MULTI_GPU", "deepspeed-zero3": "DEEPSPEED", "fsdp": "FSDP"}
PRECISION_OF_DTYPE = {"bfloat16": "bf16", "float16": "fp16", "float32": "no"}


def default_accelerate_config(recipe: Recipe) -> Path | None:
    backend = recipe.distributed.backend
    if backend == "single":
        return None
    if backend == "fsdp" and recipe.method.kind == "qlora":
        return ACCELERATE_DIR / "fsdp_qlora.yaml"
    return ACCELERATE_DIR / f"{backend.replace('-', '_')}.yaml"


def precision_of(recipe: Recipe) -> Precision:
    quant = recipe.method.quantization
    dtype = quant.compute_dtype if quant is not None else recipe.model.dtype
    return PRECISION_OF_DTYPE[dtype]  # type: ignore[return-value]


def fsdp_version_of(recipe: Recipe) -> int | None:
    """The FSDP version a recipe trains with: as it says, else FSDP1 for QLoRA (the version FSDP-QLoRA is known to
    be correct with), else FSDP2; None without FSDP."""
    if recipe.distributed.backend != "fsdp":
        return None
    if recipe.distributed.fsdp_version is not None:
        return recipe.distributed.fsdp_version
    return 1 if recipe.method.kind == "qlora" else 2


def make_plan(resolved: Resolved) -> Plan:
    recipe = resolved.recipe
    training = recipe.training
    nodes = recipe.resources.nodes
    ranks_per_node = recipe.resources.ranks_per_node
    world = nodes * ranks_per_node
    micro = training.per_device_batch_size
    if training.global_batch_size is not None:
        per_step = micro * world
        if training.global_batch_size % per_step:
            raise UserError(
                f"{resolved.where('training', 'global_batch_size')}: training.global_batch_size "
                f"{training.global_batch_size} is not a multiple of per_device_batch_size × world size "
                f"= {micro} × {world}: choose a global batch divisible by {per_step}"
            )
        accumulation = training.global_batch_size // per_step
    else:
        accumulation = training.gradient_accumulation_steps or 1
    precision = precision_of(recipe)
    fsdp_version = fsdp_version_of(recipe)

    config_path = _accelerate_path(resolved)
    accelerate: dict[str, Any] = {}
    deepspeed: dict[str, Any] | None = None
    if config_path is not None:
        accelerate, origins = read_yaml(config_path)
        checker = _ConfigChecker(config_path, origins)
        checker.expect("distributed_type", accelerate.get("distributed_type"),
                       DISTRIBUTED_TYPE[recipe.distributed.backend],
                       why=f"distributed.backend is {recipe.distributed.backend}")
        checker.agree("mixed_precision", accelerate.get("mixed_precision"), precision, "the recipe's dtype")
        checker.agree("num_machines", accelerate.get("num_machines"), nodes, "resources.nodes")
        checker.agree("num_processes", accelerate.get("num_processes"), world, "the world size")
        ds_section = accelerate.get("deepspeed_config") or {}
        checker.agree("deepspeed_config.gradient_accumulation_steps",
                      ds_section.get("gradient_accumulation_steps"), accumulation, "the recipe")
        if recipe.distributed.backend == "fsdp":
            fsdp = accelerate.get("fsdp_config") or {}
            checker.agree("fsdp_config.fsdp_version", fsdp.get("fsdp_version"), fsdp_version,
                          "distributed.fsdp_version (default: 1 for QLoRA, else 2)")
            if recipe.method.kind == "qlora" and fsdp_version == 1 and fsdp.get("fsdp_use_orig_params", False):
                checker.fail("fsdp_config.fsdp_use_orig_params", "FSDP-QLoRA needs fsdp_use_orig_params: false")
            if fsdp.get("fsdp_cpu_ram_efficient_loading") and not fsdp.get("fsdp_sync_module_states"):
                checker.fail("fsdp_config.fsdp_sync_module_states",
                             "fsdp_cpu_ram_efficient_loading needs fsdp_sync_module_states: true")
        if "deepspeed_config_file" in ds_section:
            deepspeed = _read_deepspeed_json(config_path, ds_section["deepspeed_config_file"])
            ds_where = display_path(Path(deepspeed.pop("__path__")))
            for key, mine, what in (
                ("gradient_accumulation_steps", accumulation, "the recipe"),
                ("train_micro_batch_size_per_gpu", micro, "training.per_device_batch_size"),
                ("train_batch_size", micro * accumulation * world, "the global batch"),
                ("gradient_clipping", training.max_grad_norm, "training.max_grad_norm"),
            ):
                if deepspeed.get(key, "auto") not in ("auto", mine):
                    raise UserError(f"{ds_where}: {key}: {deepspeed[key]} disagrees with {what} ({mine}): "
                                    f"set it to \"auto\" so the recipe is the one source")

    return Plan(
        world_size=world,
        nodes=nodes,
        ranks_per_node=ranks_per_node,
        gradient_accumulation_steps=accumulation,
        global_batch_size=micro * accumulation * world,
        tokens_per_step=micro * accumulation * world * recipe.data.seq_length,
        precision=precision,
        accelerate_config=str(config_path) if config_path else None,
        fsdp_version=fsdp_version,
        accelerate=accelerate,
        deepspeed=deepspeed,
    )


def _accelerate_path(resolved: Resolved) -> Path | None:
    recipe = resolved.recipe
    if recipe.distributed.accelerate_config is None:
        return default_accelerate_config(recipe)
    if recipe.distributed.backend == "single":
        raise UserError(f"{resolved.where('distributed', 'accelerate_config')}: distributed.accelerate_config: "
                        "backend single runs without accelerate's launcher config: remove it or choose a backend")
    path = Path(recipe.distributed.accelerate_config)
    if not path.exists():
        raise UserError(f"{resolved.where('distributed', 'accelerate_config')}: distributed.accelerate_config: "
                        f"no such file {display_path(path)}")
    return path


def _read_deepspeed_json(accelerate_path: Path, reference: str) -> dict[str, Any]:
    """The DeepSpeed JSON an accelerate config points to (relative to the repository root or to the YAML)."""
    candidates = [Path(reference), RECIPES_ROOT.parent / reference, accelerate_path.parent / reference]
    path = next((p for p in candidates if p.exists()), None)
    if path is None:
        raise UserError(f"{display_path(accelerate_path)}: deepspeed_config.deepspeed_config_file: "
                        f"no such file {reference}")
    data = parse_json(read_text(path, display_path(path)), display_path(path))
    if not isinstance(data, dict):
        raise UserError(f"{display_path(path)}: a DeepSpeed config is a JSON object, got {type(data).__name__}")
    data["__path__"] = str(path)
    return data


@dataclass(frozen=True)
class _ConfigChecker:
    path: Path
    origins: dict[tuple[str, ...], Any]

    def where(self, dotted: str) -> str:
        origin = self.origins.get(tuple(dotted.split(".")))
        return str(origin) if origin else display_path(self.path)

    def fail(self, dotted: str, message: str) -> None:
        raise UserError(f"{self.where(dotted)}: {dotted}: {message}")

    def expect(self, dotted: str, value: Any, wanted: Any, why: str) -> None:
        if value != wanted:
            self.fail(dotted, f"{value!r} but {why}: expected {wanted}")

    def agree(self, dotted: str, value: Any, mine: Any, what: str) -> None:
        """A value the config may omit (or leave "auto"); if stated, it must equal the recipe's."""
        if value is None or value == "auto" or value == mine:
            return
        self.fail(dotted, f"{value!r} disagrees with {what} ({mine}): remove it, the recipe is the one source")
