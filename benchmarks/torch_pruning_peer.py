"""Torch-Pruning as the peer of the latency comparison (optional: skipped when not installed).

Two ways to prune the same model with Torch-Pruning:

``prune_same_channels``
    Torch-Pruning's DependencyGraph removes exactly the channels slimfx removed (slimfx's
    structural widths, carrier included: the carrier is one of the pruned channels, which
    Torch-Pruning keeps as an ordinary channel). Same architecture, same MACs: any latency
    difference is the tools', not the widths'.
``prune_native``
    ``BNScalePruner`` with raw |gamma| (``BNScaleImportance(normalizer=None)``), global
    ranking, the same ratio and ``round_to`` (Torch-Pruning rounds widths *down*).
"""

from __future__ import annotations

import copy
import importlib.util

import torch
import torch.nn as nn


def available() -> tuple[bool, str]:
    if importlib.util.find_spec("torch_pruning") is None:
        return False, "torch-pruning is not installed (pip install torch-pruning)"
    from importlib.metadata import PackageNotFoundError, version

    try:
        return True, f"torch-pruning {version('torch-pruning')}"
    except PackageNotFoundError:
        return True, "torch-pruning (version unknown)"


def structural_kept(result) -> dict[str, list[int]]:
    """BatchNorm name → channels present in slimfx's slim model (carrier included)."""
    cg, plan = result.channel_graph, result.plan
    keep = plan.keep_table(cg, carriers=True)
    kept = {}
    for node in cg.gm.graph.nodes:
        if node.op != "call_module" or str(node.target) not in result.kept:
            continue
        layout = cg.layout(node)
        kept.setdefault(str(node.target), [int(i) for i in keep.positions(layout)])
    return kept


def prune_same_channels(model: nn.Module, example: torch.Tensor, result) -> nn.Module:
    """A copy of ``model`` with Torch-Pruning removing the channels slimfx removed."""
    import torch_pruning as tp

    pruned = copy.deepcopy(model).eval()
    graph = tp.DependencyGraph().build_dependency(pruned, example_inputs=example)
    for name, keep in structural_kept(result).items():
        bn = pruned.get_submodule(name)
        drop = sorted(set(range(bn.num_features)) - set(keep))
        if drop:
            group = graph.get_pruning_group(bn, tp.prune_batchnorm_out_channels, idxs=drop)
            group.prune()
    widths = [bn.num_features for bn in _batchnorms(pruned)]
    ours = [row.width for row in result.report.layers]
    if widths != ours:
        raise RuntimeError(f"Torch-Pruning widths {widths} differ from slimfx's {ours}")
    return pruned


def prune_native(
    model: nn.Module, example: torch.Tensor, percent: float, round_to: int = 1
) -> nn.Module:
    """A copy of ``model`` pruned by :func:`prune_native_in_place`."""
    pruned = copy.deepcopy(model).eval()
    prune_native_in_place(pruned, example, percent, round_to)
    return pruned


def prune_native_in_place(
    model: nn.Module, example: torch.Tensor, percent: float, round_to: int = 1
) -> None:
    """Torch-Pruning's own network slimming on ``model`` itself: global raw |gamma|,
    ``percent``, ``round_to``, the last linear layer (the classifier) left whole."""
    import torch_pruning as tp

    heads = [m for m in model.modules() if isinstance(m, nn.Linear)][-1:]
    pruner = tp.pruner.BNScalePruner(
        model,
        example,
        importance=tp.importance.BNScaleImportance(normalizer=None),
        global_pruning=True,
        pruning_ratio=percent,
        round_to=round_to if round_to > 1 else None,
        ignored_layers=heads,
    )
    pruner.step()


def _batchnorms(model: nn.Module) -> list[nn.Module]:
    return [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
