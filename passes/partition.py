"""Dividing channel groups where the graph splits them (used by :mod:`passes.analyze`).

A ``split``, a channel slice, or a gate over concatenated pieces can take part of a group's
channels. The analysis records each such cut; :func:`refined_partitions` turns the cuts into
a division of the channels of the nodes that start those groups, and the analysis runs
again with each part a group of its own — until no cut is left (or :data:`MAX_SPLIT_ROUNDS`).
"""

from __future__ import annotations

from collections import defaultdict

import networkx as nx
import numpy as np

from slimfx.ir.layout import UNTRACKED, Layout

#: Analyses at most this many times: each one divides the groups the last one saw split.
MAX_SPLIT_ROUNDS = 4


def refined_partitions(
    graph: nx.Graph,
    group_names: list[str],
    origins: list[tuple[str, np.ndarray]],
    cuts: list[tuple[int, np.ndarray]],
    partitions: dict[str, list[np.ndarray]],
) -> dict[str, list[np.ndarray]]:
    """``partitions`` refined by an analysis' ``cuts``.

    Parameters
    ----------
    graph : networkx.Graph
        The analysis' graph of channel spaces (its components are the channel groups).
    group_names : list of str
        Name of each group the analysis started (a node of ``graph``).
    origins : list of (str, numpy.ndarray)
        For each started group: the node that started it and which of its channels.
    cuts : list of (int, numpy.ndarray)
        Group id and the channels of it one piece took.
    partitions : dict
        Node name → its channels divided into parts, as the analysis used them.

    Groups tied together (a residual add) share one channel numbering, so a cut of one is a
    cut of all: every group of the component is divided by every cut made in it.
    """
    component = {}
    for k, members in enumerate(nx.connected_components(graph)):
        component.update(dict.fromkeys(members, k))
    by_component: dict[int, list[np.ndarray]] = defaultdict(list)
    for gid, channels in cuts:
        by_component[component[group_names[gid]]].append(channels)
    partitions = {name: list(parts) for name, parts in partitions.items()}
    for gid, (origin, channels) in enumerate(origins):
        sets = by_component.get(component[group_names[gid]])
        if not sets:
            continue
        member = np.stack([np.isin(np.arange(len(channels)), s) for s in sets], axis=1)
        _, first, labels = np.unique(member, axis=0, return_index=True, return_inverse=True)
        pieces = [channels[labels.reshape(-1) == label] for label in np.argsort(first)]
        current = partitions.get(origin, [channels])
        at = next(k for k, part in enumerate(current) if np.array_equal(part, channels))
        partitions[origin] = current[:at] + pieces + current[at + 1 :]
    return partitions


def same_partitions(a: dict[str, list[np.ndarray]], b: dict[str, list[np.ndarray]]) -> bool:
    return a.keys() == b.keys() and all(
        len(a[k]) == len(b[k])
        and all(np.array_equal(x, y) for x, y in zip(a[k], b[k], strict=True))
        for k in a
    )


def matching_cuts(a: Layout, b: Layout, group_sizes: list[int]) -> list[tuple[int, np.ndarray]]:
    """Cuts of ``b``'s groups that make ``a`` and ``b`` tie piece to piece.

    Where one group of ``b`` meets several runs of ``a``'s channels position by position, it
    is cut between the runs: where ``a``'s groups change (a gate computed from a whole group
    multiplies the concatenated pieces of a split), or where ``a`` holds one group twice (a
    ghost module's group concatenated with a depthwise copy of itself, added to a shortcut).
    Only for groups that ``b`` holds whole and in order, and where each run is the only one
    of its group in ``a`` or holds that group whole; otherwise nothing is cut.
    """
    cuts = []
    for gid in b.group_ids():
        at = np.flatnonzero(b.group == gid)
        whole = len(at) == group_sizes[gid] and np.array_equal(b.index[at], np.arange(len(at)))
        if not whole or np.any(a.group[at] == UNTRACKED):
            continue
        pieces = _runs(a, at, group_sizes)
        if pieces is not None and len(pieces) > 1:
            cuts += [(int(gid), b.index[here]) for here in pieces]
    return cuts


def _runs(a: Layout, at: np.ndarray, group_sizes: list[int]) -> list[np.ndarray] | None:
    """Positions ``at`` of ``a`` divided into runs of one group's consecutive channels;
    ``None`` where a group has several runs and one of them does not hold it whole."""
    pieces = []
    for partner in np.unique(a.group[at]):
        here = at[a.group[at] == partner]
        runs = np.split(here, np.flatnonzero(np.diff(a.index[here]) != 1) + 1)
        whole = np.arange(group_sizes[int(partner)])
        if len(runs) > 1 and not all(np.array_equal(a.index[r], whole) for r in runs):
            return None
        pieces += runs
    return pieces
