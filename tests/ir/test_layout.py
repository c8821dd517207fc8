"""Channel layouts and keep tables."""

import numpy as np

from slimfx.ir.layout import UNTRACKED, KeepTable, Layout


def test_plain_expand_concat_slice():
    a, b = Layout.plain(0, 3), Layout.plain(1, 2)
    assert a.plain_group() == 0
    cat = Layout.concat([a, b])
    assert cat.plain_group() is None and cat.group_ids() == [0, 1]
    flat = a.expand(2)
    assert list(flat.index) == [0, 0, 1, 1, 2, 2]
    assert list(cat.slice(2, 4).group) == [0, 1]
    assert Layout.untracked(2).group_ids() == []
    assert list(Layout.untracked(2).group) == [UNTRACKED, UNTRACKED]


def test_relabel_and_equality():
    lay = Layout.concat([Layout.plain(3, 2), Layout.plain(5, 1)])
    assert lay.relabel({3: 0, 5: 0}) == Layout(np.array([0, 0, 0]), np.array([0, 1, 0]))
    assert lay != Layout.plain(3, 3)


def test_occurrence_counts_repeats_of_each_channel():
    lay = Layout.concat([Layout.plain(0, 2).expand(3), Layout.plain(1, 1)])
    assert list(lay.occurrence()) == [0, 1, 2, 0, 1, 2, 0]


def test_keep_table_masks_positions():
    keep = KeepTable({0: np.array([True, False, True])})
    lay = Layout.concat([Layout.plain(0, 3).expand(2), Layout.untracked(1), Layout.plain(1, 2)])
    assert list(keep.positions(lay)) == [0, 1, 4, 5, 6, 7, 8]
    marks = KeepTable({0: np.array([False, True, False])}, default=False)
    assert list(marks.positions(lay)) == [2, 3]


def test_the_channel_axis_travels_with_the_layout():
    tokens = Layout.plain(0, 4, axis=2)
    assert tokens.axis == 2 and tokens != Layout.plain(0, 4)
    assert tokens.slice(1, 3).axis == tokens.expand(2).axis == tokens.relabel({0: 3}).axis == 2
    assert Layout.concat([tokens, Layout.untracked(2, axis=2)]).axis == 2
    back = tokens.with_axis(1)
    assert back == Layout.plain(0, 4) and "axis=2" in repr(tokens)
