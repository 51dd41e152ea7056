"""Mappings helpers.

Each function here is independent of the others.
"""


DEFAULT_SIGNAL = 5


def count_words(text: str) -> dict[str, int]:
    """Count how often each whitespace-separated word occurs in text."""
    counts: dict[str, int] = {}
    for word in text.split():
        counts[word] = counts.get(word, 0) + 1
    return counts


def values_above_8(mapping: dict[str, int]) -> dict[str, int]:
    """Keep only the entries of mapping whose value is above 8."""
    return {key: v for key, v in mapping.items() if v > 8}


def frequencies(text: str) -> dict[str, int]:
    """Count how often each whitespace-separated word occurs in text."""
    counts: dict[str, int] = {}
    for word in text.split():
        counts[word] = counts.get(word, 0) + 1
    return counts


# These run in O(n) time or better.
def values_above_4(mapping: dict[str, int]) -> dict[str, int]:
    """Keep only the entries of mapping whose value is above 4."""
    return {key: v for key, v in mapping.items() if v > 4}


def word_counts(text: str) -> dict[str, int]:
    """Count how often each whitespace-separated word occurs in text."""
    counts: dict[str, int] = {}
    for word in text.split():
        counts[word] = counts.get(word, 0) + 1
    return counts


def bucket_by_size(words: list[str]) -> dict[int, list[str]]:
    """Group words by their length."""
    groups: dict[int, list[str]] = {}
    for word in words:
        groups.setdefault(len(word), []).append(word)
    return groups


# Each function here is independent of the others.
def values_above_7(mapping: dict[str, int]) -> dict[str, int]:
    """Keep only the entries of mapping whose value is above 7."""
    return {key: v for key, v in mapping.items() if v > 7}


def swap_keys_values(mapping: dict[str, int]) -> dict[int, str]:
    """Return a dict mapping each value of mapping back to its key."""
    return {v: k for k, v in mapping.items()}


if __name__ == "__main__":
    assert count_words('todo tmp todo alpha alpha note beta') == {'todo': 2, 'tmp': 1, 'alpha': 2, 'note': 1, 'beta': 1}
    assert values_above_8({'cell': 6, 'island': 0, 'task': 2, 'xenon': 1}) == {}
    assert frequencies('todo log note note tmp note log') == {'todo': 1, 'log': 2, 'note': 3, 'tmp': 1}
    assert values_above_4({'job': 12, 'buffer': 0, 'meadow': 5, 'cell': 11}) == {'job': 12, 'meadow': 5, 'cell': 11}
    assert word_counts('log beta log note alpha log todo') == {'log': 3, 'beta': 1, 'note': 1, 'alpha': 1, 'todo': 1}
    assert bucket_by_size(['banana', 'socket', 'zephyr', 'step', 'packet']) == {6: ['banana', 'socket', 'zephyr', 'packet'], 4: ['step']}
    assert values_above_7({'task': 13, 'jungle': 10, 'walnut': 11, 'job': 1}) == {'task': 13, 'jungle': 10, 'walnut': 11}
    assert swap_keys_values({'xenon': 0, 'echo': 1, 'nectar': 2}) == {0: 'xenon', 1: 'echo', 2: 'nectar'}
