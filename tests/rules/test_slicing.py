"""``sliced_shell``: a copy of a module with new tensors that never touches the original."""

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from slimfx.rules.slicing import sliced_shell
from slimfx.testing import assert_model_unchanged, model_snapshot


def _conv():
    torch.manual_seed(0)
    return nn.Conv2d(4, 6, 3, padding=1)


def _bn():
    bn = nn.BatchNorm2d(5)
    with torch.no_grad():
        bn.weight.copy_(torch.linspace(0.5, 1.5, 5))
        bn.bias.copy_(torch.linspace(-1.0, 1.0, 5))
        bn.running_mean.copy_(torch.linspace(-0.2, 0.2, 5))
        bn.running_var.copy_(torch.linspace(0.5, 2.0, 5))
        bn.num_batches_tracked.fill_(7)
    return bn


def test_the_copy_is_a_new_module_of_the_same_class():
    class MyConv(nn.Conv2d):
        pass

    conv = MyConv(4, 6, 3)
    copy = sliced_shell(conv)
    assert type(copy) is MyConv
    assert copy is not conv
    assert (copy.in_channels, copy.out_channels, copy.kernel_size) == (4, 6, (3, 3))
    assert repr(copy) == repr(conv)


def test_replaced_tensors_and_attributes_give_the_sliced_layer():
    conv = _conv()
    keep = torch.tensor([1, 3, 4])
    weight = conv.weight.detach().index_select(0, keep)
    bias = conv.bias.detach().index_select(0, keep)
    copy = sliced_shell(conv, {"out_channels": 3}, weight=weight, bias=bias)
    assert copy.out_channels == 3 and conv.out_channels == 6
    assert isinstance(copy.weight, nn.Parameter) and isinstance(copy.bias, nn.Parameter)
    assert torch.equal(copy.weight, weight) and torch.equal(copy.bias, bias)
    x = torch.randn(2, 4, 5, 5)
    torch.testing.assert_close(copy(x), conv(x)[:, keep], rtol=1e-5, atol=1e-6)
    assert repr(copy).startswith("Conv2d(4, 3, ")


def test_a_parameter_can_be_replaced_by_none():
    conv = _conv()
    copy = sliced_shell(conv, bias=None)
    assert copy.bias is None and conv.bias is not None
    assert [name for name, _ in copy.named_parameters()] == ["weight"]
    x = torch.randn(1, 4, 5, 5)
    torch.testing.assert_close(copy(x), F.conv2d(x, conv.weight, padding=1), rtol=1e-5, atol=0)


def test_replaced_buffers():
    bn = _bn()
    mean = torch.zeros(5)
    copy = sliced_shell(bn, running_mean=mean)
    assert copy.running_mean is mean
    assert not torch.equal(bn.running_mean, mean)
    assert "running_mean" in dict(copy.named_buffers())


def test_other_parameters_and_buffers_are_cloned_not_shared():
    bn = _bn()
    copy = sliced_shell(bn, weight=torch.ones(5))
    for name, original in [*bn.named_parameters(), *bn.named_buffers()]:
        cloned = getattr(copy, name)
        assert cloned is not original
        assert cloned.untyped_storage().data_ptr() != original.untyped_storage().data_ptr()
        if name != "weight":
            assert torch.equal(cloned, original), name
    with torch.no_grad():
        copy.bias.add_(1.0)
        copy.running_var.mul_(3.0)
    copy.num_batches_tracked += 1
    assert torch.equal(bn.bias, torch.linspace(-1.0, 1.0, 5))
    assert torch.equal(bn.running_var, torch.linspace(0.5, 2.0, 5))
    assert int(bn.num_batches_tracked) == 7


def test_requires_grad_is_kept():
    conv = _conv()
    conv.bias.requires_grad_(False)
    copy = sliced_shell(conv)
    assert copy.weight.requires_grad and not copy.bias.requires_grad
    conv.weight.requires_grad_(False)
    conv.bias.requires_grad_(True)
    copy = sliced_shell(conv, weight=conv.weight.detach()[:3].clone(), bias=conv.bias[:3])
    assert not copy.weight.requires_grad and copy.bias.requires_grad
    assert copy.weight.is_leaf and copy.bias.is_leaf


def test_gradients_of_the_copy_do_not_reach_the_original():
    conv = _conv()
    copy = sliced_shell(conv, {"out_channels": 3}, weight=conv.weight[:3], bias=conv.bias[:3])
    copy(torch.randn(1, 4, 5, 5)).sum().backward()
    assert copy.weight.grad is not None and copy.weight.grad.shape == (3, 4, 3, 3)
    assert conv.weight.grad is None and conv.bias.grad is None


def test_hooks_registered_on_the_copy_do_not_reach_the_original():
    conv = _conv()
    calls = []
    conv.register_forward_hook(lambda m, i, o: calls.append("original"))
    copy = sliced_shell(conv)
    copy.register_forward_hook(lambda m, i, o: calls.append("copy"))
    copy.register_forward_pre_hook(lambda m, i: calls.append("copy pre"))
    copy.register_full_backward_hook(lambda m, gi, go: calls.append("copy backward"))
    x = torch.randn(1, 4, 5, 5, requires_grad=True)
    conv(x).sum().backward()
    assert calls == ["original"]
    calls.clear()
    copy(x).sum().backward()
    assert calls == ["copy pre", "original", "copy", "copy backward"]  # it keeps the original's


def test_the_copy_keeps_its_own_hook_table():
    conv = _conv()
    calls = []
    handle = conv.register_forward_hook(lambda m, i, o: calls.append(m is conv))
    copy = sliced_shell(conv)
    handle.remove()  # from the original's table: the copy's still holds the hook
    copy(torch.randn(1, 4, 3, 3))
    conv(torch.randn(1, 4, 3, 3))
    assert calls == [False]


def test_submodules_and_non_persistent_buffers_are_copies():
    class Block(nn.Module):
        def __init__(self):
            super().__init__()
            self.scale = nn.Parameter(torch.ones(3))
            self.inner = nn.Linear(3, 3)
            self.register_buffer("cache", torch.zeros(3), persistent=False)

        def forward(self, x):
            return self.inner(x * self.scale) + self.cache

    block = Block()
    copy = sliced_shell(block, scale=torch.full((3,), 2.0))
    assert copy.inner is not block.inner
    assert copy.inner.weight.data_ptr() != block.inner.weight.data_ptr()
    assert torch.equal(copy.inner.weight, block.inner.weight)
    assert "cache" not in copy.state_dict() and "inner.weight" in copy.state_dict()
    copy.register_buffer("extra", torch.zeros(1), persistent=False)
    assert "extra" not in block._non_persistent_buffers_set
    x = torch.randn(2, 3)
    torch.testing.assert_close(copy(x), block(2 * x), rtol=1e-6, atol=1e-6)


def test_unknown_tensor_name_is_a_key_error():
    conv = _conv()
    with pytest.raises(KeyError, match="Conv2d has no parameter or buffer 'weights'"):
        sliced_shell(conv, weights=torch.zeros(1))
    with pytest.raises(KeyError, match="in_channels"):
        sliced_shell(conv, in_channels=torch.tensor(3))  # an attribute, not a tensor


def test_the_original_is_untouched():
    bn = _bn()
    bn.register_forward_hook(lambda m, i, o: None)
    snapshot = model_snapshot(bn)
    hooks = dict(bn._forward_hooks)
    copy = sliced_shell(
        bn, {"num_features": 2}, weight=torch.ones(2), bias=torch.zeros(2), running_mean=None
    )
    copy.register_forward_hook(lambda m, i, o: None)
    copy.train(False)
    with torch.no_grad():
        copy.running_var.zero_()
    assert_model_unchanged(bn, snapshot)
    assert bn.num_features == 5 and bn.training
    assert dict(bn._forward_hooks) == hooks
    assert bn.running_mean is not None
