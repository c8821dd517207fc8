"""Ultralytics YOLO: stock models from the bundled yaml files, random weights, offline."""

import types

import numpy as np
import pytest
import torch

pytest.importorskip("ultralytics", reason="the yolo extra (pip install 'slimfx[yolo]')")

import ultralytics
from ultralytics.nn.modules.block import C2f

from slimfx.bench.timing import torch_threads
from slimfx.errors import CheckpointError
from slimfx.integrations.ultralytics import (
    SparsityCallbacks,
    load_yolo,
    save_yolo,
    slim_yolo,
    train_yolo,
    ultralytics_threads_restored,
    validate_yolo,
)
from slimfx.testing import assert_model_unchanged, model_snapshot, randomize_batchnorm

#: The BatchNorms a stock model keeps, and why: attention heads split from channels
#: (C2PSA), and the segmentation prototypes' last layer (a model output).
MODELS = {
    "yolov8n.yaml": 0,
    "yolo11n.yaml": 4,
    "yolov5nu.yaml": 0,
    "yolov8n-seg.yaml": 1,
    "yolo11n-pose.yaml": 4,
    "yolov8n-obb.yaml": 0,
    "yolo11n-cls.yaml": 4,
    "yolo26n.yaml": 9,  # end-to-end head (one-to-one branch); attention in C2PSA
}


def stock(cfg: str):
    model = load_yolo(cfg)
    return randomize_batchnorm(model, seed=0)


def pruned_and_total(result) -> tuple[int, int]:
    rows = result.report.layers
    return sum(bool(set(r.mode.split("/")) & {"compensate", "zero"}) for r in rows), len(rows)


@pytest.mark.parametrize("cfg", MODELS)
def test_stock_models_slim_exactly_and_stay_ultralytics_models(cfg):
    model = stock(cfg)
    snapshot = model_snapshot(model)
    slim = slim_yolo(model, 0.5, imgsz=64)
    assert type(slim.model) is type(model)
    assert set(slim.errors) == {64, 64 + int(max(model.stride.tolist()))}
    assert all(error <= 1e-9 for error in slim.errors.values()), slim.errors
    pruned, total = pruned_and_total(slim.result)
    assert total - pruned == MODELS[cfg], slim.result.report.frozen
    before = sum(p.numel() for p in model.parameters())
    assert sum(p.numel() for p in slim.model.parameters()) < 0.6 * before
    assert_model_unchanged(model, snapshot)
    with torch.no_grad():  # the outputs keep their shapes: boxes, classes, DFL, anchors
        x = torch.randn(1, 3, 64, 64)
        ours, theirs = slim.model.eval()(x), model.eval()(x)
        assert shapes(decoded(ours)) == shapes(decoded(theirs))


def decoded(out):
    return out[0] if isinstance(out, tuple) else out


def shapes(out):
    if isinstance(out, torch.Tensor):
        return tuple(out.shape)
    return [shapes(part) for part in out]


def test_c2f_halves_stay_even_for_ultralytics_split_forward():
    slim = slim_yolo(stock("yolov8n.yaml"), 0.5, imgsz=64).model.eval()
    blocks = [m for m in slim.modules() if isinstance(m, C2f)]
    assert blocks
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        chunked = slim(x)[0]
        for block in blocks:  # as Ultralytics' exporter runs them
            assert block.cv1.conv.out_channels == 2 * block.c
            block.forward = block.forward_split
        torch.testing.assert_close(slim(x)[0], chunked, rtol=0, atol=1e-5)


def test_a_checkpoint_round_trips_through_ultralytics(tmp_path):
    slim = slim_yolo(stock("yolo11n.yaml"), 0.5, imgsz=64).model.eval()
    path = tmp_path / "slim.pt"
    save_yolo(slim, path, imgsz=64)
    loaded = ultralytics.YOLO(str(path)).model.eval()
    assert type(loaded) is type(slim)
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x)[0], slim(x)[0], rtol=0, atol=1e-5)
    assert [p.shape for p in loaded.parameters()] == [p.shape for p in slim.parameters()]


def test_checkpoints_are_loaded_only_when_trusted(tmp_path):
    path = tmp_path / "model.pt"
    save_yolo(stock("yolov8n.yaml"), path)
    with pytest.raises(CheckpointError, match="pickle"):
        load_yolo(path)
    assert type(load_yolo(path, trust_pickles=True)).__name__ == "DetectionModel"
    with pytest.raises(CheckpointError, match="no such checkpoint"):
        load_yolo(tmp_path / "missing.pt", trust_pickles=True)


def test_the_sparsity_subgradient_follows_the_loss_scale_and_accumulation():
    callbacks = SparsityCallbacks(0.01)
    scaler = types.SimpleNamespace(get_scale=lambda: 1024.0, is_enabled=lambda: True)
    callbacks._trainer = types.SimpleNamespace(scaler=scaler, accumulate=4)
    weight = torch.tensor([0.5, -0.25, 0.0])
    grad = callbacks._hook(weight)(torch.ones(3))
    # AMP divides the scaled gradient by 1024 before the step, and 4 backward passes sum
    torch.testing.assert_close(grad, torch.tensor([1 + 2.56, 1 - 2.56, 1.0]))
    with pytest.raises(ValueError, match="strength"):
        SparsityCallbacks(-1)


def test_calls_into_ultralytics_leave_torch_threads_as_they_were():
    from ultralytics.utils import NUM_THREADS
    from ultralytics.utils.torch_utils import select_device

    threads = NUM_THREADS + 1  # what select_device would not set
    with torch_threads(threads):
        with ultralytics_threads_restored():
            select_device("cpu", verbose=False)
            assert torch.get_num_threads() == NUM_THREADS  # Ultralytics' own setting
        assert torch.get_num_threads() == threads


def test_sparsity_training_slimming_fine_tuning_validation_and_export(detection_data, train_args):
    """The whole workflow inside Ultralytics, on a dataset of four drawn images."""
    model = stock("yolov8n.yaml")
    plain = train_yolo(model, detection_data, name="plain", **train_args)
    sparse = train_yolo(model, detection_data, sparsity=5.0, name="sparse", **train_args)
    assert not plain.slimfx_gammas
    assert [row["epoch"] for row in sparse.slimfx_gammas] == [1]
    folder = sparse.trainer.save_dir
    assert (folder / "gammas.csv").read_text().count("\n") == 2 and (folder / "gammas.png").exists()

    def mean_gamma(yolo):
        return np.mean(
            [
                m.weight.abs().mean().item()
                for m in yolo.model.modules()
                if isinstance(m, torch.nn.BatchNorm2d)
            ]
        )

    assert mean_gamma(sparse) < mean_gamma(plain)  # the penalty pulled the gammas down

    slim = slim_yolo(sparse, 0.5, imgsz=64)
    assert all(error <= 1e-9 for error in slim.errors.values())
    tuned = train_yolo(slim.model, detection_data, name="tuned", **train_args)
    shapes = [p.shape for p in slim.model.parameters()]
    assert [p.shape for p in tuned.model.parameters()] == shapes  # not rebuilt from its yaml
    metrics = validate_yolo(
        tuned,
        detection_data,
        imgsz=64,
        batch=4,
        workers=0,
        device="cpu",
        plots=False,
        verbose=False,
    )
    assert 0 <= metrics.box.map50 <= 1
    image = next((detection_data.parent / "images" / "val").iterdir())
    with ultralytics_threads_restored():
        (prediction,) = tuned.predict(str(image), imgsz=64, device="cpu", verbose=False)
        onnx_path = tuned.export(format="onnx", imgsz=64, simplify=False)
    assert prediction.boxes is not None and prediction.orig_shape == (64, 64)

    import onnxruntime

    session = onnxruntime.InferenceSession(onnx_path, providers=["CPUExecutionProvider"])
    x = torch.rand(1, 3, 64, 64)
    with torch.no_grad():
        expected = tuned.model.float().eval()(x)[0]
    (actual,) = session.run(None, {session.get_inputs()[0].name: x.numpy()})
    np.testing.assert_allclose(actual, expected.numpy(), rtol=1e-3, atol=1e-3)
