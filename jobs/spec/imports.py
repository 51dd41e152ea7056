"""Installed modules a stage process leaves out: what its recipe never uses but its libraries import as soon as they
find it installed. PEFT and transformers import bitsandbytes whenever it is there, and bitsandbytes imports
torch._inductor: ~0.9 s of a cold stage start here, for a full fine-tune or a LoRA that never quantizes.

    for module in unused_modules(recipe):
        leave_out(module)        # before the stage's libraries are imported: the rank (launchers/submit/stage.py)
                                 # and a local chain's fork server (jobs/forkserver/server.py --leave-out=NAME)

Torch-free: the launcher computes the list, the node applies it.
"""

from __future__ import annotations

import sys

from jobs.spec.schema import Recipe


def unused_modules(recipe: Recipe) -> tuple[str, ...]:
    return () if recipe.uses_bitsandbytes else ("bitsandbytes",)


def leave_out(module: str) -> None:
    """Make an installed `module` look absent to this process, unless something imported it already. find_spec then
    answers None, as for a module that is not installed, and an import raises ImportError, which the libraries that
    import it optionally handle as "not installed"."""
    if module not in sys.modules:
        sys.modules[module] = None  # type: ignore[assignment]
