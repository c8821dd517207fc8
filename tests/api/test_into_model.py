"""The slim layers put back into the input model's own class (SlimResult.into_model)."""

import pytest
import torch
import torch.nn as nn

import slimfx
from slimfx.errors import UnsupportedError
from slimfx.testing import assert_model_unchanged, model_snapshot, randomize_batchnorm


def cbr(cin, cout, k=1):
    return nn.Sequential(nn.Conv2d(cin, cout, k, padding=k // 2, bias=False), nn.BatchNorm2d(cout))


class ChunkStage(nn.Module):
    """A C2f-style stage: a convolution chunked into two halves, a residual bottleneck on the
    second, all concatenated. Its ``forward`` chunks into equal halves, as stock YOLO code
    does; ``self.hidden`` is an attribute the slim layers must not need."""

    def __init__(self, c=8):
        super().__init__()
        self.hidden = c
        self.cv1 = cbr(c, 2 * c)
        self.m = nn.Sequential(cbr(c, c, 3), cbr(c, c, 3))
        self.cv2 = cbr(3 * c, c)

    def forward(self, x):
        a, b = torch.relu(self.cv1(x)).chunk(2, 1)
        c = b + torch.relu(self.m(b))
        return torch.relu(self.cv2(torch.cat([a, b, c], 1)))


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.stem = cbr(3, 8, 3)
        self.stage = ChunkStage()
        self.fc = nn.Linear(8, 2)
        self.note = "kept"

    def forward(self, x):
        return self.fc(self.stage(torch.relu(self.stem(x))).mean((2, 3)))


def sparse_net():
    model = randomize_batchnorm(Net(), seed=5)
    with torch.no_grad():  # the two halves of cv1 would keep different widths
        model.stage.cv1[1].weight[[0, 1, 2, 3, 8, 9]] = 1e-3
        model.stage.m[1][1].weight[[0, 1]] = 1e-3
        model.stem[1].weight.abs_().add_(1.0)
    return model


def test_without_keep_forward_uneven_chunks_are_refused_by_name():
    model = sparse_net()
    res = slimfx.slim(model, torch.randn(2, 3, 6, 6), 0.3)
    widths = [res.plan.groups[f"stage_cv1_0[{k}]"].width for k in (0, 1)]
    assert widths[0] != widths[1]
    with pytest.raises(UnsupportedError, match=r"chunk|split"):
        res.into_model()


@pytest.mark.parametrize("compensate", [True, False])
def test_keep_forward_gives_the_models_own_class_slim_and_exact(compensate):
    model = sparse_net()
    snapshot = model_snapshot(model)
    x = torch.randn(2, 3, 6, 6)
    res = slimfx.slim(model, x, 0.3, keep_forward=True, compensate=compensate)
    widths = [res.plan.groups[f"stage_cv1_0[{k}]"].width for k in (0, 1)]
    assert widths[0] == widths[1] < 8
    slim = res.into_model()  # verified at the example size
    res.into_model(torch.randn(1, 3, 9, 7))  # and at another
    assert type(slim) is Net and type(slim.stage) is ChunkStage and slim.note == "kept"
    assert slim.stage.cv1[0].out_channels == 2 * widths[0]
    assert sum(p.numel() for p in slim.parameters()) == sum(
        p.numel() for p in res.module.parameters()
    )
    with torch.no_grad():
        assert torch.allclose(slim(x), res.module(x), rtol=0, atol=1e-6)
    assert_model_unchanged(model, snapshot)


class SplitStage(ChunkStage):
    """The same stage splitting at sizes its forward holds (``split((self.hidden,) * 2)``)."""

    def forward(self, x):
        a, b = torch.relu(self.cv1(x)).split((self.hidden, self.hidden), 1)
        c = b + torch.relu(self.m(b))
        return torch.relu(self.cv2(torch.cat([a, b, c], 1)))


def test_keep_forward_keeps_the_pieces_of_a_split_at_given_sizes_whole():
    model = sparse_net()
    model.stage.__class__ = SplitStage
    x = torch.randn(2, 3, 6, 6)
    res = slimfx.slim(model, x, 0.3, keep_forward=True)
    assert [res.plan.groups[f"stage_cv1_0[{k}]"].width for k in (0, 1)] == [8, 8]
    assert any("sizes the pieces" in note for note in res.plan.notes)
    slim = res.into_model()  # verified
    assert slim.stage.m[0][0].out_channels == 8  # tied to the piece kept whole
    assert sum(p.numel() for p in slim.parameters()) < sum(p.numel() for p in model.parameters())
