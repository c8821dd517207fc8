"""What pruned channels carry at every node, per pruning mode: :class:`ConstantTables`.

The constant propagation (:func:`slimfx.passes.propagate_constants`) returns this value;
the plan reads it to choose each group's mode and the rewrite to fold the constants into
the consumers. Both take it as an argument, so the propagation runs once for the two.

A position's value depends only on its own group's mode: the ops that combine channels of
two groups (a residual add, a gate) couple them into one group, and a convolution's output
is a new group whose values are unknown in every mode. So the table of a plan whose groups
have different modes is assembled position by position from the tables of single modes
(:meth:`ConstantTables.values_at`).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from slimfx.ir.layout import Layout
from slimfx.ir.options import Mode
from slimfx.ir.values import PrunedValues


@dataclass(frozen=True)
class ConstantTables:
    """Pruned values at every node, one table for each mode that every group is put in.

    Attributes
    ----------
    tables : mapping
        :class:`Mode` → {fx node name → :class:`PrunedValues`, a tuple of them for nodes
        returning several tensors, or ``None`` for nodes without a channel axis}.
    """

    tables: Mapping[Mode, dict[str, Any]]

    @property
    def modes(self) -> frozenset[Mode]:
        return frozenset(self.tables)

    def table(self, mode: Mode) -> dict[str, Any]:
        """The table with every group in ``mode``; ``KeyError`` naming the missing mode."""
        if mode not in self.tables:
            have = ", ".join(sorted(m.value for m in self.tables))
            raise KeyError(f"no constant table for mode {mode.value!r} (have: {have})")
        return self.tables[mode]

    def values_at(self, node: str, layout: Layout, group_modes: Mapping[int, Mode]) -> PrunedValues:
        """Values at ``node``'s output with each group in its own mode.

        Parameters
        ----------
        node : str
            The fx node name.
        layout : Layout
            The node's channel layout.
        group_modes : mapping
            Group id → :class:`Mode` of every pruned group. Positions of other groups, and
            untracked positions, are never pruned: they take the values of any mode.
        """
        ids = np.unique(layout.group)
        mode_of = {int(g): group_modes[int(g)] for g in ids if int(g) in group_modes}
        used = sorted(set(mode_of.values()), key=lambda m: m.value) or [min(self.tables)]
        first = self.table(used[0])[node]
        if len(used) == 1:
            return first
        value, kind, pattern = first.value.copy(), first.kind.copy(), first.pattern.copy()
        for mode in used[1:]:
            here = np.isin(layout.group, [g for g, m in mode_of.items() if m is mode])
            other = self.table(mode)[node]
            value[here], kind[here], pattern[here] = (
                other.value[here],
                other.kind[here],
                other.pattern[here],
            )
        return PrunedValues(value, kind, pattern)
