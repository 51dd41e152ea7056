"""Resolve a recipe: schema defaults → model.yaml → <method>.yaml → `key.path=value` overrides.

Every value remembers where it came from (file:line or the override), so an error names the exact place:

    recipes/tiny-starcoder/lora.yaml:14: training.learning_rate: Input should be greater than 0

Catalogs: $CLUSTERFT_RECIPES (directories laid out like recipes/, searched first), then the shipped recipes/.
Local paths in a recipe (values starting with ./ ../ / or ~, or naming a file or directory that exists relative to
where they were written) are resolved against the file (or, for overrides, the directory) that wrote them; anything
else in a path field is a hub id. Every later step sees absolute paths, so the launch-time checks and the job agree.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ValidationError

import recipes
from jobs.spec.errors import UserError, did_you_mean
from jobs.spec.schema import Recipe, RuleError
from launchers.recipe.user_files import read_text
from launchers.recipe.yaml_text import MAX_DEPTH, load_bounded

RECIPES_ROOT = Path(recipes.__file__).resolve().parent
NOT_MODELS = {"accelerate", "assets", "__pycache__"}
MODEL_FILE = "model.yaml"

# Recipe fields that may hold a local path (resolved against the file that set them).
PATH_FIELDS = (
    ("model", "name_or_path"),
    ("model", "config"),
    ("model", "tokenizer"),
    ("data", "source"),
    ("data", "eval_source"),
    ("distributed", "accelerate_config"),
    ("eval", "fim_source"),
    ("export", "base"),
)

KeyPath = tuple[str, ...]


@dataclass(frozen=True)
class Origin:
    """Where a value was written: a file and line, or a command-line override."""

    label: str
    base_dir: Path

    def __str__(self) -> str:
        return self.label


def display_path(path: Path) -> str:
    """A path as users typed it: relative to the working directory when under it."""
    try:
        absolute = path.resolve()
    except (OSError, RuntimeError):  # a symlink loop: where the user's path points to, without following it
        absolute = Path(os.path.abspath(path))
    try:
        return str(absolute.relative_to(Path.cwd().resolve()))
    except ValueError:
        return str(path)


def read_yaml(path: Path) -> tuple[dict[str, Any], dict[KeyPath, Origin]]:
    """A YAML mapping and the origin (file:line) of every key in it."""
    shown = display_path(path)
    text = read_text(path, shown)
    try:
        node, data = load_bounded(text, shown)
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f"{shown}:{mark.line + 1}" if mark else shown
        raise UserError(f"{where}: invalid YAML: {getattr(err, 'problem', None) or err}") from None
    except ValueError as err:  # an integer of thousands of digits: Python refuses to convert it
        raise UserError(f"{shown}: a value is not a usable number ({str(err).split(':')[0]})") from None
    if node is None or data is None:
        return {}, {}
    if not isinstance(data, dict):
        raise UserError(f"{shown}:1: a recipe file must be a mapping of sections, got {type(data).__name__}")
    origins: dict[KeyPath, Origin] = {}
    _collect_origins(node, (), shown, path.parent, origins)
    return data, origins


def _collect_origins(
    node: yaml.Node, prefix: KeyPath, shown: str, base: Path, out: dict[KeyPath, Origin]
) -> None:
    if not isinstance(node, yaml.MappingNode):
        return
    seen: set[str] = set()
    for key_node, value_node in node.value:
        key = str(key_node.value)
        where = f"{shown}:{key_node.start_mark.line + 1}"
        if key in seen:
            raise UserError(f"{where}: {'.'.join(prefix + (key,))}: duplicate key")
        seen.add(key)
        out[prefix + (key,)] = Origin(where, base)
        _collect_origins(value_node, prefix + (key,), shown, base, out)


def parse_override(text: str, label: str | None = None) -> tuple[dict[str, Any], dict[KeyPath, Origin]]:
    """`training.learning_rate=1e-4` → nested mapping; the value is parsed as a YAML scalar or flow list.

    `label` names where it came from in errors when it is not a literal override (e.g. "flag -t/--time 90").
    """
    key, sep, raw = text.partition("=")
    if not sep or not key or any(not part for part in key.split(".")):
        raise UserError(f"override {text!r}: expected key.path=value, e.g. training.learning_rate=1e-4")
    if key.count(".") >= MAX_DEPTH:
        raise UserError(f"override {key[:60]}...: a key path of {key.count('.') + 1} parts; recipe keys are at "
                        f"most {MAX_DEPTH} deep (e.g. method.lora.r)")
    try:
        value = load_bounded(raw, f"override {key}", lines=False)[1] if raw.strip() else ""
    except yaml.YAMLError:
        value = raw
    except ValueError as err:  # an integer of thousands of digits: Python refuses to convert it
        raise UserError(f"override {key}=...: the value is not a usable number ({str(err).split(':')[0]})") from None
    parts = tuple(key.split("."))
    from jobs.spec.redaction import redact_text

    origin = Origin(label or f"override {redact_text(text)}", Path.cwd())  # errors never echo a secret
    nested: Any = value
    for part in reversed(parts):
        nested = {part: nested}
    return nested, {parts[: i + 1]: origin for i in range(len(parts))}


def deep_merge(base: dict[str, Any], update: dict[str, Any]) -> dict[str, Any]:
    """Mappings merge key by key; any other value (lists included) replaces."""
    merged = dict(base)
    for key, value in update.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = deep_merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def origin_of(origins: dict[KeyPath, Origin], path: KeyPath, fallback: str) -> str:
    """The origin of the longest prefix of `path` that some layer wrote."""
    for end in range(len(path), 0, -1):
        if path[:end] in origins:
            return str(origins[path[:end]])
    return fallback


CATALOG_ENV = "CLUSTERFT_RECIPES"


def catalog_roots() -> list[Path]:
    """Recipe catalogs, searched in order: $CLUSTERFT_RECIPES (os.pathsep-separated), then the shipped one."""
    extra = [Path(p).expanduser().resolve() for p in os.environ.get(CATALOG_ENV, "").split(os.pathsep) if p]
    return [*extra, RECIPES_ROOT]


def model_dir(model: str) -> Path | None:
    for root in catalog_roots():
        if model not in NOT_MODELS and (root / model / MODEL_FILE).is_file():
            return root / model
    return None


def list_models() -> list[str]:
    return sorted({
        p.name for root in catalog_roots() if root.is_dir() for p in root.iterdir()
        if p.is_dir() and p.name not in NOT_MODELS and (p / MODEL_FILE).is_file()
    })


def list_methods(model: str) -> list[str]:
    directory = model_dir(model)
    return sorted(p.stem for p in directory.glob("*.yaml") if p.name != MODEL_FILE) if directory else []


def recipe_files(method: str, model: str) -> tuple[Path, Path]:
    """The model.yaml and <method>.yaml of a catalog recipe, or a one-line error with suggestions."""
    directory = model_dir(model)
    if directory is None:
        swapped = model_dir(method)
        if swapped is not None and model in list_methods(method):
            raise UserError(f"unknown model {model!r}: the method comes first: launch {model} {method}")
        raise UserError(f"unknown model {model!r}: {did_you_mean(model, list_models())} (see `launch recipes`)")
    methods = list_methods(model)
    if method not in methods:
        raise UserError(f"model {model} has no method {method!r}: {did_you_mean(method, methods)}")
    return directory / MODEL_FILE, directory / f"{method}.yaml"


@dataclass(frozen=True)
class Resolved:
    recipe: Recipe
    origins: dict[KeyPath, Origin]
    redacted: tuple[str, ...] = ()  # "origin: key" of values that looked like secrets and were replaced

    def where(self, *path: str) -> str:
        """file:line (or override) that set `path`, for error messages."""
        return origin_of(self.origins, tuple(path), self.recipe.name)


def resolve(
    method: str, model: str, overrides: list[str] | tuple[str, ...] = (), flags: dict[str, str] | None = None
) -> Resolved:
    """Load, merge, validate: the one way a recipe becomes a `Recipe`.

    `flags` maps override text to the command-line flag that produced it (e.g. "resources.nodes=2" → "-N/--nodes 2").
    """
    layers = [read_yaml(path) for path in recipe_files(method, model)]
    data, origins = _merge_layers(layers, overrides, flags)
    if "name" in data:
        raise UserError(f"{origin_of(origins, ('name',), model)}: name: set by the catalog path, remove it")
    data["name"] = f"{model}/{method}"
    return _validate(data, origins)


def resolve_saved(
    path: Path, overrides: list[str] | tuple[str, ...] = (), flags: dict[str, str] | None = None
) -> Resolved:
    """A run's recipe.yaml (resolved at launch) with overrides and flags on top, e.g. for `launch export RUN
    export.dtype=bfloat16`: validated, redacted and reported exactly like a launch."""
    data, origins = _merge_layers([read_yaml(path)], overrides, flags)
    if not isinstance(data.get("name"), str):  # written at launch: without it the file is not a resolved recipe
        raise UserError(f"{display_path(path)}: not a resolved recipe (no name): the run directory is damaged")
    return _validate(data, origins)


def _merge_layers(
    layers: list[tuple[dict[str, Any], dict[KeyPath, Origin]]], overrides: list[str] | tuple[str, ...],
    flags: dict[str, str] | None,
) -> tuple[dict[str, Any], dict[KeyPath, Origin]]:
    data: dict[str, Any] = {}
    origins: dict[KeyPath, Origin] = {}
    layers = [*layers, *(parse_override(text) for text in overrides)]
    layers += [parse_override(text, label) for text, label in (flags or {}).items()]
    for layer_data, layer_origins in layers:
        data = deep_merge(data, layer_data)
        origins.update(layer_origins)
    return data, origins


def _validate(data: dict[str, Any], origins: dict[KeyPath, Origin]) -> Resolved:
    _resolve_paths(data, origins)
    redacted = tuple(f"{origin_of(origins, path, data['name'])}: {'.'.join(path)}"
                     for path in _redact_secrets(data, ()))
    try:
        recipe = Recipe.model_validate(data)
    except ValidationError as err:
        raise UserError(describe_validation_error(err, origins, data["name"])) from None
    return Resolved(recipe, origins, redacted)


def _redact_secrets(data: dict[str, Any], prefix: KeyPath) -> list[KeyPath]:
    """Replace, in place, values that look like secrets (tokens, keys, URL passwords): a recipe is written to the
    run directory, pickled for the job and logged to MLflow, so a secret in it would be everywhere. Credentials
    belong in the environment (HF_TOKEN, MLFLOW_TRACKING_PASSWORD, ...). Returns the paths replaced."""
    from jobs.spec.redaction import redact_value

    replaced: list[KeyPath] = []
    for key, value in data.items():
        path = prefix + (str(key),)
        if isinstance(value, dict):
            replaced += _redact_secrets(value, path)
        elif isinstance(value, str) and redact_value(str(key), value) != value:
            data[key] = redact_value(str(key), value)
            replaced.append(path)
    return replaced


def _resolve_paths(data: dict[str, Any], origins: dict[KeyPath, Origin]) -> None:
    for section, key in PATH_FIELDS:
        block = data.get(section)
        if not isinstance(block, dict) or not isinstance(block.get(key), str):
            continue
        value: str = block[key]
        origin = origins.get((section, key))
        candidate = (origin.base_dir if origin else Path.cwd()) / Path(value).expanduser()
        if value.startswith(("./", "../", "/", "~")) or candidate.exists():
            block[key] = str(candidate.resolve())


def describe_validation_error(err: ValidationError, origins: dict[KeyPath, Origin], fallback: str) -> str:
    """The first pydantic error as one line: origin, dotted key, what is wrong and what is allowed."""
    first = err.errors(include_url=False)[0]
    loc = tuple(str(part) for part in first["loc"] if not isinstance(part, int))
    # Literal unions report the branch in the loc (e.g. 'list[str]'); keep only recipe keys.
    loc = tuple(part for part in loc if not part.startswith(("list[", "literal[", "function-")))
    error = (first.get("ctx") or {}).get("error")
    if isinstance(error, RuleError) and error.keys:
        loc = _rule_key(loc, error.keys, origins)
    key = ".".join(loc) or "recipe"
    where = origin_of(origins, loc, fallback)
    kind = first["type"]
    if kind == "extra_forbidden":
        siblings = _fields_at(loc[:-1])
        return f"{where}: {key}: unknown key; {did_you_mean(loc[-1], siblings)}"
    if kind == "missing":
        return f"{where}: {key}: required key is missing"
    message = first["msg"].removeprefix("Value error, ")
    got = first.get("input")
    shown = "" if kind.startswith("value_error") or isinstance(got, dict) else f" (got {got!r})"
    return f"{where}: {key}: {message}{shown}"


def _rule_key(section: KeyPath, keys: tuple[str, ...], origins: dict[KeyPath, Origin]) -> KeyPath:
    """The key a cross-field rule should point at: one the command line set (the likely culprit), else the first."""
    paths = [section + tuple(key.split(".")) for key in keys]
    for path in paths:
        origin = origins.get(path)
        if origin is not None and origin.label.startswith(("override ", "flag ")):
            return path
    return next((path for path in paths if path in origins), paths[0])


def _fields_at(loc: KeyPath) -> list[str]:
    """Field names of the recipe section at `loc` (for 'did you mean')."""
    model: type[BaseModel] = Recipe
    for part in loc:
        annotation = model.model_fields[part].annotation if part in model.model_fields else None
        candidates = [a for a in getattr(annotation, "__args__", (annotation,)) if isinstance(a, type)]
        nested = [a for a in candidates if issubclass(a, BaseModel)]
        if not nested:
            return []
        model = nested[0]
    return list(model.model_fields)
