"""A generator of small, random, typed Python functions and classes, for the tiny test assets.

Each ``fam_*`` "family" draws one :class:`Func` (code with and without its docstring, a one-line
summary and, for most functions, an example call whose result is computed by running the code)
from a ``random.Random``; :func:`random_func` picks a family, and :func:`module_source` strings
several functions together into a whole module. Output depends only on the RNG passed in: the same
seed gives the same code, byte for byte.

This is a library for ``tools/build_tiny_assets.py`` (which writes ``recipes/assets/``), not a
script. ``tools/`` is not a package: that script imports this file as its sibling module
``synthetic_code``. To try it by hand, from the repository root:

    .venv/bin/python -c "import random, sys; sys.path.insert(0, 'tools'); import synthetic_code as s; \
print(s.random_func(random.Random(0)).code)"
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

# --------------------------------------------------------------------------- vocab pools

NUM_VARS = ["x", "n", "value", "num", "amount", "count"]
STR_VARS = ["s", "text", "word", "line", "name", "label"]
LIST_VARS = ["items", "values", "nums", "data", "xs", "numbers"]
WORDS = ["alpha", "beta", "note", "todo", "tmp", "log", "user", "item", "key", "node",
         "task", "job", "file", "row", "cell", "page", "tag", "step", "unit", "draft",
         "apple", "banana", "cherry", "delta", "echo", "falcon", "garden", "harbor", "island", "jungle",
         "kettle", "lantern", "meadow", "nectar", "orbit", "pepper", "quartz", "river", "saddle", "timber",
         "velvet", "walnut", "xenon", "yarrow", "zephyr", "buffer", "cursor", "packet", "socket", "vector",
         "matrix", "tensor", "schema", "widget", "record", "ledger", "invoice", "bucket", "signal", "sensor",
         "pixel", "region", "window", "cluster", "shard", "replica", "batch", "border", "canvas", "marble"]
SEPARATORS = ["_", "-", ":", ".", " "]
ADJECTIVES = ["Simple", "Basic", "Tiny", "Small", "Bounded", "Plain", "Quick", "Lazy"]
COMMENTS = ["Keep these helpers pure: no I/O, no globals.",
            "Small building blocks used across the package.",
            "TODO: add more cases when they are needed.",
            "Note: inputs are assumed to be valid.",
            "Each function here is independent of the others.",
            "These run in O(n) time or better."]


@dataclass(frozen=True)
class Func:
    """A generated function (or class) with its description and an optional example call."""

    name: str
    summary: str  # imperative sentence, e.g. "Return x plus 7."
    code: str  # with docstring
    bare: str  # same code without the docstring
    call: str | None = None  # e.g. "add_7(5)"
    result: str | None = None  # repr of the call's value, computed by running the code


def _indent(lines: list[str], by: str = "    ") -> str:
    return "\n".join(by + line if line else "" for line in lines)


def make_func(name: str, params: str, ret: str, summary: str, body: list[str],
              example: tuple[Any, ...] | None = None) -> Func:
    head = f"def {name}({params}) -> {ret}:"
    code = f'{head}\n    """{summary}"""\n{_indent(body)}\n'
    bare = f"{head}\n{_indent(body)}\n"
    if example is None:
        return Func(name, summary, code, bare)
    namespace: dict[str, Any] = {}
    exec(compile(code, name, "exec"), namespace)  # our own template code; gives a checked result
    call = f"{name}({', '.join(repr(arg) for arg in example)})"
    return Func(name, summary, code, bare, call, repr(namespace[name](*example)))


def make_class(name: str, summary: str, body: list[str]) -> Func:
    code = f'class {name}:\n    """{summary}"""\n\n{_indent(body)}\n'
    compile(code, name, "exec")
    return Func(name, summary, code, f"class {name}:\n{_indent(body)}\n")


# --------------------------------------------------------------------------- function families

def fam_arith(r: random.Random) -> Func:
    sym, word, names = r.choice([
        ("+", "plus", ["add_{k}", "plus_{k}", "increment_by_{k}"]),
        ("-", "minus", ["subtract_{k}", "minus_{k}", "decrement_by_{k}"]),
        ("*", "times", ["times_{k}", "scale_by_{k}", "multiply_by_{k}"]),
        ("//", "floor-divided by", ["div_{k}", "floor_div_{k}"]),
        ("%", "modulo", ["mod_{k}", "remainder_{k}"]),
    ])
    k, v = r.randint(2, 99), r.choice(NUM_VARS)
    return make_func(r.choice(names).format(k=k), f"{v}: int", "int", f"Return {v} {word} {k}.",
                     [f"return {v} {sym} {k}"], (r.randint(0, 500),))


def fam_linear(r: random.Random) -> Func:
    p, q = r.randint(1, 12), r.randint(-9, 9)
    name = f"{r.choice(['combine', 'weighted_sum', 'mix', 'blend', 'linear'])}_{p}_{abs(q)}"
    return make_func(name, "a: int, b: int", "int", f"Return {p} * a + ({q}) * b.",
                     [f"return {p} * a + ({q}) * b"], (r.randint(-20, 20), r.randint(-20, 20)))


def fam_poly(r: random.Random) -> Func:
    a, b, c = r.randint(1, 5), r.randint(-9, 9), r.randint(-20, 20)
    v = r.choice(NUM_VARS)
    name = f"{r.choice(['poly', 'quadratic', 'curve', 'evaluate'])}_{a}{r.choice('abcxyz')}"
    return make_func(name, f"{v}: int", "int", f"Evaluate {a}*{v}**2 + {b}*{v} + {c}.",
                     [f"return {a} * {v} ** 2 + {b} * {v} + {c}"], (r.randint(-10, 10),))


def fam_clamp(r: random.Random) -> Func:
    lo = r.randint(-50, 10)
    hi = lo + r.randint(5, 100)
    v = r.choice(NUM_VARS)
    name = f"{r.choice(['clamp', 'bound', 'limit', 'restrict'])}_{r.choice(WORDS)}"
    return make_func(name, f"{v}: float, lo: float = {lo}, hi: float = {hi}", "float",
                     f"Clamp {v} into the closed range [lo, hi] (default [{lo}, {hi}]).",
                     [f"if {v} < lo:", "    return lo", f"if {v} > hi:", "    return hi",
                      f"return {v}"], (r.randint(-80, 150),))


def fam_range_sum(r: random.Random) -> Func:
    k = r.randint(2, 13)
    kind, expr, cond = r.choice([
        ("multiples of {k}", "i", "i % {k} == 0"),
        ("squares of the numbers not divisible by {k}", "i * i", "i % {k} != 0"),
        ("cubes of the multiples of {k}", "i ** 3", "i % {k} == 0"),
    ])
    name = f"{r.choice(['sum', 'total', 'accumulate'])}_{kind.split()[0]}_{k}"
    return make_func(name, "limit: int", "int", f"Return the sum of the {kind.format(k=k)} below limit.",
                     [f"return sum({expr} for i in range(limit) if {cond.format(k=k)})"],
                     (r.randint(5, 60),))


def fam_classic(r: random.Random) -> Func:
    v = r.choice(["n", "k", "num"])
    choice = r.randrange(5)
    if choice == 0:
        return make_func(r.choice(["factorial", "fact", "product_up_to"]), f"{v}: int", "int",
                         f"Return {v}! computed iteratively.",
                         ["result = 1", f"for i in range(2, {v} + 1):", "    result *= i", "return result"],
                         (r.randint(0, 12),))
    if choice == 1:
        return make_func(r.choice(["fibonacci", "fib", "nth_fibonacci"]), f"{v}: int", "int",
                         f"Return the {v}-th Fibonacci number (fib(0) == 0).",
                         ["a, b = 0, 1", f"for _ in range({v}):", "    a, b = b, a + b", "return a"],
                         (r.randint(0, 30),))
    if choice == 2:
        return make_func(r.choice(["gcd", "greatest_common_divisor", "euclid"]), "a: int, b: int", "int",
                         "Return the greatest common divisor of a and b.",
                         ["while b:", "    a, b = b, a % b", "return abs(a)"],
                         (r.randint(1, 300), r.randint(1, 300)))
    if choice == 3:
        return make_func(r.choice(["is_prime", "check_prime", "prime"]), f"{v}: int", "bool",
                         f"Return True if {v} is a prime number.",
                         [f"if {v} < 2:", "    return False", "i = 2", f"while i * i <= {v}:",
                          f"    if {v} % i == 0:", "        return False", "    i += 1", "return True"],
                         (r.randint(0, 200),))
    return make_func(r.choice(["digit_sum", "sum_digits", "cross_sum"]), f"{v}: int", "int",
                     f"Return the sum of the decimal digits of {v}.",
                     [f"return sum(int(d) for d in str(abs({v})))"], (r.randint(0, 99999),))


def fam_convert(r: random.Random) -> Func:
    src, dst, factor = r.choice([("km", "miles", 0.621371), ("miles", "km", 1.609344),
                                 ("kg", "pounds", 2.204623), ("litres", "gallons", 0.264172),
                                 ("metres", "feet", 3.28084), ("hours", "minutes", 60.0)])
    d = r.randint(0, 4)
    return make_func(f"{src}_to_{dst}", f"{src}: float", "float",
                     f"Convert {src} to {dst}, rounded to {d} decimal places.",
                     [f"return round({src} * {factor}, {d})"], (r.randint(1, 500),))


def fam_affix(r: random.Random) -> Func:
    w, sep, v = r.choice(WORDS), r.choice(SEPARATORS), r.choice(STR_VARS)
    if r.random() < 0.5:
        return make_func(f"with_{w}_prefix", f"{v}: str", "str", f'Return {v} prefixed with "{w}{sep}".',
                         [f'return "{w}{sep}" + {v}'], (r.choice(WORDS),))
    return make_func(f"with_{w}_suffix", f"{v}: str", "str", f'Return {v} followed by "{sep}{w}".',
                     [f'return {v} + "{sep}{w}"'], (r.choice(WORDS),))


def fam_text(r: random.Random) -> Func:
    v = r.choice(STR_VARS)
    sample = f"{r.choice(WORDS)} {r.choice(WORDS)} {r.choice(WORDS)}"
    choice = r.randrange(6)
    if choice == 0:
        return make_func(r.choice(["reverse_text", "reversed_string", "flip"]), f"{v}: str", "str",
                         f"Return {v} with its characters in reverse order.", [f"return {v}[::-1]"], (sample,))
    if choice == 1:
        return make_func(r.choice(["reverse_words", "words_backwards"]), f"{v}: str", "str",
                         f"Return {v} with its whitespace-separated words in reverse order.",
                         [f'return " ".join(reversed({v}.split()))'], (sample,))
    if choice == 2:
        c = r.choice("aeiounrst")
        return make_func(f"count_{c}", f"{v}: str", "int", f'Count the occurrences of "{c}" in {v}, ignoring case.',
                         [f'return {v}.lower().count("{c}")'], (sample,))
    if choice == 3:
        n = r.randint(5, 40)
        return make_func(f"truncate_{n}", f"{v}: str", "str",
                         f'Shorten {v} to at most {n} characters, ending with "..." when cut.',
                         [f"if len({v}) <= {n}:", f"    return {v}", f'return {v}[: {n} - 3] + "..."'],
                         (sample * r.randint(1, 3),))
    if choice == 4:
        k = r.randint(1, 5)
        return make_func(f"shout_{k}", f"{v}: str", "str",
                         f"Return {v} in upper case followed by {k} exclamation mark(s).",
                         [f'return {v}.upper() + "!" * {k}'], (r.choice(WORDS),))
    return make_func(r.choice(["is_palindrome", "reads_same_backwards"]), f"{v}: str", "bool",
                     f"Return True if {v} reads the same backwards, ignoring case and spaces.",
                     [f'cleaned = {v}.replace(" ", "").lower()', "return cleaned == cleaned[::-1]"],
                     (r.choice(["level", "Never odd or even", sample, "noon", "step on no pets"]),))


def fam_case(r: random.Random) -> Func:
    v = r.choice(STR_VARS)
    parts = r.sample(WORDS, r.randint(2, 4))
    if r.random() < 0.5:
        return make_func(r.choice(["snake_to_camel", "to_camel_case"]), f"{v}: str", "str",
                         f"Convert a snake_case {v} to camelCase.",
                         [f'head, *rest = {v}.split("_")', 'return head + "".join(p.title() for p in rest)'],
                         ("_".join(parts),))
    params = f"{v}: list[str], sep: str = {r.choice(SEPARATORS)!r}"
    return make_func(r.choice(["join_words", "glue", "concat_words"]), params, "str",
                     f"Join the non-empty strings of {v} with sep.",
                     [f"return sep.join(part for part in {v} if part)"], (parts + [""],))


def _int_list(r: random.Random) -> list[int]:
    return [r.randint(-20, 60) for _ in range(r.randint(3, 9))]


def fam_list_filter(r: random.Random) -> Func:
    k, v = r.randint(1, 30), r.choice(LIST_VARS)
    name, desc, cond = r.choice([
        ("greater_than_{k}", "greater than {k}", "x > {k}"),
        ("at_most_{k}", "less than or equal to {k}", "x <= {k}"),
        ("multiples_of_{k}", "divisible by {k}", "x % {k} == 0"),
        ("evens", "even", "x % 2 == 0"),
        ("odds", "odd", "x % 2 == 1"),
    ])
    verb = r.choice(["keep", "select", "only"])
    return make_func(f"{verb}_{name.format(k=k)}", f"{v}: list[int]", "list[int]",
                     f"Return the elements of {v} that are {desc.format(k=k)}, in order.",
                     [f"return [x for x in {v} if {cond.format(k=k)}]"], (_int_list(r),))


def fam_list_map(r: random.Random) -> Func:
    k, v = r.randint(2, 20), r.choice(LIST_VARS)
    name, desc, expr = r.choice([("scale_all_{k}", "multiplied by {k}", "x * {k}"),
                                 ("shift_all_{k}", "increased by {k}", "x + {k}"),
                                 ("squares", "squared", "x * x"),
                                 ("abs_all", "replaced by its absolute value", "abs(x)")])
    return make_func(name.format(k=k), f"{v}: list[int]", "list[int]",
                     f"Return a new list where each element of {v} is {desc.format(k=k)}.",
                     [f"return [{expr.format(k=k)} for x in {v}]"], (_int_list(r),))


def fam_list_reduce(r: random.Random) -> Func:
    v, k = r.choice(LIST_VARS), r.randint(1, 9)
    choice = r.randrange(6)
    if choice == 0:
        return make_func(r.choice(["running_sum", "prefix_sums", "cumulative"]), f"{v}: list[int]", "list[int]",
                         f"Return the running totals of {v}.",
                         ["total = 0", "out = []", f"for x in {v}:", "    total += x", "    out.append(total)",
                          "return out"], (_int_list(r),))
    if choice == 1:
        return make_func(f"chunks_of_{k + 1}", f"{v}: list[int]", "list[list[int]]",
                         f"Split {v} into consecutive chunks of {k + 1} elements (the last may be shorter).",
                         [f"return [{v}[i : i + {k + 1}] for i in range(0, len({v}), {k + 1})]"], (_int_list(r),))
    if choice == 2:
        return make_func(r.choice(["dedupe", "unique_in_order", "drop_duplicates"]), f"{v}: list[int]", "list[int]",
                         f"Remove duplicates from {v}, keeping the first occurrence of each value.",
                         ["seen: set[int] = set()", "out = []", f"for x in {v}:", "    if x not in seen:",
                          "        seen.add(x)", "        out.append(x)", "return out"],
                         ([r.randint(0, 5) for _ in range(8)],))
    if choice == 3:
        default = r.randint(-5, 5)
        return make_func(r.choice(["max_or_default", "largest", "biggest"]), f"{v}: list[int]", "int",
                         f"Return the largest element of {v}, or {default} if it is empty.",
                         [f"if not {v}:", f"    return {default}", f"return max({v})"], (_int_list(r),))
    if choice == 4:
        return make_func(r.choice(["pairwise_diffs", "deltas", "differences"]), f"{v}: list[int]", "list[int]",
                         f"Return the differences between consecutive elements of {v}.",
                         [f"return [b - a for a, b in zip({v}, {v}[1:])]"], (_int_list(r),))
    return make_func(f"top_{k}", f"{v}: list[int]", "list[int]",
                     f"Return the {k} largest elements of {v}, largest first.",
                     [f"return sorted({v}, reverse=True)[:{k}]"], (_int_list(r),))


def fam_mapping(r: random.Random) -> Func:
    choice = r.randrange(4)
    if choice == 0:
        return make_func(r.choice(["word_counts", "count_words", "frequencies"]), "text: str", "dict[str, int]",
                         "Count how often each whitespace-separated word occurs in text.",
                         ["counts: dict[str, int] = {}", "for word in text.split():",
                          "    counts[word] = counts.get(word, 0) + 1", "return counts"],
                         (" ".join(r.choice(WORDS[:6]) for _ in range(7)),))
    if choice == 1:
        return make_func(r.choice(["invert", "swap_keys_values", "reverse_mapping"]), "mapping: dict[str, int]",
                         "dict[int, str]", "Return a dict mapping each value of mapping back to its key.",
                         ["return {v: k for k, v in mapping.items()}"],
                         ({w: i for i, w in enumerate(r.sample(WORDS, 3))},))
    if choice == 2:
        k = r.randint(1, 9)
        return make_func(f"values_above_{k}", "mapping: dict[str, int]", "dict[str, int]",
                         f"Keep only the entries of mapping whose value is above {k}.",
                         [f"return {{key: v for key, v in mapping.items() if v > {k}}}"],
                         ({w: r.randint(0, 15) for w in r.sample(WORDS, 4)},))
    return make_func(r.choice(["group_by_length", "bucket_by_size"]), "words: list[str]", "dict[int, list[str]]",
                     "Group words by their length.",
                     ["groups: dict[int, list[str]] = {}", "for word in words:",
                      "    groups.setdefault(len(word), []).append(word)", "return groups"],
                     (r.sample(WORDS, 5),))


def fam_class(r: random.Random) -> Func:
    adj, k = r.choice(ADJECTIVES), r.randint(1, 9)
    choice = r.randrange(4)
    if choice == 0:
        return make_class(f"{adj}Counter", f"A counter that starts at {k * 10} and moves in steps of {k}.", [
            "def __init__(self) -> None:", f"    self.value = {k * 10}", "",
            "def increment(self) -> int:", f"    self.value += {k}", "    return self.value", "",
            "def reset(self) -> None:", f"    self.value = {k * 10}"])
    if choice == 1:
        return make_class(f"{adj}Stack", f"A LIFO stack holding at most {k + 2} items.", [
            "def __init__(self) -> None:", "    self._items: list[object] = []", "",
            "def push(self, item: object) -> None:", f"    if len(self._items) >= {k + 2}:",
            '        raise OverflowError("stack is full")', "    self._items.append(item)", "",
            "def pop(self) -> object:", "    return self._items.pop()", "",
            "def __len__(self) -> int:", "    return len(self._items)"])
    if choice == 2:
        return make_class(f"{adj}Point", "A 2D point with integer coordinates.", [
            "def __init__(self, x: int, y: int) -> None:", "    self.x = x", "    self.y = y", "",
            f"def {r.choice(['distance_to', 'manhattan'])}(self, other: \"{adj}Point\") -> int:",
            '    """Manhattan distance to other."""', "    return abs(self.x - other.x) + abs(self.y - other.y)", "",
            f"def shifted(self, dx: int = {k}, dy: int = 0) -> \"{adj}Point\":",
            f"    return {adj}Point(self.x + dx, self.y + dy)"])
    return make_class(f"{adj}Account", f"A bank account that may go at most {k * 100} below zero.", [
        "def __init__(self, balance: int = 0) -> None:", "    self.balance = balance", "",
        "def deposit(self, amount: int) -> None:", "    if amount <= 0:",
        '        raise ValueError("amount must be positive")', "    self.balance += amount", "",
        "def withdraw(self, amount: int) -> bool:", f"    if self.balance - amount < -{k * 100}:",
        "        return False", "    self.balance -= amount", "    return True"])


NUMERIC = [fam_arith, fam_linear, fam_poly, fam_clamp, fam_range_sum, fam_classic, fam_convert]
STRINGS = [fam_affix, fam_text, fam_case]
LISTS = [fam_list_filter, fam_list_map, fam_list_reduce, fam_mapping]
FAMILIES: list[Callable[[random.Random], Func]] = NUMERIC + STRINGS + LISTS + [fam_class, fam_class]


def random_func(r: random.Random, families: list[Callable[[random.Random], Func]] = FAMILIES) -> Func:
    return r.choice(families)(r)


# --------------------------------------------------------------------------- modules

def module_source(r: random.Random, families: list[Callable[[random.Random], Func]], topic: str,
                  target_lines: int) -> tuple[str, list[Func]]:
    """A whole synthetic module of about target_lines lines (at most 80), and its functions."""
    blocks = [f'"""{topic.replace("_", " ").capitalize()} helpers.\n\n{r.choice(COMMENTS)}\n"""']
    if r.random() < 0.5:
        blocks.append(f"DEFAULT_{r.choice(WORDS).upper()} = {r.randint(1, 99)}")
    funcs: list[Func] = []
    for _ in range(40):
        f = random_func(r, families)
        comment = f"# {r.choice(COMMENTS)}\n" if r.random() < 0.3 else ""
        lines = "\n\n\n".join(blocks).count("\n") + 3 + (comment + f.code).count("\n") + len(funcs) + 4
        if f.name in {g.name for g in funcs} or lines > min(target_lines, 80):
            continue
        blocks.append(comment + f.code.rstrip("\n"))
        funcs.append(f)
    checks = [f"    assert {f.call} == {f.result}" for f in funcs if f.call is not None]
    if checks:
        blocks.append('if __name__ == "__main__":\n' + "\n".join(checks))
    text = "\n\n\n".join(blocks) + "\n"
    compile(text, topic, "exec")
    return text, funcs
