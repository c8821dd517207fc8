"""Helpers for testing slimmed models (used by slimfx's own tests; public for users' tests).

The oracle here is independent of the passes: it masks a model from nothing but
``SlimResult.kept`` and the per-layer modes of the report, so a test can check the slim
model against it without trusting the pass' own reference.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn

from slimfx.passes.verify import float64_state, random_inputs, relative_error, run_float64
from slimfx.rules import is_batchnorm


def randomize_batchnorm(model: nn.Module, seed: int = 0, *, sparse: float = 0.0) -> nn.Module:
    """Give every BatchNorm random statistics, gammas and betas, in place.

    Freshly initialised BatchNorms are the identity (gamma 1, beta 0, mean 0, var 1), which
    hides slicing mistakes; this makes them not so. ``sparse`` is the fraction of gammas set
    close to zero, as after sparsity training.
    """
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for module in model.modules():
            if not is_batchnorm(module):
                continue
            n = module.num_features
            if module.affine:
                gamma = torch.rand(n, generator=generator) * 1.5 + 0.05
                gamma *= torch.where(torch.rand(n, generator=generator) < 0.2, -1.0, 1.0)
                small = torch.rand(n, generator=generator) < sparse
                gamma[small] *= 1e-3
                module.weight.copy_(gamma)
                module.bias.copy_(torch.randn(n, generator=generator) * 0.5)
            if module.running_mean is not None:
                module.running_mean.copy_(torch.randn(n, generator=generator) * 0.3)
                module.running_var.copy_(torch.rand(n, generator=generator) * 1.5 + 0.5)
    return model


def oracle_masked_model(
    model: nn.Module, kept: Mapping[str, list[int]], zeroed: Mapping[str, list[int]]
) -> nn.Module:
    """A copy of ``model`` with every BatchNorm channel outside ``kept`` masked.

    Parameters
    ----------
    kept : mapping
        BatchNorm name → kept channels (``SlimResult.kept``): the others get gamma 0.
    zeroed : mapping
        BatchNorm name → channels whose beta is zeroed too (``SlimResult.zeroed``).
    """
    masked = copy.deepcopy(model)
    with torch.no_grad():
        for name, channels in kept.items():
            bn = masked.get_submodule(name)
            pruned = torch.ones(bn.num_features, dtype=torch.bool)
            pruned[list(channels)] = False
            bn.weight[pruned] = 0
            bn.bias[list(zeroed.get(name, []))] = 0
    return masked


def max_relative_error(a: nn.Module, b: nn.Module, example_inputs, trials: int = 2) -> float:
    """Largest ``max|a - b| / max|b|`` over random inputs, both run in float64."""
    worst = 0.0
    state_a, state_b = float64_state(a), float64_state(b)
    for trial in range(trials):
        inputs = random_inputs(example_inputs, 1000 + trial)
        expected = run_float64(b, inputs, state_b)
        worst = max(worst, relative_error(run_float64(a, inputs, state_a), expected))
    return worst


def assert_matches_oracle(model: nn.Module, example_inputs, result) -> None:
    """Assert that a :class:`slimfx.SlimResult` equals the oracle masked model.

    The construction is checked exactly (float64 rebuild, 1e-9) and the stored weights within
    float32 rounding (1e-5).
    """
    from slimfx.passes.rewrite import rewrite
    from slimfx.tolerances import FLOAT32_RTOL, FLOAT64_RTOL

    oracle = oracle_masked_model(model, result.kept, result.zeroed)
    exact = rewrite(result.channel_graph, result.plan, dtype=torch.float64)
    error = max_relative_error(exact, oracle, example_inputs)
    assert error <= FLOAT64_RTOL, f"float64 rebuild differs from the oracle by {error:.3g}"
    error = max_relative_error(result.module, oracle, example_inputs)
    assert error <= FLOAT32_RTOL, f"stored weights differ from the oracle by {error:.3g}"


def model_snapshot(model: nn.Module) -> dict:
    """Everything of ``model`` a function could change: state (copied), dtypes and devices,
    training flags and attribute names of every submodule. Compare with
    :func:`assert_model_unchanged`."""
    return {
        "state": {k: v.detach().clone() for k, v in model.state_dict(keep_vars=True).items()},
        "dtypes": {k: (v.dtype, v.device) for k, v in model.state_dict().items()},
        "training": {name: m.training for name, m in model.named_modules()},
        "attributes": {name: sorted(vars(m)) for name, m in model.named_modules()},
    }


def assert_model_unchanged(model: nn.Module, snapshot: dict) -> None:
    """Assert that ``model`` is bit for bit, flag for flag and attribute for attribute what
    :func:`model_snapshot` recorded."""
    after = model_snapshot(model)
    assert after["dtypes"] == snapshot["dtypes"], "dtypes or devices changed"
    assert after["state"].keys() == snapshot["state"].keys(), "state dict keys changed"
    for key, value in snapshot["state"].items():
        assert torch.equal(after["state"][key], value), f"{key} changed"
    assert after["training"] == snapshot["training"], "training flags changed"
    assert after["attributes"] == snapshot["attributes"], "attributes changed"


def write_detection_dataset(root: Path, images: int = 4, size: int = 64) -> Path:
    """A tiny YOLO-format detection dataset on disk, for tests and benchmarks: images
    with red and blue boxes drawn in, one label file per image (class, centre and size,
    normalised), and the data yaml Ultralytics reads (its path is returned)."""
    from PIL import Image  # matplotlib's dependency: only this helper needs it

    rng = np.random.default_rng(0)
    for split in ("train", "val"):
        (root / "images" / split).mkdir(parents=True, exist_ok=True)
        (root / "labels" / split).mkdir(parents=True, exist_ok=True)
        for i in range(images):
            image = np.full((size, size, 3), 40, np.uint8)
            lines = []
            for _ in range(2):
                w, h = rng.integers(size // 5, size // 2, 2)
                x0, y0 = rng.integers(0, size - size // 2, 2)
                cls = int(rng.integers(0, 2))
                image[y0 : y0 + h, x0 : x0 + w] = (220, 60, 60) if cls == 0 else (60, 60, 220)
                cx, cy = (x0 + w / 2) / size, (y0 + h / 2) / size
                lines.append(f"{cls} {cx:.6f} {cy:.6f} {w / size:.6f} {h / size:.6f}")
            Image.fromarray(image).save(root / "images" / split / f"{i}.png")
            (root / "labels" / split / f"{i}.txt").write_text("\n".join(lines) + "\n")
    data = root / "data.yaml"
    data.write_text(
        f"path: {root}\ntrain: images/train\nval: images/val\nnames:\n  0: red\n  1: blue\n"
    )
    return data
