"""The stage registry: the one list of a run's stages, in chain order, and what each needs.

The launcher's chain and stage runner, the tracker and the spool all read it; `launchers.submit.stage.job_of`
maps a name to the job function that a rank calls (tests/unit/test_layout.py checks both agree).
"""

from __future__ import annotations

from dataclasses import dataclass

from jobs.spec.errors import UserError


@dataclass(frozen=True)
class StageSpec:
    name: str
    needs_gpu: bool  # SLURM grants it GPUs (train: the recipe's; eval: a GPU per rank); else CPU only
    tracked: bool  # it has an MLflow child run under the run's parent
    online: bool = False  # it may contact the hub; every other stage runs with HF_HUB_OFFLINE=1


STAGES: tuple[StageSpec, ...] = (
    StageSpec("prepare", needs_gpu=False, tracked=True, online=True),  # fetch weights; tokenize, FIM, pack: once
    StageSpec("train", needs_gpu=True, tracked=True),
    StageSpec("export", needs_gpu=False, tracked=True),  # streaming merge and copies: CPU and disk
    StageSpec("eval", needs_gpu=True, tracked=True),
)
STAGE_NAMES: tuple[str, ...] = tuple(stage.name for stage in STAGES)
BY_NAME = {stage.name: stage for stage in STAGES}
TRACKED_STAGES: tuple[str, ...] = tuple(stage.name for stage in STAGES if stage.tracked)


def parse_stages(text: str) -> tuple[str, ...]:
    """'prepare,train' → ('prepare', 'train'), in chain order; unknown names are an error."""
    names = [name.strip() for name in text.split(",") if name.strip()]
    unknown = [name for name in names if name not in BY_NAME]
    if unknown or not names:
        raise UserError(f"flag --stages {text!r}: unknown stage {unknown[0] if unknown else '(none)'} "
                        f"(allowed: {', '.join(STAGE_NAMES)}, comma-separated)")
    return tuple(name for name in STAGE_NAMES if name in names)
