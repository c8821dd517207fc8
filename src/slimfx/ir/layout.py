"""Channel layouts: which group channel sits at each position of a tensor's channel axis.

A tensor's channel axis — dim 1, or the last dim of a token tensor ``(N, L, C)`` (``axis``) —
is described by two integer arrays of the axis' length:
``group[p]`` is the channel group that position ``p`` belongs to, ``index[p]`` the channel
of that group. A convolution's output is *plain* (one group, indices ``0..n-1``); a
``flatten`` repeats every channel ``k`` times; a concatenation joins layouts. Positions in
no group (``UNTRACKED``) are never pruned.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

UNTRACKED = -1


class Layout:
    """The group/index pair of one channel axis.

    Parameters
    ----------
    group, index : array_like of int
        Group id and channel-in-group of every position of the axis.
    axis : int, default 1
        The tensor dim that holds the channels: 1 for ``(N, C, ...)``; a rule that moves
        the channels (a transpose into tokens ``(N, L, C)``) gives another. Only rules that
        say they handle other axes (:attr:`slimfx.rules.base.Rule.any_channel_axis`) see
        such layouts.
    """

    __slots__ = ("axis", "group", "index")

    def __init__(self, group: np.ndarray, index: np.ndarray, axis: int = 1):
        group = np.asarray(group, dtype=np.int64)
        index = np.asarray(index, dtype=np.int64)
        if group.shape != index.shape or group.ndim != 1:
            raise ValueError("group and index must be 1-d arrays of equal length")
        group.setflags(write=False)
        index.setflags(write=False)
        self.group = group
        self.index = index
        self.axis = int(axis)

    @classmethod
    def plain(cls, group_id: int, size: int, axis: int = 1) -> Layout:
        """The layout of a tensor that holds group ``group_id`` whole and in order."""
        return cls(np.full(size, group_id, dtype=np.int64), np.arange(size, dtype=np.int64), axis)

    @classmethod
    def untracked(cls, size: int, axis: int = 1) -> Layout:
        """A layout whose channels belong to no group (they are never pruned)."""
        return cls(np.full(size, UNTRACKED, dtype=np.int64), np.arange(size, dtype=np.int64), axis)

    @classmethod
    def concat(cls, layouts: Sequence[Layout]) -> Layout:
        """The layout of ``torch.cat(tensors, dim=axis)`` (the first layout's axis)."""
        return cls(
            np.concatenate([lay.group for lay in layouts]),
            np.concatenate([lay.index for lay in layouts]),
            layouts[0].axis if layouts else 1,
        )

    def with_axis(self, axis: int) -> Layout:
        """The same channels held in tensor dim ``axis``."""
        return self if axis == self.axis else Layout(self.group, self.index, axis)

    def __len__(self) -> int:
        return int(self.group.shape[0])

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Layout):
            return NotImplemented
        return (
            self.axis == other.axis
            and np.array_equal(self.group, other.group)
            and np.array_equal(self.index, other.index)
        )

    def __hash__(self) -> int:  # layouts are immutable values
        return hash((self.axis, self.group.tobytes(), self.index.tobytes()))

    def __repr__(self) -> str:
        ids = ", ".join(str(g) for g in self.group_ids())
        axis = f", axis={self.axis}" if self.axis != 1 else ""
        return f"Layout(size={len(self)}, groups=[{ids}]{axis})"

    def expand(self, k: int) -> Layout:
        """Channel ``c`` becomes features ``c*k .. c*k+k-1`` (a flatten of ``k`` spatial cells)."""
        return Layout(np.repeat(self.group, k), np.repeat(self.index, k), self.axis)

    def slice(self, start: int, stop: int) -> Layout:
        """Positions ``start .. stop-1`` (a ``split`` along channels)."""
        return Layout(self.group[start:stop], self.index[start:stop], self.axis)

    def plain_group(self) -> int | None:
        """The group id if this layout is one group, whole and in order, else ``None``."""
        if len(self) == 0:
            return None
        g = int(self.group[0])
        if g == UNTRACKED or not np.all(self.group == g):
            return None
        if not np.array_equal(self.index, np.arange(len(self), dtype=np.int64)):
            return None
        return g

    def group_ids(self) -> list[int]:
        """The tracked group ids present, in order of first appearance."""
        ids, first = np.unique(self.group, return_index=True)
        order = np.argsort(first)
        return [int(g) for g in ids[order] if g != UNTRACKED]

    def relabel(self, table: Mapping[int, int] | np.ndarray) -> Layout:
        """Replace group ids through ``table`` (untracked positions stay untracked).

        ``table`` maps old ids to new ones: a mapping (ids not in it stay), or an array
        indexed by the old id that holds every id of the layout.
        """
        if not isinstance(table, np.ndarray):
            table = np.array(
                [table.get(g, g) for g in range(int(self.group.max(initial=-1)) + 1)],
                dtype=np.int64,
            )
        tracked = self.group != UNTRACKED
        group = self.group.copy()
        group[tracked] = table[self.group[tracked]]
        return Layout(group, self.index, self.axis)

    def occurrence(self) -> np.ndarray:
        """For each position, how many earlier positions hold the same (group, index).

        After a flatten a channel appears ``k`` times; the ``j``-th appearance of a pruned
        channel pairs with the ``j``-th appearance of its group's carrier channel.
        """
        key = (self.group + 1) * (int(self.index.max(initial=0)) + 1) + self.index
        order = np.argsort(key, kind="stable")  # equal keys keep their position order
        sorted_keys = key[order]
        new_run = np.ones(len(self), dtype=bool)
        new_run[1:] = sorted_keys[1:] != sorted_keys[:-1]
        run_start = np.maximum.accumulate(np.where(new_run, np.arange(len(self)), 0))
        occ_sorted = np.arange(len(self)) - run_start
        occ = np.empty(len(self), dtype=np.int64)
        occ[order] = occ_sorted
        return occ


class KeepTable:
    """Which channels of each group are kept, looked up for whole layouts at once.

    Parameters
    ----------
    keep : mapping of group id to boolean array
        ``keep[g][i]`` is True when channel ``i`` of group ``g`` stays.
    default : bool
        The value for positions of absent groups and untracked positions (True: a table of
        kept channels, where unplanned groups keep everything; False: a table of marks).
    """

    def __init__(self, keep: Mapping[int, np.ndarray], default: bool = True):
        self._default = default
        masks = {int(g): np.asarray(mask, dtype=bool) for g, mask in keep.items()}
        # _start[g + 1]: where group g's mask starts in _flat (-1: absent); the first entry
        # stands for untracked positions, the last for every id beyond the table
        self._start = np.full(max(masks, default=-1) + 3, -1, dtype=np.int64)
        start = 0
        for g in sorted(masks):
            self._start[g + 1] = start
            start += len(masks[g])
        self._flat = (
            np.concatenate([masks[g] for g in sorted(masks)]) if masks else np.zeros(0, bool)
        )

    def mask(self, layout: Layout) -> np.ndarray:
        """Boolean mask over the layout's positions (True where the position stays)."""
        start = self._start[np.minimum(layout.group + 1, len(self._start) - 1)]
        hit = start >= 0
        out = np.full(len(layout), self._default, dtype=bool)
        out[hit] = self._flat[start[hit] + layout.index[hit]]
        return out

    def positions(self, layout: Layout) -> np.ndarray:
        """The kept positions of ``layout``, ascending."""
        return np.flatnonzero(self.mask(layout))
