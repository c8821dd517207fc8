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


def test_bad_inputs_fail_in_one_line_before_any_work(tmp_path, capsys):
    from slimfx.cli import main

    afile = tmp_path / "afile"
    afile.write_text("x")
    assert main(["yolo", "prune", "--model", "yolov8n.yaml", "--save", str(afile)]) == 2
    assert capsys.readouterr().err.count("\n") == 1
    missing = str(tmp_path / "none.pt")
    assert main(["yolo", "prune", "--model", missing, "--save", str(tmp_path / "out")]) == 2
    assert "no such model file" in capsys.readouterr().err
    data = str(tmp_path / "no.yaml")
    runs = str(tmp_path / "runs")
    assert main(["yolo", "train", "--model", "yolov8n.yaml", "--data", data, "--save", runs]) == 2
    assert "no such dataset yaml" in capsys.readouterr().err
