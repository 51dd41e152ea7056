"""Stats helpers.

Small building blocks used across the package.
"""


DEFAULT_CANVAS = 41


def accumulate_multiples_4(limit: int) -> int:
    """Return the sum of the multiples of 4 below limit."""
    return sum(i for i in range(limit) if i % 4 == 0)


def pairwise_diffs(items: list[int]) -> list[int]:
    """Return the differences between consecutive elements of items."""
    return [b - a for a, b in zip(items, items[1:])]


# Note: inputs are assumed to be valid.
def sum_cubes_9(limit: int) -> int:
    """Return the sum of the cubes of the multiples of 9 below limit."""
    return sum(i ** 3 for i in range(limit) if i % 9 == 0)


def accumulate_squares_2(limit: int) -> int:
    """Return the sum of the squares of the numbers not divisible by 2 below limit."""
    return sum(i * i for i in range(limit) if i % 2 != 0)


def running_sum(values: list[int]) -> list[int]:
    """Return the running totals of values."""
    total = 0
    out = []
    for x in values:
        total += x
        out.append(total)
    return out


def cumulative(data: list[int]) -> list[int]:
    """Return the running totals of data."""
    total = 0
    out = []
    for x in data:
        total += x
        out.append(total)
    return out


def total_cubes_12(limit: int) -> int:
    """Return the sum of the cubes of the multiples of 12 below limit."""
    return sum(i ** 3 for i in range(limit) if i % 12 == 0)


if __name__ == "__main__":
    assert accumulate_multiples_4(21) == 60
    assert pairwise_diffs([37, -16, 36, 7]) == [-53, 52, -29]
    assert sum_cubes_9(5) == 0
    assert accumulate_squares_2(8) == 84
    assert running_sum([45, 24, 4]) == [45, 69, 73]
    assert cumulative([-12, -3, 0]) == [-12, -15, -15]
    assert total_cubes_12(11) == 0
