"""ZeRO-3 consolidation (jobs.export.consolidate) on a hand-built 2-rank checkpoint, without DeepSpeed.

    .venv/bin/python -m pytest tests/unit/test_consolidate.py -q

The checkpoint's pickles name a class of a package that is not installed, as DeepSpeed's name its loss scaler:
the consolidation must read it as a placeholder (importing nothing) and still assemble every parameter from the
ranks' flat fp32 pieces. (tests/integration/test_resume_and_zero3.py checks it against zero_to_fp32 on a real run.)
"""

from __future__ import annotations

import math
import sys
import types
from collections import OrderedDict
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from jobs.export.consolidate import Placeholder, consolidate_zero3, is_zero_checkpoint, load_torch_only

MISSING = "not_installed_scaler_pkg"


class LossScaler:
    def __init__(self, scale: float) -> None:
        self.cur_scale = scale


def save_zero3(directory: Path, params: dict[str, torch.Tensor], world: int = 2) -> None:
    """final/ as DeepSpeed's ZeRO-3 save leaves it without the 16-bit gather: `latest`, and per rank a model
    states file (names and shapes) and an optimizer states file (the rank's piece of every parameter, end to end)."""
    tag = directory / "global_step3"
    tag.mkdir(parents=True)
    (directory / "latest").write_text("global_step3\n")
    module = types.ModuleType(MISSING)
    module.LossScaler = LossScaler
    LossScaler.__module__ = MISSING
    sys.modules[MISSING] = module  # importable while saving only
    try:
        shapes = OrderedDict((name, tensor.shape) for name, tensor in params.items())
        for rank in range(world):
            pieces = []
            for tensor in params.values():
                piece = math.ceil(tensor.numel() / world)
                flat = torch.cat([tensor.flatten(), torch.zeros(piece * world - tensor.numel())])
                pieces.append(flat[rank * piece:(rank + 1) * piece])
            torch.save({"param_shapes": [shapes], "buffer_names": [], "module": None, "shared_params": {},
                        "frozen_param_shapes": None},
                       tag / f"zero_pp_rank_{rank}_mp_rank_00_model_states.pt")
            torch.save({"optimizer_state_dict": {"fp32_flat_groups": [torch.cat(pieces)],
                                                 "loss_scaler": LossScaler(2.0**16)}},
                       tag / f"bf16_zero_pp_rank_{rank}_mp_rank_00_optim_states.pt")
    finally:
        del sys.modules[MISSING]


def test_consolidates_without_importing_the_classes_the_pickles_name(tmp_path: Path) -> None:
    generator = torch.Generator().manual_seed(0)
    params = {"wte.weight": torch.randn(7, 3, generator=generator), "h.0.bias": torch.randn(5, generator=generator)}
    final = tmp_path / "final"
    save_zero3(final, params)
    assert is_zero_checkpoint(final)
    optim = next(final.glob("global_step3/*optim_states.pt"))
    with pytest.raises(ModuleNotFoundError):
        torch.load(optim, weights_only=False)  # a plain load imports the package the pickle names
    scaler = load_torch_only(optim)["optimizer_state_dict"]["loss_scaler"]
    assert isinstance(scaler, Placeholder) and scaler.state == {"cur_scale": 2.0**16}
    assert MISSING not in sys.modules

    out = consolidate_zero3(final, tmp_path / "model")
    written = load_file(out / "model.safetensors")
    assert written.keys() == params.keys()
    for name, tensor in params.items():
        torch.testing.assert_close(written[name], tensor, atol=0, rtol=0, msg=name)
