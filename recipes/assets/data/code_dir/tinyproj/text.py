"""Text helpers.

Small building blocks used across the package.
"""


DEFAULT_WALNUT = 58


def with_nectar_suffix(word: str) -> str:
    """Return word followed by " nectar"."""
    return word + " nectar"


# Each function here is independent of the others.
def with_invoice_prefix(label: str) -> str:
    """Return label prefixed with "invoice-"."""
    return "invoice-" + label


def with_echo_suffix(s: str) -> str:
    """Return s followed by "-echo"."""
    return s + "-echo"


def with_saddle_prefix(line: str) -> str:
    """Return line prefixed with "saddle "."""
    return "saddle " + line


def count_u(name: str) -> int:
    """Count the occurrences of "u" in name, ignoring case."""
    return name.lower().count("u")


def truncate_10(text: str) -> str:
    """Shorten text to at most 10 characters, ending with "..." when cut."""
    if len(text) <= 10:
        return text
    return text[: 10 - 3] + "..."


if __name__ == "__main__":
    assert with_nectar_suffix('walnut') == 'walnut nectar'
    assert with_invoice_prefix('echo') == 'invoice-echo'
    assert with_echo_suffix('task') == 'task-echo'
    assert with_saddle_prefix('tag') == 'saddle tag'
    assert count_u('batch echo quartz') == 1
    assert truncate_10('island marble draft') == 'island ...'
