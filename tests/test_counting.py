"""MACs as PyTorch's FLOP counter counts them, against hand counts."""

import torch
import torch.nn as nn
import torch.nn.functional as F

import slimfx
from slimfx.counting import count_macs


class _Mixed(nn.Module):
    """Every kind of multiply-accumulate a CNN with an attention block has."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1)  # 8*8 out positions * 8 ch * (3*9)
        self.grouped = nn.Conv2d(8, 8, 3, padding=1, groups=4)  # 64 * 8 * (2*9)
        self.weight = nn.Parameter(torch.randn(4, 8, 1, 1))  # functional 1x1: 64 * 4 * 8
        self.up = nn.ConvTranspose2d(4, 2, 2, stride=2)  # 64 inputs * 4 * 2 * (2*2)
        self.qkv = nn.Linear(2, 6)  # 256 tokens * 6 * 2

    def forward(self, x):
        x = self.grouped(self.conv(x))
        x = F.conv2d(x, self.weight)
        x = self.up(x)  # (N, 2, 16, 16)
        tokens = x.flatten(2).transpose(1, 2)  # (N, 256, 2)
        q, k, v = self.qkv(tokens).chunk(3, dim=-1)  # each (N, 256, 2)
        attention = (q @ k.transpose(1, 2)).softmax(-1)  # 256 * 256 * 2
        return attention @ v  # 256 * 256 * 2


HAND_COUNT = (
    64 * 8 * 27  # conv
    + 64 * 8 * 18  # grouped conv
    + 64 * 4 * 8  # functional conv
    + 64 * 4 * 2 * 4  # transposed conv: every input position feeds a 2x2 patch
    + 256 * 6 * 2  # linear over tokens
    + 2 * 256 * 256 * 2  # the two attention matmuls
)


def test_every_multiply_accumulate_is_counted_per_sample():
    gm = slimfx.trace(_Mixed().eval(), torch.randn(3, 3, 8, 8))
    assert count_macs(gm) == HAND_COUNT


def test_counting_does_not_touch_the_weights():
    model = _Mixed().eval()
    gm = slimfx.trace(model, torch.randn(1, 3, 8, 8))
    before = {k: v.clone() for k, v in gm.state_dict().items()}
    count_macs(gm)
    assert all(
        torch.equal(before[k], v) and v.device.type == "cpu" for k, v in gm.state_dict().items()
    )
