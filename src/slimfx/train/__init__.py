"""Training: sparsity training (L1 on BatchNorm gammas), fine-tuning, resume, multi-process.

:func:`fit` is the training loop; :class:`SparsityRegularizer` adds the network-slimming
subgradient to any loop.
"""

from slimfx.train.config import TrainConfig, TrainResult
from slimfx.train.evaluation import evaluate
from slimfx.train.loop import fit
from slimfx.train.sparsity import SparsityRegularizer, prunable_batchnorms

__all__ = [
    "SparsityRegularizer",
    "TrainConfig",
    "TrainResult",
    "evaluate",
    "fit",
    "prunable_batchnorms",
]
