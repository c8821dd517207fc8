"""The slimming plan: which channels of every prunable group stay, as pure data.

Produced by :func:`slimfx.passes.plan` and read by the rewrite and the verification. It
refers to groups by name and holds only index lists, so it round-trips through JSON.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field

import numpy as np

from slimfx.errors import PlanError
from slimfx.ir.channel_graph import ChannelGraph
from slimfx.ir.layout import KeepTable
from slimfx.ir.options import Mode, SlimOptions


@dataclass
class GroupPlan:
    """What one prunable group keeps.

    Attributes
    ----------
    name : str
        The group's name in the channel graph.
    size : int
        Original width.
    kept : list of int
        Original channels that stay, ascending.
    carrier : int or None
        The pruned channel reused as carrier, when one is needed.
    mode : Mode
        ``Mode.COMPENSATE`` (beta kept and folded) or ``Mode.ZERO`` (gamma and beta
        zeroed); compares equal to its string value (``"compensate"``, ``"zero"``).
    """

    name: str
    size: int
    kept: list[int]
    carrier: int | None = None
    mode: Mode = Mode.COMPENSATE

    def __post_init__(self) -> None:
        self.mode = Mode(self.mode)
        if self.mode is Mode.CARRIER:
            raise PlanError(f"group {self.name}: 'carrier' is not a pruning mode")

    @property
    def width(self) -> int:
        """Structural width in the slim model (kept channels plus the carrier)."""
        return len(self.kept) + (self.carrier is not None)

    def pruned_mask(self) -> np.ndarray:
        """True at every original channel that does not stay as itself."""
        pruned = np.ones(self.size, dtype=bool)
        pruned[self.kept] = False
        return pruned


@dataclass
class SlimPlan:
    """Kept channels of every prunable group, with the settings that produced them.

    Attributes
    ----------
    groups : dict
        Group name → :class:`GroupPlan`, for every group that is pruned.
    options : SlimOptions
        The settings of the plan.
    total : int
        Channels of the prunable groups.
    pruned : int
        Of those, the channels removed (a carrier counts as removed).
    threshold : float
        The largest score of a pruned channel (``nan`` when none is pruned).
    notes : list of str
        Fallbacks and limits the plan ran into, for the report.
    frozen : dict
        Group name → why a BatchNorm-governed group cannot be pruned exactly.
    latency : dict or None
        For a plan made to a latency target (:mod:`slimfx.latency.planning`): the target,
        the budget, the predicted latency of the whole model and of every layer, and the
        measured latency of the slim and the original model.
    """

    groups: dict[str, GroupPlan]
    options: SlimOptions = field(default_factory=SlimOptions)
    total: int = 0
    pruned: int = 0
    threshold: float = float("nan")
    notes: list[str] = field(default_factory=list)
    frozen: dict[str, str] = field(default_factory=dict)
    latency: dict | None = None

    @property
    def percent(self) -> float:
        return self.options.percent

    @property
    def min_channels(self) -> int:
        return self.options.min_channels

    @property
    def round_to(self) -> int:
        return self.options.round_to

    @property
    def compensate(self) -> bool:
        return self.options.compensate

    @property
    def group_score(self) -> str:
        return self.options.group_score

    @property
    def ratio(self) -> float:
        """Fraction of prunable channels removed (carriers count as removed)."""
        return self.pruned / self.total if self.total else 0.0

    def to_json(self) -> str:
        """The plan as JSON (the settings flat beside the groups)."""
        data = asdict(self)
        options = data.pop("options")
        data = {
            "groups": data.pop("groups"),
            **{k: options[k] for k in _PLAN_SETTINGS},
            **data,
        }
        data["threshold"] = None if math.isnan(self.threshold) else self.threshold
        return json.dumps(data, indent=1)

    @classmethod
    def from_json(cls, text: str) -> SlimPlan:
        """The plan :meth:`to_json` wrote."""
        data = json.loads(text)
        groups = {k: GroupPlan(**v) for k, v in data.pop("groups").items()}
        options = SlimOptions(**{k: data.pop(k) for k in _PLAN_SETTINGS if k in data})
        threshold = data.pop("threshold")
        return cls(
            groups=groups,
            options=options,
            threshold=float("nan") if threshold is None else threshold,
            **data,
        )

    def group_ids(self, cg: ChannelGraph) -> dict[str, int]:
        """Group name → id in ``cg`` for every planned group; ``PlanError`` if one is absent."""
        by_name = {g.name: g for g in cg.groups}
        ids = {}
        for name, gp in self.groups.items():
            if name not in by_name or by_name[name].size != gp.size:
                raise PlanError(f"the plan's group {name!r} is not in this channel graph")
            ids[name] = by_name[name].id
        return ids

    def keep_table(self, cg: ChannelGraph, *, carriers: bool = True) -> KeepTable:
        """Kept channels per group id of ``cg`` (with the carriers unless told otherwise)."""
        masks = {}
        for name, gid in self.group_ids(cg).items():
            gp = self.groups[name]
            mask = ~gp.pruned_mask()
            if carriers and gp.carrier is not None:
                mask[gp.carrier] = True
            masks[gid] = mask
        return KeepTable(masks)

    def carrier_table(self, cg: ChannelGraph) -> KeepTable:
        """True at each group's carrier channel only."""
        masks = {}
        for name, gid in self.group_ids(cg).items():
            gp = self.groups[name]
            mask = np.zeros(gp.size, dtype=bool)
            if gp.carrier is not None:
                mask[gp.carrier] = True
            masks[gid] = mask
        return KeepTable(masks, default=False)

    def modes(self, cg: ChannelGraph) -> dict[int, Mode]:
        """Group id in ``cg`` → mode, for every planned group."""
        return {gid: self.groups[name].mode for name, gid in self.group_ids(cg).items()}


#: The settings a plan's JSON holds beside its groups.
_PLAN_SETTINGS = (
    "percent",
    "min_channels",
    "round_to",
    "compensate",
    "group_score",
    "speedup",
    "latency_ms",
    "backend",
    "batch",
    "threads",
)
