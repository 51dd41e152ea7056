"""Mathops helpers.

TODO: add more cases when they are needed.
"""


DEFAULT_TODO = 7


# TODO: add more cases when they are needed.
def div_63(count: int) -> int:
    """Return count floor-divided by 63."""
    return count // 63


def times_42(x: int) -> int:
    """Return x times 42."""
    return x * 42


# Small building blocks used across the package.
def hours_to_minutes(hours: float) -> float:
    """Convert hours to minutes, rounded to 4 decimal places."""
    return round(hours * 60.0, 4)


def blend_8_2(a: int, b: int) -> int:
    """Return 8 * a + (-2) * b."""
    return 8 * a + (-2) * b


def digit_sum(n: int) -> int:
    """Return the sum of the decimal digits of n."""
    return sum(int(d) for d in str(abs(n)))


if __name__ == "__main__":
    assert div_63(163) == 2
    assert times_42(212) == 8904
    assert hours_to_minutes(149) == 8940.0
    assert blend_8_2(-6, -12) == -24
    assert digit_sum(4007) == 11
