"""``slimfx prune --speedup`` and ``slimfx bench --speedup``: latency targets end to end."""

import contextlib
import json

import pytest
import torch

from slimfx.cli import main


@pytest.fixture
def cache(tmp_path, monkeypatch):
    """Layer latencies are cached in the test's folder, nowhere else."""
    monkeypatch.setenv("SLIMFX_CACHE_DIR", str(tmp_path / "cache"))
    return tmp_path / "cache"


def test_prune_to_a_speedup_then_bench_shows_predicted_and_measured(
    tmp_path, capsys, cache, tiny_pruned
):
    save = tmp_path / "out"
    argv = [
        "prune", "--dataset", "digits", "--model", str(tiny_pruned), "--save", str(save),
        "--speedup", "1.4", "--backend", "onnxruntime", "--batch", "8", "--threads", "1",
        "--no-plots",
    ]  # fmt: skip
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "Latency on ort-cpu (batch 8, 1 threads)" in out and "predicted ms" in out
    latency = json.loads((save / "prune.json").read_text())["report"]["latency"]
    assert latency["speedup"] == 1.4 and latency["measured_speedup"] > 1.1
    assert list((cache / "latency").glob("ort-cpu-*.json"))
    pruned = torch.load(save / "pruned.pth", weights_only=True)
    assert set(pruned) == {"cfg", "state_dict"}
    bench = [
        "bench", "--dataset", "digits", "--model", str(tiny_pruned),
        "--pruned", str(save / "pruned.pth"), "--backends", "ort-cpu", "--batches", "8",
        "--threads", "1", "--rounds", "3", "--warmup", "1", "--out", str(tmp_path / "b"),
        "--no-plot",
    ]  # fmt: skip
    assert main(bench) == 0
    out = capsys.readouterr().out
    assert "predicted" in out
    row = json.loads((tmp_path / "b" / "bench.json").read_text())["rows"][0]
    assert row["predicted_ms"] == pytest.approx(latency["predicted_ms"])
    assert "predicted ms (error)" in (tmp_path / "b" / "bench.md").read_text()


def test_bench_slims_to_a_speedup_itself(tmp_path, capsys, cache, tiny_pruned):
    argv = [
        "bench", "--dataset", "digits", "--model", str(tiny_pruned), "--speedup", "1.3",
        "--backends", "ort-cpu,torch-cpu", "--batches", "4", "--threads", "1",
        "--rounds", "3", "--warmup", "1", "--out", str(tmp_path / "b"), "--no-plot",
    ]  # fmt: skip
    assert main(argv) == 0
    data = json.loads((tmp_path / "b" / "bench.json").read_text())
    rows = {row["backend"]: row for row in data["rows"]}
    assert rows["ort-cpu"]["predicted_ms"] > 0  # planned for ort-cpu at batch 4
    assert rows["torch-cpu"]["predicted_ms"] is None  # not planned for PyTorch
    assert data["settings"]["slim"] == "slim: 1.3x faster on ort-cpu, batch 4"


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--percent", "0.3", "--speedup", "2"], "not allowed with argument"),
        (["--speedup", "1"], "--speedup"),
        (["--latency-ms", "0"], "--latency-ms"),
        (["--speedup", "2", "--backend", "tpu"], "unknown backend"),
        (["--speedup", "2", "--round-to", "auto"], "exclusive"),
    ],
)
def test_latency_target_errors_are_one_line(tmp_path, capsys, tiny_pruned, args, message):
    argv = ["prune", "--dataset", "digits", "--model", str(tiny_pruned), *args]
    usage = "--percent" in args or args[1] in ("1", "0") or "tpu" in args  # argparse's
    with pytest.raises(SystemExit) if usage else contextlib.nullcontext():
        assert main([*argv, "--save", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0]
    assert not (tmp_path / "out").exists()
