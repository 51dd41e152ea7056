"""The shape of the house, checked: data flows one way (jobs/ never imports launchers/), the stage registry and the
stage runner agree, product files stay small, and the launcher works on a login node without the training stack.

The light-install tests run `launch` in a child interpreter where torch, transformers, peft, trl, deepspeed,
bitsandbytes, accelerate, datasets and mlflow cannot be imported (as after `pip install -e .`), so they hold even
though this venv has the whole stack. CI also makes a real light install (.ci/light_install.sh).

    .venv/bin/python -m pytest tests/unit/test_layout.py
"""

from __future__ import annotations

import inspect
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from jobs.spec.stages import STAGE_NAMES
from launchers.submit.stage import job_of

ROOT = Path(__file__).resolve().parents[2]
PRODUCT = ("jobs", "launchers", "recipes", "tools", "bench")
MAX_LINES = 450
HEAVY = ("torch", "transformers", "peft", "trl", "deepspeed", "bitsandbytes", "accelerate", "datasets", "mlflow",
         "matplotlib", "safetensors")

# Installed in the child before anything else: importing a heavy package fails as if it were not installed.
BLOCKER = f"""
import importlib.abc, sys
class _NotInstalled(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.partition(".")[0] in {HEAVY!r}:
            raise ModuleNotFoundError(f"No module named {{name!r}}", name=name)
        return None
sys.meta_path.insert(0, _NotInstalled())
"""


def product_files(suffix: str = ".py") -> list[Path]:
    return sorted(p for top in PRODUCT for p in (ROOT / top).rglob(f"*{suffix}")
                  if "assets" not in p.parts and "__pycache__" not in p.parts)


def test_jobs_never_import_launchers() -> None:
    pattern = re.compile(r"^\s*(from|import)\s+launchers\b", re.MULTILINE)
    offenders = [str(p.relative_to(ROOT)) for p in (ROOT / "jobs").rglob("*.py") if pattern.search(p.read_text())]
    assert not offenders


def test_the_contract_imports_nothing_of_ours_above_it() -> None:
    pattern = re.compile(r"^\s*(?:from|import)\s+((?:jobs|launchers)(?:\.\w+)*)", re.MULTILINE)
    for path in (ROOT / "jobs" / "spec").glob("*.py"):
        imported = pattern.findall(path.read_text())
        assert all(name.startswith("jobs.spec") for name in imported), (path.name, imported)


def test_every_stage_of_the_registry_has_a_job_taking_recipe_plan_context() -> None:
    for name in STAGE_NAMES:
        job = job_of(name)
        assert list(inspect.signature(job).parameters) == ["recipe", "plan", "context"], name


def test_product_files_stay_small() -> None:
    long = {str(p.relative_to(ROOT)): n for p in product_files() if (n := len(p.read_text().splitlines())) > MAX_LINES}
    assert not long, f"over {MAX_LINES} lines: {long}"


def run_light(code: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    """`code` in a child interpreter that cannot import the training stack."""
    return subprocess.run([sys.executable, "-c", BLOCKER + code], cwd=cwd, capture_output=True, text=True,
                          timeout=300, env={"PATH": "/usr/bin:/bin", "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(ROOT),
                               "HF_HUB_CACHE": os.environ["HF_HUB_CACHE"]})


def test_every_launcher_module_and_the_contract_import_without_the_training_stack(tmp_path: Path) -> None:
    modules = [".".join(p.relative_to(ROOT).with_suffix("").parts).removesuffix(".__init__")
               for top in ("launchers", "jobs/spec") for p in (ROOT / top).rglob("*.py")]
    done = run_light(f"import importlib\nfor m in {modules!r}: importlib.import_module(m)\nprint('ok')", tmp_path)
    assert done.returncode == 0 and done.stdout.strip() == "ok", done.stderr


def test_launch_without_the_training_stack(tmp_path: Path) -> None:
    """--help, recipes, show and --dry-run of every shipped recipe: exit 0 and no traceback."""
    code = """
import contextlib, io, json
from launchers.cli.main import main
from launchers.recipe.load import list_methods, list_models
commands = [["--help"], ["recipes"], ["show", "qlora", "starcoder15b"], ["plan", "full-ft", "starcoder15b", "-N", "1,2"]]
commands += [[method, model, "--dry-run"] for model in list_models() for method in list_methods(model)]
results = []
for argv in commands:
    err = io.StringIO()
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(err):
        try:
            code = main(argv)
        except SystemExit as exit:  # --help
            code = exit.code
    results.append([argv, code, err.getvalue()])
print(json.dumps(results))
"""
    done = run_light(code, tmp_path)
    assert done.returncode == 0, done.stderr
    results = json.loads(done.stdout.splitlines()[-1])
    assert len(results) > 10
    for argv, code, err in results:
        assert code == 0 and "Traceback" not in err, (argv, err)


@pytest.mark.parametrize(("method", "model"), [("lora", "tiny-starcoder"), ("qlora", "starcoder15b")])
def test_pre_submission_checks_skip_what_needs_torch_with_one_line(tmp_path: Path, method: str, model: str) -> None:
    code = f"""
from pathlib import Path
from launchers.recipe.checks import check_files, check_lora_targets
from launchers.recipe.load import resolve
from launchers.recipe.plan import make_plan
resolved = resolve({method!r}, {model!r})
check_files(resolved)
make_plan(resolved)
check_lora_targets(resolved, Path("cache"))
"""
    done = run_light(code, tmp_path)
    assert done.returncode == 0, done.stderr
    assert done.stderr.splitlines() == [
        "warning: LoRA targets not checked here (torch is not installed); pip install -e '.[train]' to check them "
        "before submitting"]


def test_launch_export_checks_another_base_without_the_training_stack(tmp_path: Path) -> None:
    """`launch export RUN --base OTHER` reads the bases' safetensors headers before submitting: no torch needed."""
    import shutil

    from tests.unit.test_export import make_run

    run, _ = make_run(tmp_path, "lora")
    four_bit = tmp_path / "base-4bit"
    shutil.copytree(run.base, four_bit)
    config = json.loads((four_bit / "config.json").read_text())
    config["quantization_config"] = {"quant_method": "bitsandbytes", "load_in_4bit": True}
    (four_bit / "config.json").write_text(json.dumps(config))
    code = f"""
import sys
from launchers.cli.main import main
code = main(["export", "r1", "--base", {str(four_bit)!r}])
assert not {{"torch", "safetensors"}} & set(sys.modules)
sys.exit(code)
"""
    done = run_light(code, tmp_path)
    assert done.returncode == 2, done.stderr
    (line,) = done.stderr.splitlines()
    assert line.endswith("merge into the original 16-bit weights, not the 4-bit base"), line
    assert not run.versions()
