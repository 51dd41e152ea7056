"""Strings helpers.

These run in O(n) time or better.
"""


DEFAULT_MEADOW = 85


# Small building blocks used across the package.
def shout_1(text: str) -> str:
    """Return text in upper case followed by 1 exclamation mark(s)."""
    return text.upper() + "!" * 1


def count_n(name: str) -> int:
    """Count the occurrences of "n" in name, ignoring case."""
    return name.lower().count("n")


# These run in O(n) time or better.
def glue(name: list[str], sep: str = ' ') -> str:
    """Join the non-empty strings of name with sep."""
    return sep.join(part for part in name if part)


# Small building blocks used across the package.
def count_o(text: str) -> int:
    """Count the occurrences of "o" in text, ignoring case."""
    return text.lower().count("o")


def with_cell_prefix(name: str) -> str:
    """Return name prefixed with "cell:"."""
    return "cell:" + name


if __name__ == "__main__":
    assert shout_1('delta') == 'DELTA!'
    assert count_n('garden xenon socket') == 3
    assert glue(['velvet', 'draft', 'note', '']) == 'velvet draft note'
    assert count_o('delta todo walnut') == 2
    assert with_cell_prefix('falcon') == 'cell:falcon'
