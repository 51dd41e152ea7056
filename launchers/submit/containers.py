"""Running every task of a job inside a container: Apptainer (`--container IMAGE.sif`) or pyxis/enroot
(`--container-image IMAGE`). The runs root and the Hugging Face cache are bound at the same paths inside, so a job
reads and writes the run directory exactly as without a container.

The image must hold the project (containers/Dockerfile builds one; containers/apptainer.def converts it).
"""

from __future__ import annotations

import os
import shlex
import sys
from dataclasses import dataclass
from pathlib import Path

from jobs.spec.errors import UserError

IMAGE_PYTHON = "python3"  # the interpreter inside our images (containers/Dockerfile)


def hf_cache() -> Path:
    return Path(os.environ.get("HF_HOME") or Path.home() / ".cache" / "huggingface").expanduser()


@dataclass(frozen=True)
class Container:
    """How each SLURM task starts Python: directly, in an Apptainer image, or in a pyxis container."""

    apptainer_image: str | None = None
    pyxis_image: str | None = None

    def __post_init__(self) -> None:
        if self.apptainer_image and self.pyxis_image:
            raise UserError("flags --container and --container-image: choose one (Apptainer or pyxis/enroot)")
        if self.apptainer_image and not self.apptainer_image.endswith(".sif"):
            raise UserError(f"flag --container {self.apptainer_image}: expected an Apptainer image file (.sif); "
                            "for a registry image use --container-image")

    @property
    def label(self) -> str:
        return self.apptainer_image or self.pyxis_image or "none"

    def binds(self, runs_root: Path) -> list[str]:
        return [str(runs_root), str(hf_cache())]

    def python(self, runs_root: Path) -> str:
        """The command that runs Python in each task."""
        if self.apptainer_image:
            binds = ",".join(self.binds(runs_root))
            return shlex.join(["apptainer", "exec", "--nv", "--bind", binds, self.apptainer_image, IMAGE_PYTHON])
        if self.pyxis_image:
            return IMAGE_PYTHON
        return shlex.quote(sys.executable)

    def srun_args(self, runs_root: Path) -> list[str]:
        if not self.pyxis_image:
            return []
        mounts = ",".join(f"{path}:{path}" for path in self.binds(runs_root))
        return [f"--container-image={self.pyxis_image}", f"--container-mounts={mounts}", "--no-container-mount-home"]
