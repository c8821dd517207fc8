"""int8 export: onnxruntime static quantization (QDQ, per-channel weights) of a slim model."""

import math

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from onnx import numpy_helper
from torch.utils.data import Subset

import slimfx
from slimfx.bench.latency import measure_latency
from slimfx.bench.timing import torch_threads
from slimfx.errors import EquivalenceError, SlimfxError
from slimfx.export import QuantizeOptions, export_onnx
from slimfx.export.quantize import onnx_accuracy
from slimfx.models import VGG
from slimfx.tolerances import INT8_RTOL
from slimfx.train.evaluation import evaluate
from slimfx.train.loop import TrainConfig, fit

CFG = [8, "M", 16, "M", 16, "M", 16, "M", 16]
#: Largest accuracy loss accepted from int8 on the 128 test images (4 images); measured: none.
ACCURACY_DROP = 0.03


def train(model, data, test, **settings):
    config = TrainConfig(batch_size=16, device="cpu", milestones=(), **settings)
    return fit(model, data, test, config).model.eval()


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    """Tiny models: a second thread only waits for a busy core (5x slower training)."""
    with torch_threads(1):
        yield


@pytest.fixture(scope="module")
def slim_digits(digits_train, small_test):
    """A tiny digits VGG trained 2 epochs, slimmed by half and fine-tuned one epoch (1.5 s;
    94% on the 128 test images, where one epoch from scratch gives 58%)."""
    torch.manual_seed(0)
    model = train(VGG(dataset="digits", cfg=CFG), digits_train, small_test, epochs=2, lr=0.1)
    res = slimfx.slim(model, torch.randn(1, 3, 32, 32), 0.5)
    slim = train(res.module, digits_train, small_test, epochs=1, lr=0.05)
    return slim, evaluate(slim, small_test)


@pytest.fixture(scope="module")
def calibration(digits_train):
    return Subset(digits_train, range(64))


@pytest.fixture(scope="module")
def int8(slim_digits, calibration, tmp_path_factory):
    """The slim model exported to int8 once for the tests that only read the file."""
    path = tmp_path_factory.mktemp("int8") / "slim-int8.onnx"
    options = QuantizeOptions(calibration, calibration_images=48)
    return export_onnx(slim_digits[0], torch.randn(1, 3, 32, 32), path, quantize=options)


def producers(model):
    return {out: node for node in model.graph.node for out in node.output}


def test_int8_file_has_qdq_nodes_and_per_channel_weight_scales(int8):
    model = onnx.load(str(int8.path))
    onnx.checker.check_model(model, full_check=True)
    ops = [node.op_type for node in model.graph.node]
    assert "QuantizeLinear" in ops and "DequantizeLinear" in ops
    initializers = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    made_by = producers(model)
    layers = [node for node in model.graph.node if node.op_type in ("Conv", "Gemm")]
    assert len(layers) == 6  # 5 convolutions and the classifier, all quantized
    for node in layers:
        dq = made_by[node.input[1]]  # the weight comes through a DequantizeLinear
        assert dq.op_type == "DequantizeLinear", node.name
        weight, scale = initializers[dq.input[0]], initializers[dq.input[1]]
        assert weight.dtype == np.int8
        axis = next(a.i for a in dq.attribute if a.name == "axis")
        out_channels = weight.shape[0] if node.op_type == "Conv" else weight.shape[axis]
        assert scale.shape == (out_channels,), node.name  # one scale per output channel
        assert np.all(scale > 0)
        assert np.abs(weight).max() <= 64  # 7-bit weights (reduce_range)


def test_int8_result_reports_the_calibration_and_the_check(int8):
    assert int8.quantized
    q = int8.quantization
    assert q.calibration_images == 48 and q.check_images == 48
    assert 0 < q.relative_error <= INT8_RTOL == q.tolerance
    assert q.top1_agreement >= 0.95
    assert (q.activation_type, q.weight_type, q.per_channel) == ("uint8", "int8", True)
    assert 0 <= int8.max_relative_error <= 1e-4  # the float model's check before quantizing
    text = str(int8)
    assert "int8 QDQ" in text and "per-channel" in text and "48 inputs" in text


def test_int8_runs_in_onnxruntime_and_keeps_the_accuracy(int8, slim_digits, small_test):
    slim, float_accuracy = slim_digits
    assert float_accuracy >= 0.8  # a model whose accuracy means something
    session = ort.InferenceSession(str(int8.path), providers=["CPUExecutionProvider"])
    x = torch.stack([small_test[k][0] for k in range(5)])
    (logits,) = session.run(None, {session.get_inputs()[0].name: x.numpy()})
    assert logits.shape == (5, 10)
    with torch.no_grad():
        want = slim(x).numpy()
    assert np.linalg.norm(logits - want) / np.linalg.norm(want) <= INT8_RTOL
    int8_accuracy = onnx_accuracy(int8.path, small_test, batch_size=50)
    assert int8_accuracy >= float_accuracy - ACCURACY_DROP


def test_static_batch_uses_whole_batches(slim_digits, calibration, tmp_path):
    options = QuantizeOptions(calibration, calibration_images=10)
    res = export_onnx(
        slim_digits[0],
        torch.randn(4, 3, 32, 32),
        tmp_path / "s.onnx",
        dynamic_batch=False,
        quantize=options,
    )
    assert res.quantization.calibration_images == 8  # two batches of 4
    session = ort.InferenceSession(str(res.path), providers=["CPUExecutionProvider"])
    assert session.get_inputs()[0].shape == [4, 3, 32, 32]
    too_few = QuantizeOptions(calibration, calibration_images=3)
    with pytest.raises(ValueError, match="fewer than the model's static batch size 4"):
        export_onnx(
            slim_digits[0],
            torch.randn(4, 3, 32, 32),
            tmp_path / "few.onnx",
            dynamic_batch=False,
            quantize=too_few,
        )
    assert not (tmp_path / "few.onnx").exists()


def failing_quantizer(*args, **kwargs):
    raise RuntimeError("quantizer exploded")


@pytest.mark.parametrize("failure", ["mismatch", "quantizer"])
def test_a_failure_leaves_the_earlier_file_untouched(
    failure, slim_digits, calibration, tmp_path, monkeypatch
):
    path = tmp_path / "slim.onnx"
    path.write_bytes(b"earlier model")
    if failure == "mismatch":  # a bound no int8 model meets
        options, error = (
            QuantizeOptions(calibration, calibration_images=8, rtol=1e-9),
            EquivalenceError,
        )
    else:
        import onnxruntime.quantization

        monkeypatch.setattr(onnxruntime.quantization, "quantize_static", failing_quantizer)
        options, error = QuantizeOptions(calibration, calibration_images=8), SlimfxError
    with pytest.raises(error, match=r"int8|quantize"):
        export_onnx(slim_digits[0], torch.randn(1, 3, 32, 32), path, quantize=options)
    assert path.read_bytes() == b"earlier model"
    assert [p.name for p in tmp_path.iterdir()] == ["slim.onnx"]  # no temporary file left


@pytest.mark.parametrize(
    ("settings", "named"),
    [
        ({"calibration_images": 0}, "calibration_images"),
        ({"calibration_images": 2.5}, "calibration_images"),
        ({"batch_size": -1}, "batch_size"),
        ({"activation_type": "int4"}, "activation_type"),
        ({"weight_type": "float8"}, "weight_type"),
        ({"method": "kl"}, "method"),
        ({"rtol": 0}, "rtol"),
        ({"rtol": math.nan}, "rtol"),
        ({"per_channel": "yes"}, "per_channel"),
        ({"calibration": None}, "calibration"),
        ({"calibration": "data/train"}, "calibration"),
    ],
)
def test_bad_quantize_options_raise_value_error_naming_them(settings, named):
    settings = {"calibration": torch.zeros(2, 3, 32, 32), **settings}
    with pytest.raises(ValueError, match=f"quantize.{named}"):
        QuantizeOptions(**settings)


def test_onnxruntime_type_names_are_accepted():
    from onnxruntime.quantization import QuantType

    options = QuantizeOptions(torch.zeros(1, 3, 32, 32), activation_type=QuantType.QInt8)
    assert options.activation_type == "int8"
    assert QuantizeOptions(torch.zeros(1, 3, 32, 32), weight_type="QUInt8").weight_type == "uint8"


@pytest.mark.parametrize(
    ("quantize", "message"),
    [
        ("int8", "quantize must be a QuantizeOptions"),
        (QuantizeOptions([]), "quantize.calibration holds no input"),
        (QuantizeOptions(torch.zeros(4, 3, 16, 16)), r"quantize.calibration: an input of shape"),
        (QuantizeOptions([("image", 1)]), "quantize.calibration yields str"),
    ],
)
def test_bad_calibration_is_refused_before_any_file_is_written(
    quantize, message, slim_digits, tmp_path
):
    with pytest.raises(ValueError, match=message):
        export_onnx(
            slim_digits[0], torch.randn(1, 3, 32, 32), tmp_path / "m.onnx", quantize=quantize
        )
    assert list(tmp_path.iterdir()) == []


def test_latency_runs_an_onnx_file_on_onnx_backends_only(int8, slim_digits):
    report = measure_latency(
        {"slim": slim_digits[0], "slim-int8": int8.path},
        torch.randn(1, 3, 32, 32),
        backends=["torch-cpu", "ort-cpu"],
        batches=(2,),
        rounds=1,
        warmup=0,
        min_round_seconds=0,
        progress=False,
    )
    assert report.row("ort-cpu", 2, "slim-int8").slim_median_ms > 0
    with pytest.raises(KeyError):
        report.row("torch-cpu", 2, "slim-int8")
    assert report.skipped == {"slim-int8 on torch-cpu": "an ONNX file runs on ONNX backends only"}
    assert report.models["slim-int8"].macs is None
    assert report.models["slim-int8"].params >= report.models["slim"].params
