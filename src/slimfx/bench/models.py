"""The models a benchmark times: their size, and stand-in scaling factors for fresh ones.

:func:`model_info` counts a model's parameters and conv+linear MACs per sample for
:class:`~slimfx.bench.stats.ModelInfo`; :func:`synthetic_scales` gives an untrained model
BatchNorm statistics that prune every layer alike, for benchmarking without a checkpoint.
"""

from __future__ import annotations

import logging

import torch

from slimfx.bench.stats import ModelInfo
from slimfx.counting import count_macs, count_params
from slimfx.errors import SlimfxError, first_line
from slimfx.export.onnx import eval_mode

logger = logging.getLogger(__name__)

__all__ = ["model_info", "synthetic_scales"]


def model_info(name: str, module: torch.nn.Module, inputs: tuple) -> ModelInfo:
    """Parameters and conv+linear MACs per sample of ``module`` (MACs ``None`` if untraceable).

    Parameters
    ----------
    name : str
        The model's display name.
    module : torch.nn.Module
        Traced in eval mode on the CPU copies of ``inputs``; its mode is restored after.
    inputs : tuple of torch.Tensor
        Example inputs.

    Returns
    -------
    ModelInfo
        ``macs`` is ``None`` (and a warning logged) when the model cannot be traced.
    """
    from slimfx.passes.trace import trace

    try:
        with eval_mode(module):
            macs = count_macs(trace(module, tuple(t.cpu() for t in inputs)))
    except (SlimfxError, RuntimeError, TypeError) as exc:
        logger.warning("cannot count the MACs of %s: %s", name, first_line(exc))
        macs = None
    return ModelInfo(name=name, params=count_params(module), macs=macs)


def synthetic_scales(model: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Give every BatchNorm seeded random statistics and scaling factors, in place.

    For benchmarking without a sparsity-trained checkpoint: a fresh model's equal gammas make
    the ranking degenerate, while |gamma| uniform in (0, 1) prunes every layer by about the
    same fraction. Latency depends on the widths, not on the weight values.

    Parameters
    ----------
    model : torch.nn.Module
        Modified in place.
    seed : int
        Seed of the random values.

    Returns
    -------
    torch.nn.Module
        ``model`` itself.
    """
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, torch.nn.modules.batchnorm._BatchNorm):
                n = module.num_features
                if module.affine:
                    module.weight.copy_(torch.rand(n, generator=generator))
                    module.bias.copy_((torch.rand(n, generator=generator) - 0.5) * 0.2)
                if module.running_mean is not None:
                    module.running_mean.copy_((torch.rand(n, generator=generator) - 0.5) * 0.2)
                    module.running_var.copy_(torch.rand(n, generator=generator) + 0.5)
    return model
