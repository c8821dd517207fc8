"""The network-slimming workflow as library functions: prune a checkpoint, the demo, plots."""

from slimfx.workflow.prune import PruneOutcome, load_trained_model, prune_model

__all__ = ["PruneOutcome", "load_trained_model", "prune_model"]
