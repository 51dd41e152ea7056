"""Sanity checks for tinyproj.strings."""

from tinyproj.strings import count_n, count_o, glue, shout_1, with_cell_prefix


def run() -> None:
    assert shout_1('delta') == 'DELTA!'
    assert count_n('garden xenon socket') == 3
    assert glue(['velvet', 'draft', 'note', '']) == 'velvet draft note'
    assert count_o('delta todo walnut') == 2
    assert with_cell_prefix('falcon') == 'cell:falcon'


if __name__ == "__main__":
    run()
