"""Sanity checks for tinyproj.lists."""

from tinyproj.lists import chunks_of_6, drop_duplicates, keep_greater_than_30, keep_odds, scale_all_19, squares


def run() -> None:
    assert keep_odds([32, 35, 34, 13, 14, 21, 27, 19, 46]) == [35, 13, 21, 27, 19]
    assert squares([40, 56, -14, 16, -7, -2, -5]) == [1600, 3136, 196, 256, 49, 4, 25]
    assert drop_duplicates([2, 4, 5, 0, 5, 4, 5, 1]) == [2, 4, 5, 0, 1]
    assert keep_greater_than_30([41, 9, 29, 51]) == [41, 51]
    assert scale_all_19([47, 13, 7, -12, 16]) == [893, 247, 133, -228, 304]
    assert chunks_of_6([5, 23, 15, -10, 47, -1, 42, 34, 16]) == [[5, 23, 15, -10, 47, -1], [42, 34, 16]]


if __name__ == "__main__":
    run()
