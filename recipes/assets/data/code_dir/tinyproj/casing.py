"""Casing helpers.

Note: inputs are assumed to be valid.
"""


DEFAULT_FALCON = 30


def concat_words(word: list[str], sep: str = ':') -> str:
    """Join the non-empty strings of word with sep."""
    return sep.join(part for part in word if part)


def glue(name: list[str], sep: str = '-') -> str:
    """Join the non-empty strings of name with sep."""
    return sep.join(part for part in name if part)


def join_words(word: list[str], sep: str = '_') -> str:
    """Join the non-empty strings of word with sep."""
    return sep.join(part for part in word if part)


def snake_to_camel(s: str) -> str:
    """Convert a snake_case s to camelCase."""
    head, *rest = s.split("_")
    return head + "".join(p.title() for p in rest)


def to_camel_case(text: str) -> str:
    """Convert a snake_case text to camelCase."""
    head, *rest = text.split("_")
    return head + "".join(p.title() for p in rest)


if __name__ == "__main__":
    assert concat_words(['walnut', 'echo', 'region', 'vector', '']) == 'walnut:echo:region:vector'
    assert glue(['shard', 'cluster', 'meadow', '']) == 'shard-cluster-meadow'
    assert join_words(['harbor', 'quartz', '']) == 'harbor_quartz'
    assert snake_to_camel('widget_record_apple_timber') == 'widgetRecordAppleTimber'
    assert to_camel_case('ledger_falcon') == 'ledgerFalcon'
