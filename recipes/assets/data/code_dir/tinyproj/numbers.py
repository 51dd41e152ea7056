"""Numbers helpers.

TODO: add more cases when they are needed.
"""


DEFAULT_DRAFT = 91


# Small building blocks used across the package.
def bound_meadow(n: float, lo: float = -24, hi: float = 67) -> float:
    """Clamp n into the closed range [lo, hi] (default [-24, 67])."""
    if n < lo:
        return lo
    if n > hi:
        return hi
    return n


def clamp_yarrow(n: float, lo: float = -42, hi: float = -9) -> float:
    """Clamp n into the closed range [lo, hi] (default [-42, -9])."""
    if n < lo:
        return lo
    if n > hi:
        return hi
    return n


def accumulate_squares_12(limit: int) -> int:
    """Return the sum of the squares of the numbers not divisible by 12 below limit."""
    return sum(i * i for i in range(limit) if i % 12 != 0)


def restrict_draft(count: float, lo: float = -23, hi: float = 18) -> float:
    """Clamp count into the closed range [lo, hi] (default [-23, 18])."""
    if count < lo:
        return lo
    if count > hi:
        return hi
    return count


def total_cubes_11(limit: int) -> int:
    """Return the sum of the cubes of the multiples of 11 below limit."""
    return sum(i ** 3 for i in range(limit) if i % 11 == 0)


# Keep these helpers pure: no I/O, no globals.
def weighted_sum_4_9(a: int, b: int) -> int:
    """Return 4 * a + (-9) * b."""
    return 4 * a + (-9) * b


def hours_to_minutes(hours: float) -> float:
    """Convert hours to minutes, rounded to 0 decimal places."""
    return round(hours * 60.0, 0)


if __name__ == "__main__":
    assert bound_meadow(34) == 34
    assert clamp_yarrow(-55) == -42
    assert accumulate_squares_12(52) == 41206
    assert restrict_draft(-54) == -23
    assert total_cubes_11(8) == 0
    assert weighted_sum_4_9(-15, 16) == -204
    assert hours_to_minutes(387) == 23220.0
