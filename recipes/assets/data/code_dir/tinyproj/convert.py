"""Convert helpers.

Note: inputs are assumed to be valid.
"""


DEFAULT_NOTE = 95


# Keep these helpers pure: no I/O, no globals.
def limit_ledger(amount: float, lo: float = -33, hi: float = -5) -> float:
    """Clamp amount into the closed range [lo, hi] (default [-33, -5])."""
    if amount < lo:
        return lo
    if amount > hi:
        return hi
    return amount


# TODO: add more cases when they are needed.
def hours_to_minutes(hours: float) -> float:
    """Convert hours to minutes, rounded to 3 decimal places."""
    return round(hours * 60.0, 3)


def limit_banana(n: float, lo: float = -43, hi: float = 33) -> float:
    """Clamp n into the closed range [lo, hi] (default [-43, 33])."""
    if n < lo:
        return lo
    if n > hi:
        return hi
    return n


def miles_to_km(miles: float) -> float:
    """Convert miles to km, rounded to 2 decimal places."""
    return round(miles * 1.609344, 2)


# Small building blocks used across the package.
def clamp_page(value: float, lo: float = -32, hi: float = 17) -> float:
    """Clamp value into the closed range [lo, hi] (default [-32, 17])."""
    if value < lo:
        return lo
    if value > hi:
        return hi
    return value


def bound_marble(count: float, lo: float = -36, hi: float = -5) -> float:
    """Clamp count into the closed range [lo, hi] (default [-36, -5])."""
    if count < lo:
        return lo
    if count > hi:
        return hi
    return count


def kg_to_pounds(kg: float) -> float:
    """Convert kg to pounds, rounded to 1 decimal places."""
    return round(kg * 2.204623, 1)


if __name__ == "__main__":
    assert limit_ledger(-12) == -12
    assert hours_to_minutes(298) == 17880.0
    assert limit_banana(118) == 33
    assert miles_to_km(383) == 616.38
    assert clamp_page(6) == 6
    assert bound_marble(142) == -5
    assert kg_to_pounds(396) == 873.0
