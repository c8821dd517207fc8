"""torchvision building blocks that are channel-wise at inference.

``StochasticDepth`` drops whole samples or rows in training and is the identity at
inference; as a module it stays a leaf of the trace, so a slim model keeps its training
behaviour for fine-tuning.
"""

from __future__ import annotations

from slimfx.rules.activations import Identity
from slimfx.rules.registry import register

try:
    from torchvision.ops import StochasticDepth, stochastic_depth
except ImportError:  # pragma: no cover - torchvision is a dependency
    StochasticDepth = stochastic_depth = None

if StochasticDepth is not None:

    @register(StochasticDepth, stochastic_depth)
    class StochasticDepthRule(Identity):
        """Stochastic depth: the identity at inference."""

        name = "stochastic-depth"
