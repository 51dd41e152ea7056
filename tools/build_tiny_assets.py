"""Build the tiny, license-clean test assets under ``recipes/assets/``.

Everything is generated here, from templates and seeded RNGs (no third-party text):

* ``recipes/assets/data/``: ``prompt_completion.jsonl``, ``alpaca.jsonl``, ``chat.jsonl``,
  ``code.jsonl`` and ``code_dir/`` (a small synthetic Python project).
* ``recipes/assets/tokenizer/``: a StarCoder-style byte-level BPE tokenizer (vocab 2048,
  FIM + ChatML special tokens, ChatML chat template with ``{% generation %}`` markers)
  trained on the text above, loadable offline with ``AutoTokenizer.from_pretrained``.

This file turns generated code into rows of each data format, writes the files, trains the
tokenizer and checks it. The code itself comes from ``tools/synthetic_code.py``, imported as a
sibling module: ``tools/`` is not a package, so this script puts its own directory first on
``sys.path`` (running it as a script does that anyway).

The outputs are byte-identical from one run to the next. It always writes in place (no options).
Run from the repository root:

    .venv/bin/python tools/build_tiny_assets.py
"""

from __future__ import annotations

import json
import os
import random
import shutil
import statistics
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

if str(Path(__file__).resolve().parent) not in sys.path:  # tools/ is not a package: find the sibling module
    sys.path.insert(0, str(Path(__file__).resolve().parent))

from synthetic_code import (  # noqa: E402
    FAMILIES,
    LISTS,
    NUMERIC,
    STRINGS,
    Func,
    fam_affix,
    fam_case,
    fam_clamp,
    fam_class,
    fam_convert,
    fam_list_filter,
    fam_list_reduce,
    fam_mapping,
    fam_range_sum,
    fam_text,
    module_source,
    random_func,
)

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

ROOT = Path(__file__).resolve().parent.parent
ASSETS = ROOT / "recipes" / "assets"
DATA = ASSETS / "data"
TOKENIZER_DIR = ASSETS / "tokenizer"
SEED = 1234

SPECIAL_TOKENS = [
    "<|endoftext|>",
    "<fim_prefix>",
    "<fim_middle>",
    "<fim_suffix>",
    "<fim_pad>",
    "<|pad|>",
    "<|im_start|>",
    "<|im_end|>",
]
VOCAB_SIZE = 2048
MODEL_MAX_LENGTH = 2048

# ChatML; the assistant content and its closing <|im_end|> sit inside {% generation %}, so
# apply_chat_template(..., return_assistant_tokens_mask=True) masks exactly those tokens.
CHAT_TEMPLATE = """\
{%- for message in messages %}
    {%- if message['role'] == 'assistant' %}
        {{- '<|im_start|>assistant\\n' }}
        {%- generation %}{{- message['content'] + '<|im_end|>' }}{%- endgeneration %}
        {{- '\\n' }}
    {%- else %}
        {{- '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>\\n' }}
    {%- endif %}
{%- endfor %}
{%- if add_generation_prompt %}
    {{- '<|im_start|>assistant\\n' }}
{%- endif %}
"""

# --------------------------------------------------------------------------- datasets

def unique_rows(r: random.Random, n: int, make: Callable[[random.Random], dict[str, Any]]) -> list[dict[str, Any]]:
    """Draw rows until n distinct ones are collected (order is the draw order)."""
    rows: dict[str, dict[str, Any]] = {}
    while len(rows) < n:
        row = make(r)
        rows.setdefault(json.dumps(row, sort_keys=True), row)
    return list(rows.values())


def describe(r: random.Random, f: Func) -> str:
    kind = "class" if f.code.startswith("class") else "function"
    return r.choice([
        f"Write a Python {kind} `{f.name}`. {f.summary}",
        f"Task: {f.summary} Name the {kind} `{f.name}`.",
        f"Implement `{f.name}` in Python: {f.summary}",
        f"# {f.summary}\n# Python {kind} name: {f.name}",
        f"Create a small, typed Python {kind} called {f.name}. {f.summary}",
    ])


def prompt_completion_row(r: random.Random) -> dict[str, Any]:
    f = random_func(r)
    return {"prompt": describe(r, f) + "\n", "completion": f.code}


def alpaca_row(r: random.Random) -> dict[str, Any]:
    f = random_func(r)
    mode = r.randrange(6)  # modes 0 and 1 have an input: about a third of the rows
    if mode == 0:
        if f.call is not None:
            return {"instruction": "What does the call at the end return? Answer with the value only.",
                    "input": f"{f.code}\n{f.call}", "output": f.result}
        return {"instruction": "Add a docstring to this class.", "input": f.bare, "output": f.code}
    if mode == 1:
        task = r.randrange(3)
        if task == 0:
            return {"instruction": r.choice(["Add a docstring to this function.", "Document the code below."]),
                    "input": f.bare, "output": f.code}
        if task == 1:
            new = f"{f.name}_v{r.randint(2, 9)}" if f.name[0].islower() else f"{f.name}V{r.randint(2, 9)}"
            return {"instruction": f"Rename `{f.name}` to `{new}`.", "input": f.code,
                    "output": f.code.replace(f.name, new)}
        return {"instruction": "Explain in one sentence what this code does.", "input": f.bare,
                "output": f"`{f.name}` has one job: {f.summary[0].lower()}{f.summary[1:]}"}
    return {"instruction": describe(r, f), "input": "", "output": f.code}


SYSTEM_PROMPTS = ["You are a helpful coding assistant.",
                  "You are a concise Python expert. Answer with code first.",
                  "You write small, typed, well-documented Python functions.",
                  "You help developers with short code tasks."]


def chat_row(r: random.Random) -> dict[str, Any]:
    f = random_func(r)
    messages: list[dict[str, str]] = []
    if r.random() < 0.4:
        messages.append({"role": "system", "content": r.choice(SYSTEM_PROMPTS)})
    opener = r.choice(["Here is an implementation:", "Sure, here you go:", "This should do it:", "Here it is:"])
    messages += [{"role": "user", "content": describe(r, f)},
                 {"role": "assistant", "content": f"{opener}\n\n```python\n{f.code}```"}]
    if r.random() < 0.5:
        if f.call is not None and r.random() < 0.6:
            messages += [{"role": "user", "content": "Can you show an example call?"},
                         {"role": "assistant", "content": f"```python\n>>> {f.call}\n{f.result}\n```"}]
        else:
            messages += [{"role": "user", "content": r.choice(["Explain it briefly.", "What does it do?"])},
                         {"role": "assistant", "content": f"It is a small helper named `{f.name}`. {f.summary}"}]
    return {"messages": messages}


TOPICS = {"numeric": ["mathops", "numbers", "convert", "ranges"], "strings": ["strings", "text", "formatting"],
          "lists": ["lists", "mappings", "filters", "stats"], "mixed": ["helpers", "misc_utils", "common", "tools"]}
PACKAGES = ["utils", "core", "helpers", "toolkit", "common", "lib", "misc", "shared", "app", "engine"]


def code_row(r: random.Random) -> dict[str, Any]:
    kind, families = r.choice([("numeric", NUMERIC), ("strings", STRINGS), ("lists", LISTS), ("mixed", FAMILIES)])
    topic = r.choice(TOPICS[kind])
    text = ""
    while text.count("\n") < 20:
        text, _ = module_source(r, families, topic, r.randint(24, 80))
    return {"content": text, "path": f"{r.choice(PACKAGES)}/{topic}_{r.randint(1, 99)}.py"}


def code_dir_files(r: random.Random) -> dict[str, str]:
    """A tiny fake project, ``tinyproj``, to fine-tune on "your own codebase"."""
    groups = {"mathops": NUMERIC, "numbers": NUMERIC, "convert": [fam_convert, fam_clamp],
              "strings": STRINGS, "text": [fam_text, fam_affix], "casing": [fam_case],
              "lists": LISTS[:3], "mappings": [fam_mapping], "shapes": [fam_class],
              "accounts": [fam_class], "stats": [fam_list_reduce, fam_range_sum], "filters": [fam_list_filter]}
    files: dict[str, str] = {}
    funcs: dict[str, list[Func]] = {}
    for mod, fams in groups.items():
        files[f"tinyproj/{mod}.py"], funcs[mod] = module_source(r, fams, mod, r.randint(40, 75))
    files["tinyproj/__init__.py"] = ('"""tinyproj: a synthetic sample project."""\n\n__all__ = [\n'
                                     + "".join(f'    "{m}",\n' for m in groups) + "]\n")
    files["tinyproj/cli.py"] = (
        '"""Command line entry point for tinyproj."""\n\nimport argparse\n\n\n'
        "def main(argv: list[str] | None = None) -> int:\n"
        '    """Parse arguments and print a greeting."""\n'
        '    parser = argparse.ArgumentParser(prog="tinyproj")\n'
        '    parser.add_argument("--name", default="world")\n'
        '    parser.add_argument("--times", type=int, default=1)\n'
        "    args = parser.parse_args(argv)\n"
        "    for _ in range(args.times):\n"
        '        print(f"hello, {args.name}")\n'
        "    return 0\n\n\n"
        'if __name__ == "__main__":\n    raise SystemExit(main())\n')
    for mod in ["mathops", "strings", "lists"]:  # check_*.py, not test_*.py: pytest must not collect them
        tested = [f for f in funcs[mod] if f.call is not None]
        body = "".join(f"    assert {f.call} == {f.result}\n" for f in tested) or "    pass\n"
        files[f"checks/check_{mod}.py"] = (
            f'"""Sanity checks for tinyproj.{mod}."""\n\nfrom tinyproj.{mod} import '
            f'{", ".join(sorted(f.name for f in tested))}\n\n\ndef run() -> None:\n{body}\n\n'
            'if __name__ == "__main__":\n    run()\n')
    files["pyproject.toml"] = ('[project]\nname = "tinyproj"\nversion = "0.0.1"\n'
                               'requires-python = ">=3.10"\n\n[project.scripts]\ntinyproj = "tinyproj.cli:main"\n')
    files["README.md"] = ("# tinyproj\n\nA synthetic sample project (generated, not real code).\n\n## Modules\n\n"
                          + "".join(f"- `tinyproj.{m}`\n" for m in groups)
                          + "\nRun `python -m tinyproj.cli --name you` to say hello.\n")
    files["CHANGELOG.md"] = "# Changelog\n\n## 0.0.1\n\n- First synthetic release.\n"
    return files


def write_jsonl(path: Path, rows: list[dict[str, Any]]) -> None:
    with path.open("w", encoding="utf-8", newline="\n") as fh:
        for row in rows:
            fh.write(json.dumps(row, ensure_ascii=False, sort_keys=True) + "\n")


def build_data() -> dict[str, list[dict[str, Any]]]:
    datasets = {
        "prompt_completion": unique_rows(random.Random(SEED + 1), 400, prompt_completion_row),
        "alpaca": unique_rows(random.Random(SEED + 2), 400, alpaca_row),
        "chat": unique_rows(random.Random(SEED + 3), 300, chat_row),
        "code": unique_rows(random.Random(SEED + 4), 300, code_row),
    }
    DATA.mkdir(parents=True, exist_ok=True)
    for name, rows in datasets.items():
        write_jsonl(DATA / f"{name}.jsonl", rows)
    code_dir = DATA / "code_dir"
    shutil.rmtree(code_dir, ignore_errors=True)
    for rel, text in code_dir_files(random.Random(SEED + 5)).items():
        (code_dir / rel).parent.mkdir(parents=True, exist_ok=True)
        (code_dir / rel).write_text(text, encoding="utf-8", newline="\n")
    return datasets


def row_texts(row: dict[str, Any]) -> Iterator[str]:
    for value in row.values():
        if isinstance(value, str):
            yield value
        elif isinstance(value, list):
            yield from (m["content"] for m in value)


# --------------------------------------------------------------------------- tokenizer

def build_tokenizer(texts: list[str]) -> None:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    backend = Tokenizer(models.BPE())
    backend.pre_tokenizer = pre_tokenizers.Sequence([  # as StarCoder: one token per digit, then GPT-2 bytes
        pre_tokenizers.Digits(individual_digits=True),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True),
    ])
    backend.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=VOCAB_SIZE, min_frequency=1, special_tokens=SPECIAL_TOKENS,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    backend.train_from_iterator(texts, trainer=trainer)

    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend,
        bos_token="<|endoftext|>", eos_token="<|endoftext|>", unk_token="<|endoftext|>", pad_token="<|pad|>",
        extra_special_tokens=SPECIAL_TOKENS[1:5] + SPECIAL_TOKENS[6:],
        add_bos_token=False, add_eos_token=False, clean_up_tokenization_spaces=False,
        model_max_length=MODEL_MAX_LENGTH, padding_side="right", chat_template=CHAT_TEMPLATE,
    )
    shutil.rmtree(TOKENIZER_DIR, ignore_errors=True)
    tokenizer.save_pretrained(TOKENIZER_DIR)


def verify(datasets: dict[str, list[dict[str, Any]]]) -> None:
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(TOKENIZER_DIR)
    ids = [tok.convert_tokens_to_ids(t) for t in SPECIAL_TOKENS]
    assert ids == list(range(len(SPECIAL_TOKENS))), ids
    assert len(tok) == VOCAB_SIZE and tok.model_max_length == MODEL_MAX_LENGTH and tok.padding_side == "right"
    assert (tok.bos_token, tok.eos_token, tok.unk_token, tok.pad_token) == (
        "<|endoftext|>", "<|endoftext|>", "<|endoftext|>", "<|pad|>")
    assert tok("def f(): pass")["input_ids"][0] != tok.bos_token_id
    print(f"{type(tok).__name__}: special token ids", dict(zip(SPECIAL_TOKENS, ids, strict=True)))

    for text in ["héllo ✓ 日本", "  leading spaces", "tabs\tand  spaces \n\n", "x = 12345  # done"]:
        assert tok.decode(tok(text)["input_ids"]) == text, text
    texts = [text for rows in datasets.values() for row in rows for text in row_texts(row)]
    for text in texts:
        assert tok.decode(tok(text)["input_ids"]) == text, text[:80]
    print(f"round trip: decode(encode(text)) == text for {len(texts)} dataset texts and non-ASCII samples")

    for row in datasets["chat"]:
        messages = row["messages"]
        out = tok.apply_chat_template(messages, return_assistant_tokens_mask=True, return_dict=True)
        masked = tok.decode([i for i, m in zip(out["input_ids"], out["assistant_masks"], strict=True) if m])
        expected = "".join(m["content"] + "<|im_end|>" for m in messages if m["role"] == "assistant")
        assert masked == expected, (masked, expected)
    print(f"assistant mask: all {len(datasets['chat'])} chat rows mask exactly assistant content + <|im_end|>")
    sample = [{"role": "user", "content": "Add 1 to x."}, {"role": "assistant", "content": "x + 1"}]
    rendered = tok.apply_chat_template([{"role": "system", "content": "Be brief."}, *sample], tokenize=False)
    assert rendered == ("<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nAdd 1 to x.<|im_end|>\n"
                        "<|im_start|>assistant\nx + 1<|im_end|>\n"), rendered
    for msgs in (sample, [{"role": "system", "content": "Be brief."}, *sample]):
        out = tok.apply_chat_template(msgs, return_assistant_tokens_mask=True, return_dict=True)
        print(tok.apply_chat_template(msgs, tokenize=False, add_generation_prompt=True), end="")
        pairs = zip(out["input_ids"], out["assistant_masks"], strict=True)
        print("last tokens (token, mask):", [(tok.decode([i]), m) for i, m in pairs][-8:])

    for name in ["code", "prompt_completion", "alpaca", "chat"]:
        lengths = [sum(len(tok(t)["input_ids"]) for t in row_texts(row)) for row in datasets[name]]
        print(f"{name}: {len(lengths)} rows, tokens/row mean {statistics.mean(lengths):.1f} "
              f"median {statistics.median(lengths):.0f} max {max(lengths)}")


def main() -> None:
    datasets = build_data()
    texts = [t for rows in datasets.values() for row in rows for t in row_texts(row)]
    build_tokenizer(texts)
    verify(datasets)
    for path in sorted(p for p in ASSETS.rglob("*") if p.is_file()):
        print(f"{path.stat().st_size:>9,}  {path.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
