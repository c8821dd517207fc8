"""``slimfx yolo prune`` and ``slimfx yolo train`` on a stock model and four drawn images."""

import json

import pytest

pytest.importorskip("ultralytics", reason="the yolo extra (pip install 'slimfx[yolo]')")


def test_train_with_sparsity_then_prune_with_validation(slimfx_cli, detection_data, tmp_path):
    runs = tmp_path / "runs"
    trained = slimfx_cli(
        "yolo",
        "train",
        "--model",
        "yolov8n.yaml",
        "--data",
        str(detection_data),
        "-sr",
        "--s",
        "1e-2",
        "--epochs",
        "1",
        "--imgsz",
        "64",
        "--batch",
        "4",
        "--workers",
        "0",
        "--device",
        "cpu",
        "--save",
        str(runs),
        "--name",
        "sparse",
    )
    assert trained.returncode == 0, trained.stderr
    best = runs / "sparse" / "weights" / "best.pt"
    assert best.is_file() and (runs / "sparse" / "gammas.csv").is_file()
    assert "gammas after epoch 1" in trained.stdout

    out = tmp_path / "out"
    pruned = slimfx_cli(
        "yolo",
        "prune",
        "--model",
        str(best),
        "--percent",
        "0.5",
        "--imgsz",
        "64",
        "--data",
        str(detection_data),
        "--save",
        str(out),
    )
    assert pruned.returncode == 0, pruned.stderr
    assert "full pickle" in pruned.stderr  # said plainly, for the file the user passed
    assert "mAP50-95 before" in pruned.stdout and "64px" in pruned.stdout
    assert {p.name for p in out.iterdir()} == {"slim.pt", "plan.json", "report.txt"}
    assert json.loads((out / "plan.json").read_text())["groups"]


def test_bad_inputs_fail_in_one_line_before_any_work(slimfx_cli, tmp_path):
    afile = tmp_path / "afile"
    afile.write_text("x")
    result = slimfx_cli("yolo", "prune", "--model", "yolov8n.yaml", "--save", str(afile))
    assert result.returncode == 2 and result.stderr.count("\n") == 1, result.stderr
    result = slimfx_cli("yolo", "prune", "--model", str(tmp_path / "none.pt"))
    assert result.returncode == 2 and "no such model file" in result.stderr
    result = slimfx_cli(
        "yolo",
        "train",
        "--model",
        "yolov8n.yaml",
        "--data",
        str(tmp_path / "no.yaml"),
        "--save",
        str(tmp_path / "runs"),
    )
    assert result.returncode == 2 and "no such dataset yaml" in result.stderr
