"""Filters helpers.

These run in O(n) time or better.
"""


def keep_odds(items: list[int]) -> list[int]:
    """Return the elements of items that are odd, in order."""
    return [x for x in items if x % 2 == 1]


def only_multiples_of_21(data: list[int]) -> list[int]:
    """Return the elements of data that are divisible by 21, in order."""
    return [x for x in data if x % 21 == 0]


def only_odds(data: list[int]) -> list[int]:
    """Return the elements of data that are odd, in order."""
    return [x for x in data if x % 2 == 1]


def keep_at_most_1(numbers: list[int]) -> list[int]:
    """Return the elements of numbers that are less than or equal to 1, in order."""
    return [x for x in numbers if x <= 1]


def keep_at_most_23(xs: list[int]) -> list[int]:
    """Return the elements of xs that are less than or equal to 23, in order."""
    return [x for x in xs if x <= 23]


def only_multiples_of_24(nums: list[int]) -> list[int]:
    """Return the elements of nums that are divisible by 24, in order."""
    return [x for x in nums if x % 24 == 0]


if __name__ == "__main__":
    assert keep_odds([41, 15, -18, 28]) == [41, 15]
    assert only_multiples_of_21([-2, -6, 14, 45, 2, -5, 52]) == []
    assert only_odds([26, 13, 15, 14, 33, 27]) == [13, 15, 33, 27]
    assert keep_at_most_1([24, 10, 30, 10, 33, 37]) == []
    assert keep_at_most_23([57, 34, 17]) == [17]
    assert only_multiples_of_24([28, 28, 14, -9]) == []
