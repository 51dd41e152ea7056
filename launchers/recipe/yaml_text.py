"""YAML as recipes use it: a safe loader with YAML 1.2 numbers, and bounds that hostile text cannot get past.

    node, data = load_bounded(text, "recipes/x/lora.yaml")   # the composed node (for line numbers) and the data

Anchors and aliases work, but nothing may nest more than MAX_DEPTH levels (counted through aliases), no document may
expand to more than MAX_VALUES values (a "billion laughs" alias bomb is refused before it is built), and an alias
inside its own anchor (a recursive structure) is refused. The depth is checked on the parser's event stream, which
does not recurse, so even a 100 000-level `[[[...]]]` is one line, not a RecursionError.
"""

from __future__ import annotations

import re
from typing import Any

import yaml

from jobs.spec.errors import UserError

MAX_DEPTH = 16       # the deepest recipe key is 3 levels (method.lora.target_modules) plus its value
MAX_VALUES = 10_000  # every scalar, list and mapping, with aliases expanded; a full recipe has about 150


class RecipeLoader(yaml.SafeLoader):
    """YAML without 1.1's base-60 numbers (`time: 12:00:00` stays the string SLURM expects, not 43200), and with
    YAML 1.2's `1e-4` as a float."""


RecipeLoader.yaml_implicit_resolvers = {
    first: [(tag, regexp) for tag, regexp in resolvers if not tag.endswith((":int", ":float"))]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}
RecipeLoader.add_implicit_resolver(
    "tag:yaml.org,2002:int", re.compile(r"^[-+]?(?:0|[1-9][0-9_]*|0x[0-9a-fA-F_]+|0o[0-7_]+)$"), list("-+0123456789")
)
RecipeLoader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:[0-9][0-9_]*(?:\.[0-9_]*)?(?:[eE][-+]?[0-9]+)?|\.[0-9_]+(?:[eE][-+]?[0-9]+)?)$"
               r"|^[-+]?\.(?:inf|Inf|INF)$|^\.(?:nan|NaN|NAN)$"),
    list("-+0123456789."),
)


def load_bounded(text: str, shown: str, *, lines: bool = True) -> tuple[yaml.Node | None, Any]:
    """The composed node and the constructed data of one YAML document, within the module's bounds.

    Raises yaml.YAMLError for text that is not YAML (the caller words it) and UserError past a bound, naming
    `shown` and, with `lines`, the line."""
    if not lines:
        shown += ":"  # _where drops the line number of a one-line text
    _check_nesting(text, shown)
    loader = RecipeLoader(text)
    try:
        node = loader.get_single_node()
        if node is None:
            return None, None
        _check_expansion(node, shown)
        return node, loader.construct_document(node)
    finally:
        loader.dispose()


def _check_nesting(text: str, shown: str) -> None:
    depth = 0
    for event in yaml.parse(text, Loader=RecipeLoader):
        if isinstance(event, yaml.CollectionStartEvent):
            depth += 1
            if depth > MAX_DEPTH:
                raise UserError(f"{_where(shown, event.start_mark)}: nested more than {MAX_DEPTH} levels deep")
        elif isinstance(event, yaml.CollectionEndEvent):
            depth -= 1


def _check_expansion(root: yaml.Node, shown: str) -> None:
    """Walks the node graph once (shared nodes are aliases), iteratively: sizes and depths as if every alias were
    copied out, and a node reached again from inside itself is a recursive anchor."""
    size: dict[int, int] = {}
    depth: dict[int, int] = {}
    on_path: set[int] = set()
    stack: list[tuple[yaml.Node, bool]] = [(root, False)]
    while stack:
        node, finished = stack.pop()
        key = id(node)
        if finished:
            children = _children(node)
            size[key] = 1 + sum(size[id(child)] for child in children)
            depth[key] = 1 + max((depth[id(child)] for child in children), default=0)
            on_path.discard(key)
            if size[key] > MAX_VALUES:
                raise UserError(f"{_where(shown, node.start_mark)}: expands to more than {MAX_VALUES:,} values "
                                "through aliases")
            if depth[key] > MAX_DEPTH + 1:
                raise UserError(f"{_where(shown, node.start_mark)}: nested more than {MAX_DEPTH} levels deep "
                                "through aliases")
            continue
        if key in size:
            continue
        on_path.add(key)
        stack.append((node, True))
        for child in _children(node):
            if id(child) in on_path:
                raise UserError(f"{_where(shown, child.start_mark)}: an alias inside its own anchor "
                                "(a recursive structure)")
            if id(child) not in size:
                stack.append((child, False))


def _children(node: yaml.Node) -> list[yaml.Node]:
    if isinstance(node, yaml.MappingNode):
        return [part for pair in node.value for part in pair]
    if isinstance(node, yaml.SequenceNode):
        return list(node.value)
    return []


def _where(shown: str, mark: Any) -> str:
    if shown.endswith(":"):
        return shown[:-1]
    return f"{shown}:{mark.line + 1}" if mark is not None else shown
