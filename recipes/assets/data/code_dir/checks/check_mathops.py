"""Sanity checks for tinyproj.mathops."""

from tinyproj.mathops import blend_8_2, digit_sum, div_63, hours_to_minutes, times_42


def run() -> None:
    assert div_63(163) == 2
    assert times_42(212) == 8904
    assert hours_to_minutes(149) == 8940.0
    assert blend_8_2(-6, -12) == -24
    assert digit_sum(4007) == 11


if __name__ == "__main__":
    run()
