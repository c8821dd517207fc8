"""Numeric helpers: float64 copies of tensors."""

import numpy as np
import pytest
import torch

from slimfx.numerics import float64_array


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32, torch.float64])
def test_float64_array_is_an_exact_independent_copy(dtype):
    tensor = torch.tensor([0.5, -1.25, 3.0, float("nan")], dtype=dtype, requires_grad=True)
    array = float64_array(tensor)
    assert array.dtype == np.float64
    np.testing.assert_array_equal(array, tensor.detach().double().numpy())
    array[0] = 7.0
    assert tensor[0].item() == 0.5  # nothing shared with the tensor
