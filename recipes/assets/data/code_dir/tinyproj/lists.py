"""Lists helpers.

Small building blocks used across the package.
"""


# Note: inputs are assumed to be valid.
def keep_odds(values: list[int]) -> list[int]:
    """Return the elements of values that are odd, in order."""
    return [x for x in values if x % 2 == 1]


# TODO: add more cases when they are needed.
def squares(xs: list[int]) -> list[int]:
    """Return a new list where each element of xs is squared."""
    return [x * x for x in xs]


def drop_duplicates(nums: list[int]) -> list[int]:
    """Remove duplicates from nums, keeping the first occurrence of each value."""
    seen: set[int] = set()
    out = []
    for x in nums:
        if x not in seen:
            seen.add(x)
            out.append(x)
    return out


def keep_greater_than_30(values: list[int]) -> list[int]:
    """Return the elements of values that are greater than 30, in order."""
    return [x for x in values if x > 30]


def scale_all_19(items: list[int]) -> list[int]:
    """Return a new list where each element of items is multiplied by 19."""
    return [x * 19 for x in items]


# Small building blocks used across the package.
def chunks_of_6(nums: list[int]) -> list[list[int]]:
    """Split nums into consecutive chunks of 6 elements (the last may be shorter)."""
    return [nums[i : i + 6] for i in range(0, len(nums), 6)]


if __name__ == "__main__":
    assert keep_odds([32, 35, 34, 13, 14, 21, 27, 19, 46]) == [35, 13, 21, 27, 19]
    assert squares([40, 56, -14, 16, -7, -2, -5]) == [1600, 3136, 196, 256, 49, 4, 25]
    assert drop_duplicates([2, 4, 5, 0, 5, 4, 5, 1]) == [2, 4, 5, 0, 1]
    assert keep_greater_than_30([41, 9, 29, 51]) == [41, 51]
    assert scale_all_19([47, 13, 7, -12, 16]) == [893, 247, 133, -228, 304]
    assert chunks_of_6([5, 23, 15, -10, 47, -1, 42, 34, 16]) == [[5, 23, 15, -10, 47, -1], [42, 34, 16]]
