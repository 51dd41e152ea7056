"""Mix LoRA adapters into one (the seed's "dance of LoRAs"), with PEFT's add_weighted_adapter semantics, on the
adapters' own tensors: no base model is loaded.

    from jobs.export.mix import mix_adapters
    mix_adapters([(Path("copilot/final"), 0.5), (Path("assistant/final"), 0.5)], "cat", Path("mixed"))
    launch export RUN --adapters copilot=0.5,assistant=0.5 --combine cat      # the same, inside an export

For every module any adapter targets, with c_i = weight_i × scaling_i (alpha/r, or alpha/√r with rsLoRA):

    linear       A = Σ sign(c_i)·√|c_i|·A_i,  B = Σ √|c_i|·B_i              equal ranks; a rough approximation
    cat          A = [c_1·A_1; c_2·A_2; ...],  B = [B_1, B_2, ...]          rank Σ r_i; exact: Σ c_i·B_i·A_i
    svd          ΔW = Σ c_i·B_i·A_i, truncated to rank max r_i by SVD:      B = U·S, A = Vh
    ties         linear's factors merged with TIES (trim to `density`, elect signs, disjoint mean)   equal ranks
    dare_linear  linear's factors with DARE (random drop at 1 - density, rescale)                    equal ranks

The mixed adapter has r = its rank and lora_alpha = r (scaling 1: the weights and scalings are in the factors),
no rank or alpha patterns, and targets the union of the adapters' modules. ties and dare_linear use PEFT's own
merge_utils. Refused, with one line: adapters of different types or of a base with other module shapes, unequal
ranks for linear/ties/dare_linear, adapters that save whole tensors (modules_to_save, trained biases), and an
output directory that exists.
"""

from __future__ import annotations

import json
import math
import os
import shutil
from collections.abc import Sequence
from pathlib import Path

import torch

from jobs.common.hf_files import ADAPTER_CONFIG, ADAPTER_WEIGHTS
from jobs.common.lora_adapter import PEFT_PREFIX, Adapter, Lora, load_adapter
from jobs.spec.schema import EQUAL_RANK_COMBINATIONS

COMBINATIONS = ("linear", "svd", "cat", "ties", "dare_linear")


def mix_adapters(adapters: Sequence[tuple[Path, float]], combine: str, out_dir: Path,
                 density: float | None = None) -> Path:
    """Write the mix of `adapters` ((directory, weight) pairs) as a PEFT adapter directory `out_dir`."""
    if combine not in COMBINATIONS:
        raise ValueError(f"combine {combine!r}: one of {', '.join(COMBINATIONS)}")
    if combine in ("ties", "dare_linear") and not (density is not None and 0 < density <= 1):
        raise ValueError(f"combine {combine} needs a density in (0, 1] (the fraction of values kept)")
    if out_dir.exists():
        raise ValueError(f"output {out_dir} exists: refusing to overwrite it")
    loaded = [(load_adapter(Path(path), 1.0), weight, Path(path)) for path, weight in adapters]
    for adapter, _, path in loaded:
        if adapter.replacements:
            raise ValueError(f"adapter {path} saves whole tensors ({next(iter(adapter.replacements))}): "
                             "modules_to_save and trained biases cannot be mixed")
    combine = "linear" if len(loaded) == 1 else combine  # as PEFT: one adapter is only scaled
    ranks = {path: _rank(adapter) for adapter, _, path in loaded}
    if combine in EQUAL_RANK_COMBINATIONS and len(set(ranks.values())) > 1:
        raise ValueError(f"combine {combine} needs adapters of equal rank, got "
                         f"{', '.join(f'{p}: r={r}' for p, r in ranks.items())}: use cat or svd")
    new_rank = sum(ranks.values()) if combine == "cat" else max(ranks.values())
    tensors: dict[str, torch.Tensor] = {}
    for name in sorted({name for adapter, _, _ in loaded for name in adapter.loras}):
        parts = [(adapter.loras[name], weight) for adapter, weight, _ in loaded if name in adapter.loras]
        _check_shapes(name, [(lora, path) for (adapter, _, path) in loaded if (lora := adapter.loras.get(name))])
        a, b = _mix_module(parts, combine, new_rank, density)
        module, kind = parts[0][0].module, parts[0][0].kind
        if kind == "embedding":
            tensors[f"{PEFT_PREFIX}{module}.lora_embedding_A"], tensors[f"{PEFT_PREFIX}{module}.lora_embedding_B"] = a, b
        else:
            tensors[f"{PEFT_PREFIX}{module}.lora_A.weight"], tensors[f"{PEFT_PREFIX}{module}.lora_B.weight"] = a, b
    _write(loaded, tensors, new_rank, out_dir, combine, [w for _, w, _ in loaded])
    return out_dir


def _rank(adapter: Adapter) -> int:
    return max(lora.a.shape[0] for lora in adapter.loras.values() if lora.a is not None)


def _check_shapes(name: str, loras: Sequence[tuple[Lora, Path]]) -> None:
    """Every adapter that adapts `name` must see the same layer: (in, out) features and kind."""
    first, first_path = loras[0]
    for lora, path in loras[1:]:
        if (lora.a.shape[1], lora.b.shape[0], lora.kind) != (first.a.shape[1], first.b.shape[0], first.kind):
            raise ValueError(f"adapters disagree on {name}: {first_path} adapts a {first.kind} of "
                             f"{first.a.shape[1]}→{first.b.shape[0]}, {path} one of {lora.a.shape[1]}→"
                             f"{lora.b.shape[0]} (trained on different bases?)")


def _mix_module(parts: Sequence[tuple[Lora, float]], combine: str, new_rank: int,
                density: float | None) -> tuple[torch.Tensor, torch.Tensor]:
    """(A, B) of the mixed module, in the factors' own orientation (A [r, in], B [out, r])."""
    factors = [(lora.a, lora.b, weight * lora.scale, lora) for lora, weight in parts]
    if combine == "cat":
        a = torch.cat([c * a for a, _, c, _ in factors], dim=0)
        b = torch.cat([b for _, b, _, _ in factors], dim=1)
        return _pad(a, b, new_rank)
    if combine == "svd":
        delta = sum(c * (b @ a) for a, b, c, _ in factors)
        assert isinstance(delta, torch.Tensor)
        u, s, vh = torch.linalg.svd(delta, full_matrices=False)  # the same leading vectors, less work
        return vh[:new_rank, :].contiguous(), (u[:, :new_rank] @ torch.diag(s[:new_rank])).contiguous()
    scale_a = torch.tensor([math.copysign(math.sqrt(abs(c)), c) for _, _, c, _ in factors])
    scale_b = torch.tensor([math.sqrt(abs(c)) for _, _, c, _ in factors])
    a_list, b_list = [a for a, _, _, _ in factors], [b for _, b, _, _ in factors]
    if combine == "linear":
        return _weighted_sum(a_list, scale_a), _weighted_sum(b_list, scale_b)
    from peft.utils.merge_utils import dare_linear, ties

    if combine == "ties":
        return ties(a_list, scale_a, density, "total"), ties(b_list, scale_b, density, "total")
    return dare_linear(a_list, scale_a, density), dare_linear(b_list, scale_b, density)


def _weighted_sum(tensors: Sequence[torch.Tensor], weights: torch.Tensor) -> torch.Tensor:
    return sum(w * t for w, t in zip(weights.tolist(), tensors, strict=True))  # type: ignore[return-value]


def _pad(a: torch.Tensor, b: torch.Tensor, rank: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Modules only some adapters target get the full rank with zero rows/columns, as PEFT allocates them."""
    if a.shape[0] == rank:
        return a.contiguous(), b.contiguous()
    full_a = torch.zeros((rank, a.shape[1]), dtype=a.dtype)
    full_b = torch.zeros((b.shape[0], rank), dtype=b.dtype)
    full_a[:a.shape[0]], full_b[:, :b.shape[1]] = a, b
    return full_a, full_b


def _write(loaded: Sequence[tuple[Adapter, float, Path]], tensors: dict[str, torch.Tensor], rank: int, out_dir: Path,
           combine: str, weights: Sequence[float]) -> None:
    from safetensors.torch import save_file

    first, _, first_path = loaded[0]
    targets: set[str] = set()
    for adapter, _, _ in loaded:
        modules = adapter.config.get("target_modules") or []
        targets |= {modules} if isinstance(modules, str) else set(modules)
    dtype = saved_dtype(first_path)
    config = dict(first.config, r=rank, lora_alpha=rank, target_modules=sorted(targets), rank_pattern={},
                  alpha_pattern={}, use_rslora=False)
    staging = out_dir.with_name(f".{out_dir.name}.partial-{os.getpid()}")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    try:
        save_file({k: v.to(dtype).contiguous() for k, v in tensors.items()}, str(staging / ADAPTER_WEIGHTS),
                  metadata={"format": "pt", "clusterft.combine": combine,
                            "clusterft.weights": json.dumps(list(weights))})
        (staging / ADAPTER_CONFIG).write_text(json.dumps(config, indent=2, sort_keys=True) + "\n", encoding="utf-8")
        for name in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "chat_template.jinja"):
            if (first_path / name).is_file():
                shutil.copyfile(first_path / name, staging / name)
        os.rename(staging, out_dir)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise


def saved_dtype(adapter_dir: Path) -> torch.dtype:
    """The dtype the adapter's factors were saved in (the mix is saved the same way)."""
    from safetensors import safe_open

    with safe_open(str(adapter_dir / ADAPTER_WEIGHTS), framework="pt") as handle:
        return handle.get_tensor(next(iter(handle.keys()))).dtype
