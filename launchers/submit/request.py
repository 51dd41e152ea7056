"""What starting a run's stages needs besides the run directory's own files, and how it is recorded.

`StartRequest.launch_record` writes a new run's launch.json: the command line (redacted), the executor, the stages,
the resolved sbatch options and container. `StartRequest.again` reads them back, so `launch resume`, `launch
export` and `launch eval` submit exactly what the first launch did. The runners (launchers/submit/chain.py,
launchers/submit/local.py) take a StartRequest; launchers/submit/start.py picks one.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

from jobs.spec.plan import Plan
from jobs.spec.redaction import redact_text
from jobs.spec.rundir import DamagedFile, RunDir
from jobs.spec.schema import Recipe
from launchers.submit.containers import Container
from launchers.submit.slurm import SlurmOptions
from launchers.submit.stage import Stage


@dataclass(frozen=True)
class StartRequest:
    run: RunDir
    recipe: Recipe
    plan: Plan
    executor: str  # slurm | local | debug: a key of RUNNERS
    stages: tuple[str, ...]
    options: SlurmOptions
    container: Container
    max_requeues: int
    parsable: bool = False
    created: Path | None = None  # what making the run directory made: removed again if SLURM refuses the chain

    def tasks(self) -> dict[str, Stage]:
        """What each stage's ranks run (pickled by submitit)."""
        return {stage: Stage(stage, str(self.run.path), self.recipe, self.plan, self.options.requeue)
                for stage in self.stages}

    def launch_record(self, argv: list[str]) -> dict[str, Any]:
        """launch.json of a new run: the command line (redacted), where and how it runs, and (filled in as the
        stages are submitted) their job ids."""
        return {
            "argv": ["launch", *(redact_text(arg) for arg in argv)], "executor": self.executor,
            "stages": list(self.stages), "container": self.container.label, "max_requeues": self.max_requeues,
            "resolved": {"slurm": asdict(self.options), "container": asdict(self.container)},
            "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "jobs": {},
        }

    @classmethod
    def again(cls, run: RunDir, record: dict[str, Any], recipe: Recipe, stages: tuple[str, ...],
              resolved: dict[str, Any]) -> StartRequest:
        """`stages` of an existing run, where and how it was launched: `resolved` is launch.json's "resolved"
        (sbatch options and container); without its --dependency: the first launch waited for it already."""
        slurm = dict(resolved["slurm"], setup=tuple(resolved["slurm"].get("setup") or ()))
        try:
            options, container = SlurmOptions(**slurm), Container(**resolved["container"])
        except TypeError:
            raise DamagedFile(run.launch_file, "has sbatch options or a container this launch does not know "
                                               '("resolved")') from None
        return cls(run, recipe, run.read_plan(), record["executor"], stages, replace(options, dependency=None),
                   container, record.get("max_requeues", 3))
