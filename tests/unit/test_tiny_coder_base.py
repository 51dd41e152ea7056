"""The shipped pretrained base, recipes/assets/tiny-coder-base/ (built by tools/pretrain_base.py), and its builder.

The base is pinned by its weights' sha256 (a rebuild that changes it must update WEIGHTS_SHA256 and the model card
together), loads offline with its own copy of the project's tokenizer, and already models code it never saw: its loss
on library-style Python written for this test, and on the bundled synthetic tinyproj sources, is far below uniform
guessing over the 2048-token vocabulary (ln 2048 = 7.62).
The builder's corpus rule and bad input are checked without training (tests/integration/test_pretrain_base.py
rebuilds twice and compares the bytes).

    .venv/bin/python -m pytest tests/unit/test_tiny_coder_base.py -q
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import math
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest

from launchers.recipe.load import RECIPES_ROOT, resolve

BASE = RECIPES_ROOT / "assets" / "tiny-coder-base"
TOKENIZER = RECIPES_ROOT / "assets" / "tokenizer"
TINYPROJ = RECIPES_ROOT / "assets" / "data" / "code_dir" / "tinyproj"
BUILDER = RECIPES_ROOT.parent / "tools" / "pretrain_base.py"
WEIGHTS_SHA256 = "7189c05bae4fa9efe14facb46378855e429866a28b45f63fe2da8dd86578b120"
MAX_BYTES = 25 * 2**20
TINYPROJ_MAX_LOSS = 5.5  # uniform guessing: 7.62; what fine-tuning on it then lowers


def test_the_weights_are_the_pinned_ones_and_small() -> None:
    weights = BASE / "model.safetensors"
    assert weights.stat().st_size <= MAX_BYTES
    assert hashlib.sha256(weights.read_bytes()).hexdigest() == WEIGHTS_SHA256
    assert WEIGHTS_SHA256 in (BASE / "MODEL_CARD.md").read_text()


def test_the_tokenizer_is_the_projects() -> None:
    for path in sorted(TOKENIZER.iterdir()):
        assert (BASE / path.name).read_bytes() == path.read_bytes(), path.name


# Library-style Python written for this test (the base never saw it): what the standard library reads like.
SNIPPET = '''"""Helpers for reading simple key=value configuration files."""

import os
import re

__all__ = ["ConfigError", "read_config"]

_LINE = re.compile(r"^\\s*([A-Za-z_][A-Za-z0-9_]*)\\s*=\\s*(.*?)\\s*$")


class ConfigError(ValueError):
    """Raised when a configuration file cannot be parsed."""

    def __init__(self, filename, lineno, line):
        self.filename = filename
        self.lineno = lineno
        super().__init__(f"{filename}:{lineno}: cannot parse {line!r}")


def read_config(filename, defaults=None):
    """Return a dictionary of the settings in *filename*.

    Blank lines and lines starting with '#' are ignored.  If *defaults*
    is given, it is copied first, so that the file overrides it.
    """
    result = dict(defaults or {})
    if not os.path.exists(filename):
        return result
    with open(filename, encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            line = line.strip()
            if not line or line.startswith("#"):
                continue
            match = _LINE.match(line)
            if match is None:
                raise ConfigError(filename, lineno, line)
            key, value = match.groups()
            result[key] = value
    return result
'''

def test_it_loads_offline_and_models_unseen_code() -> None:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(BASE)
    model = AutoModelForCausalLM.from_pretrained(BASE, dtype=torch.float32).eval()
    config = json.loads((BASE / "config.json").read_text())
    assert config["model_type"] == "gpt_bigcode" and config["multi_query"] and config["vocab_size"] == len(tokenizer)

    def loss(text: str) -> float:
        ids = tokenizer(text, return_tensors="pt").input_ids[:, : config["n_positions"]]
        with torch.no_grad():
            out = model(input_ids=ids, labels=ids)
        assert torch.isfinite(out.logits).all()
        return float(out.loss)

    assert loss(SNIPPET) < 4.0 < math.log(2048)
    tinyproj = [loss(path.read_text()) for path in sorted(TINYPROJ.glob("*.py"))]  # synthetic, another style
    assert sum(tinyproj) / len(tinyproj) < TINYPROJ_MAX_LOSS, tinyproj


def test_the_recipe_fine_tunes_the_shipped_base() -> None:
    for method in ("full-ft", "lora", "qlora"):
        model = resolve(method, "tiny-coder").recipe.model
        assert model.init == "pretrained" and Path(model.name_or_path) == BASE.resolve()


def builder() -> ModuleType:
    spec = importlib.util.spec_from_file_location("pretrain_base", BUILDER)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def test_the_corpus_leaves_out_tests_site_packages_and_big_files(tmp_path: Path) -> None:
    stdlib = tmp_path / "stdlib"
    files = {"a.py": "x = 1\n", "pkg/b.py": "y = 2\n", "test/test_a.py": "t = 1\n", "pkg/tests/t.py": "t = 2\n",
             "idlelib/idle_test/t.py": "t = 3\n", "site-packages/c.py": "z = 3\n", "big.py": "#" * (2 << 20),
             "latin1.py": "é"}
    for name, text in files.items():
        (stdlib / name).parent.mkdir(parents=True, exist_ok=True)
        (stdlib / name).write_bytes(text.encode("latin-1" if name == "latin1.py" else "utf-8"))
    corpus = builder().build_corpus(stdlib, tmp_path / "work" / "corpus", None)
    manifest = (tmp_path / "work" / "manifest.tsv").read_bytes()
    assert [line.split("\t")[2] for line in manifest.decode().splitlines()] == ["a.py", "pkg/b.py"]
    assert (corpus.files, corpus.bytes) == (2, 12)
    assert corpus.manifest_sha256 == hashlib.sha256(manifest).hexdigest()
    assert (tmp_path / "work" / "corpus" / "pkg" / "b.py").read_text() == "y = 2\n"


@pytest.mark.parametrize(("argv", "message"), [
    (["--steps", "0"], "argument --steps: expected a positive integer, got '0'"),
    ([], "the following arguments are required: --steps"),
    (["--steps", "5", "--out", "/no/such/dir/base"], "--out: no such directory /no/such/dir"),
])
def test_bad_input_is_one_line_and_exit_2(argv: list[str], message: str) -> None:
    done = subprocess.run([sys.executable, str(BUILDER), *argv], capture_output=True, text=True, timeout=60)
    assert done.returncode == 2 and done.stderr == f"pretrain_base.py: error: {message}\n" and not done.stdout
