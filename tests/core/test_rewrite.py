"""Pass 4, rewrite: new modules, original names and classes, nothing shared."""

import torch

import slimfx
from slimfx.models import VGG
from slimfx.testing import randomize_batchnorm

X = torch.randn(2, 3, 32, 32)


def test_module_names_and_classes_are_kept():
    model = randomize_batchnorm(VGG(depth=11), seed=1)
    res = slimfx.slim(model, X, 0.5)
    names = [n for n, _ in res.module.named_modules() if n]
    assert names[:3] == ["feature", "feature.0", "feature.1"]
    assert "classifier" in names
    assert type(res.module.feature) is torch.nn.Sequential
    assert isinstance(res.module.feature[3], torch.nn.MaxPool2d)
    assert res.module.feature[4].in_channels == res.module.feature[1].num_features


def test_no_tensor_is_shared_with_the_input_model():
    model = randomize_batchnorm(VGG(depth=11), seed=2)
    res = slimfx.slim(model, X, 0.0, verify=False)
    original = {t.data_ptr() for t in list(model.parameters()) + list(model.buffers())}
    slim = [t for t in list(res.module.parameters()) + list(res.module.buffers()) if t.numel()]
    assert not {t.data_ptr() for t in slim} & original
    with torch.no_grad():
        res.module.feature[0].weight.add_(1.0)
    assert not torch.equal(res.module.feature[0].weight, model.feature[0].weight)


def test_purity_input_model_state_and_graph_unchanged():
    model = randomize_batchnorm(VGG(depth=11), seed=3).train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    gm = slimfx.trace(model, X)
    code = gm.code
    cg = slimfx.analyze(gm)
    plan = slimfx.plan(cg, 0.5)
    slimfx.rewrite(cg, plan)
    slimfx.rewrite(cg, plan, dtype=torch.float64)
    res = slimfx.slim(model, X, 0.5)
    _ = res.reference
    assert gm.code == code
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert model.training and all(m.training for m in model.modules())


def test_float64_rewrite_converts_every_floating_tensor():
    model = randomize_batchnorm(VGG(depth=11), seed=4)
    cg = slimfx.analyze(slimfx.trace(model, X))
    slim = slimfx.rewrite(cg, slimfx.plan(cg, 0.3), dtype=torch.float64)
    assert all(p.dtype == torch.float64 for p in slim.parameters())
    assert slim.feature[1].running_mean.dtype == torch.float64
