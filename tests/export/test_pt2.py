"""torch.export round trip (:func:`slimfx.export.export_pt2`) and the torch.compile check."""

import copy

import pytest
import torch

from slimfx.errors import EquivalenceError, SlimfxError
from slimfx.export import check_compiled, export_pt2
from slimfx.export.pt2 import one_line
from slimfx.numerics import relative_error
from slimfx.tolerances import FLOAT32_RTOL


def states_equal(a, b):
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


class FixedBatch(torch.nn.Module):
    """Reshapes to a batch of 2 written in its code: not exportable with a dynamic batch."""

    def __init__(self):
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 4, 3)

    def forward(self, x):
        return self.conv(x).reshape(2, -1)


def test_round_trip_loads_back_equal_at_another_batch(slim_result, example, tmp_path):
    module = copy.deepcopy(slim_result.module).train()
    state, code = copy.deepcopy(module.state_dict()), module.code
    out = tmp_path / "slim.pt2"
    result = export_pt2(module, example, out)
    assert result.path == out and out.is_file() and result.dynamic_batch
    assert result.checked_batch_size not in (1, 2)  # traced at 2 (batch 1 specialises)
    assert result.max_relative_error <= FLOAT32_RTOL and result.seconds > 0
    assert str(result).startswith(f"{out} (torch.export, dynamic batch")
    assert module.training and all(m.training for m in module.modules())  # mode restored
    assert states_equal(module.state_dict(), state) and module.code == code  # not modified
    program = torch.export.load(out).module()
    x = torch.randn(5, 3, 32, 32)
    with torch.no_grad():
        assert relative_error(program(x), module.eval()(x)) <= FLOAT32_RTOL
    assert [p.name for p in tmp_path.iterdir()] == ["slim.pt2"]  # no temporary file left


def test_static_batch_is_checked_at_the_example_batch(slim_result, tmp_path):
    out = tmp_path / "static.pt2"
    result = export_pt2(slim_result.module, torch.randn(2, 3, 32, 32), out, dynamic_batch=False)
    assert result.checked_batch_size == 2 and not result.dynamic_batch
    program = torch.export.load(out).module()
    with pytest.raises(Exception):  # noqa: B017 - torch's guard error type is private
        program(torch.randn(3, 3, 32, 32))


def test_a_failed_export_leaves_the_earlier_file_untouched(tmp_path):
    out = tmp_path / "model.pt2"
    out.write_bytes(b"earlier")
    with pytest.raises(SlimfxError) as info:
        export_pt2(FixedBatch().eval(), torch.randn(2, 3, 8, 8), out)
    message = str(info.value)
    assert message.startswith("torch.export cannot export FixedBatch") and "\n" not in message
    assert "--static-batch" in message
    assert out.read_bytes() == b"earlier" and [p.name for p in tmp_path.iterdir()] == [out.name]
    export_pt2(FixedBatch().eval(), torch.randn(2, 3, 8, 8), out, dynamic_batch=False)
    assert out.read_bytes() != b"earlier"


def test_a_loaded_program_that_differs_is_an_equivalence_error(slim_result, tmp_path, monkeypatch):
    out = tmp_path / "slim.pt2"
    out.write_bytes(b"earlier")
    real_load = torch.export.load

    class Wrong:
        def __init__(self, program):
            self.program = program

        def module(self):
            return lambda x: self.program.module()(x) + 1.0

    monkeypatch.setattr(torch.export, "load", lambda f: Wrong(real_load(f)))
    with pytest.raises(EquivalenceError, match="the loaded program at batch 3 differs"):
        export_pt2(slim_result.module, torch.randn(1, 3, 32, 32), out)
    assert out.read_bytes() == b"earlier" and len(list(tmp_path.iterdir())) == 1


def test_invalid_arguments(slim_result, example, tmp_path):
    with pytest.raises(ValueError, match=r"must end in \.pt2"):
        export_pt2(slim_result.module, example, tmp_path / "slim.pt")
    with pytest.raises(ValueError, match=r"torch\.nn\.Module"):
        export_pt2("model", example, tmp_path / "slim.pt2")
    assert not list(tmp_path.iterdir())


def test_one_line_strips_terminal_codes_and_keeps_the_first_bullet():
    assert one_line(RuntimeError("\x1b[31mboom\x1b[0m\n\nmore")) == "boom"
    exc = RuntimeError("Constraints violated (batch)!\n  - You fixed batch to 2.\n  - more")
    assert one_line(exc) == "Constraints violated (batch)! You fixed batch to 2."
    assert one_line(RuntimeError("")) == "RuntimeError"


def test_torch_compile_matches_the_module(slim_result, example):
    module = copy.deepcopy(slim_result.module).train()
    state = copy.deepcopy(module.state_dict())
    result = check_compiled(module, example)
    assert result.max_relative_error <= FLOAT32_RTOL and result.checked_batch_size == 1
    assert str(result).startswith("torch.compile (inductor")
    assert module.training and states_equal(module.state_dict(), state)


def test_a_compiled_module_that_differs_is_an_equivalence_error(slim_result, example, monkeypatch):
    module = slim_result.module
    monkeypatch.setattr(torch, "compile", lambda m, **kw: lambda x: m(x) * 1.01)
    with pytest.raises(EquivalenceError, match=r"torch\.compile differs from PyTorch"):
        check_compiled(module, example)

    def broken(m, **kw):
        raise RuntimeError("\x1b[1mInvalidCxxCompiler\x1b[0m: no working C++ compiler found\n...")

    monkeypatch.setattr(torch, "compile", broken)
    with pytest.raises(SlimfxError) as info:
        check_compiled(module, example)
    message = str(info.value)
    assert message.startswith("torch.compile cannot compile ")
    assert message.endswith(": InvalidCxxCompiler: no working C++ compiler found")
