"""Checkpoints from strangers: nothing in them runs, and every defect is one clear error.

Every command that reads a checkpoint is tried with files that ask to run code, with broken
files of every kind, and with files that are sound but do not fit the model.
"""

from __future__ import annotations

import pickle
import random
import zipfile

import pytest
import torch

from slimfx import CheckpointError
from slimfx.checkpoint import load_checkpoint
from slimfx.workflow.prune import load_trained_model

# Every command line that reads a checkpoint; FILE is replaced by the file under test.
COMMANDS = {
    "prune": ["prune", "--dataset", "digits", "--model", "FILE", "--save", "OUT"],
    "export": ["export", "--dataset", "digits", "--model", "FILE", "--onnx", "OUT/m.onnx"],
    "train --resume": [
        "train", "--dataset", "digits", "--epochs", "1", "--no-cuda",
        "--resume", "FILE", "--save", "OUT",
    ],
    "train --refine": [
        "train", "--dataset", "digits", "--epochs", "1", "--no-cuda",
        "--refine", "FILE", "--save", "OUT",
    ],
    "bench --model": [
        "bench", "--dataset", "digits", "--model", "FILE", "--backends", "torch-cpu",
        "--batches", "1", "--rounds", "1", "--warmup", "0", "--out", "OUT",
    ],
    "bench --pruned": [
        "bench", "--dataset", "digits", "--model", "GOOD", "--pruned", "FILE",
        "--backends", "torch-cpu", "--batches", "1", "--rounds", "1", "--warmup", "0",
        "--out", "OUT",
    ],
}  # fmt: skip


def command(name: str, file, out, good=None) -> list[str]:
    swap = {"FILE": str(file), "OUT": str(out), "GOOD": str(good)}
    return [swap.get(a, a.replace("OUT", str(out))) for a in COMMANDS[name]]


def test_the_payloads_do_act_when_loaded_unsafely(tmp_path, safety, checkpoints):
    """The control: without ``weights_only`` each payload really creates its file."""
    for name, payload in safety.payloads(tmp_path / "marker").items():
        for fmt in ("zip", "legacy", "pickle"):
            path = safety.write_malicious(tmp_path / f"{fmt}.pth", payload, fmt, checkpoints.state)
            if fmt == "pickle":
                loaded = pickle.loads(path.read_bytes())
            else:
                loaded = torch.load(path, weights_only=False)
            if hasattr(loaded["epoch"], "close"):  # the file object open() returned
                loaded["epoch"].close()
            assert (tmp_path / "marker").exists(), (name, fmt)
            (tmp_path / "marker").unlink()


# Every command with a torch.save file; every format and payload through prune.
REFUSALS = [(name, "open", "zip") for name in COMMANDS] + [
    ("prune", payload, fmt)
    for payload in ("open", "os.system")
    for fmt in ("zip", "legacy", "pickle")
    if (payload, fmt) != ("open", "zip")
]


@pytest.mark.parametrize(("name", "payload", "fmt"), REFUSALS)
def test_code_in_a_checkpoint_is_refused_by_every_command(
    tmp_path, cli, safety, checkpoints, name, payload, fmt
):
    marker = tmp_path / "PWNED"
    evil = safety.write_malicious(
        tmp_path / "evil.pth", safety.payloads(marker)[payload], fmt, checkpoints.state
    )
    line = cli.error(command(name, evil, tmp_path / "out", checkpoints.pruned))
    assert line.startswith(f"slimfx {name.split()[0]}: error: {evil} was refused"), line
    if fmt == "pickle":  # plain pickle's protocol-4 framing is refused before the GLOBAL
        assert "not a weights-only checkpoint" in line and "nothing in it was run" in line
    else:
        assert "asks to run code" in line and payload.split(".")[-1] in line, line
        assert "ran nothing from it" in line
    assert not marker.exists()  # nothing it asked for happened
    assert not (tmp_path / "out" / "m.onnx").exists()
    assert not (tmp_path / "out" / "checkpoint.pth.tar").exists()


def _zip_garbage(path):
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("archive/data.pkl", random.Random(0).randbytes(300))
        archive.writestr("archive/version", "3\n")


def _zip_bomb(path):
    """A valid-looking archive claiming 96 MiB of zeros in a file of about 100 KB."""
    with (
        zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as archive,
        archive.open("archive/data/0", "w") as handle,
    ):
        for _ in range(96):
            handle.write(bytes(2**20))


BROKEN = {
    "empty": (lambda p, good: p.write_bytes(b""), "is empty"),
    "truncated": (
        lambda p, good: p.write_bytes(good.read_bytes()[: good.stat().st_size // 2]),
        "not a readable checkpoint",
    ),
    "cut at 100 bytes": (
        lambda p, good: p.write_bytes(good.read_bytes()[:100]),
        "not a readable checkpoint",
    ),
    "random bytes": (
        lambda p, good: p.write_bytes(random.Random(0).randbytes(4096)),
        "not a weights-only checkpoint (Unsupported operand",
    ),
    "zip garbage": (lambda p, good: _zip_garbage(p), "was refused"),
    "zip bomb": (lambda p, good: _zip_bomb(p), "claim"),
    "a folder": (lambda p, good: p.mkdir(), "is a folder"),
    "a device": (lambda p, good: p.symlink_to("/dev/zero"), "is not a regular file"),
    "list of tensors": (lambda p, good: torch.save([torch.ones(2)], p), "holds a list"),
    "a tensor": (lambda p, good: torch.save(torch.ones(2), p), "holds a Tensor"),
    "dict without weights": (lambda p, good: torch.save({"a": 1}, p), "no 'state_dict'"),
    "state_dict of numbers": (
        lambda p, good: torch.save({"state_dict": {"a": 1}}, p),
        "not a mapping of names to tensors",
    ),
    "pickle of a dict": (
        lambda p, good: p.write_bytes(pickle.dumps({"state_dict": {}}, protocol=2)),
        "not a readable checkpoint",
    ),
}


@pytest.mark.parametrize("kind", list(BROKEN))
def test_broken_files_are_one_clear_error(tmp_path, cli, checkpoints, kind):
    make, message = BROKEN[kind]
    path = tmp_path / "bad.pth"
    make(path, checkpoints.pruned)
    with pytest.raises(CheckpointError) as info:
        load_checkpoint(path)
    assert str(path) in str(info.value) and message in str(info.value), str(info.value)
    line = cli.error(command("prune", path, tmp_path / "out"))
    assert line.startswith("slimfx prune: error:") and message in line
    assert not (tmp_path / "out").exists()  # the run stopped before making its folder


def test_a_checkpoint_of_another_architecture_names_keys(tmp_path, cli, checkpoints):
    line = cli.error(command("prune", checkpoints.resnet, tmp_path / "out"))
    assert "does not fit VGG" in line
    assert "missing keys: feature.0.weight" in line and "unexpected keys: conv1.weight" in line
    assert "wrong --arch" in line
    line = cli.error([*command("export", checkpoints.pruned, tmp_path), "--arch", "densenet"])
    assert "its cfg does not build a densenet model" in line and "wrong --arch or --depth?" in line


def test_a_pruned_file_whose_cfg_disagrees_with_its_weights(tmp_path, cli, checkpoints, safety):
    cfg = list(safety.TINY_CFG)
    cfg[0] = 12  # the file says 12 channels; its weights have 8
    torch.save({"cfg": cfg, "state_dict": checkpoints.state}, tmp_path / "pruned.pth")
    with pytest.raises(CheckpointError) as info:
        load_trained_model(tmp_path / "pruned.pth", dataset="digits")
    message = str(info.value)
    assert "feature.0.weight (8, 3, 3, 3) vs (12, 3, 3, 3)" in message
    assert "the file's cfg and its state_dict disagree" in message
    for name in ("prune", "export", "train --refine", "bench --pruned"):
        line = cli.error(command(name, tmp_path / "pruned.pth", tmp_path / "o", checkpoints.pruned))
        assert "cfg and its state_dict disagree" in line, (name, line)


@pytest.mark.parametrize(
    ("cfg", "message"),
    [
        ("abc", "'cfg' is a str"),
        ([[1], "x"], "its cfg does not build a vgg model"),
        ([0, "M", -3], "its cfg does not build a vgg model"),
        ([10**7, "M", 10**7], "vs (10000000, 3, 3, 3)"),  # compared on 'meta': nothing allocated
    ],
)
def test_a_garbage_cfg_is_a_clear_error(tmp_path, cli, checkpoints, cfg, message):
    torch.save({"cfg": cfg, "state_dict": checkpoints.state}, tmp_path / "p.pth")
    line = cli.error(command("prune", tmp_path / "p.pth", tmp_path / "o"))
    assert message in line


@pytest.mark.parametrize(
    ("key", "where", "bad"),
    [
        ("feature.1.weight", 3, float("nan")),  # a gamma
        ("feature.0.weight", (0, 1, 2, 2), float("nan")),  # a convolution's weight
        ("feature.0.weight", (5, 0, 0, 0), float("-inf")),
        ("feature.1.running_var", 0, float("inf")),  # a buffer
        ("classifier.bias", 1, float("nan")),
    ],
)
def test_nan_or_inf_in_a_checkpoint_names_the_tensor(tmp_path, cli, checkpoints, key, where, bad):
    state = {k: v.clone() for k, v in checkpoints.state.items()}
    state[key][where] = bad
    torch.save({"cfg": checkpoints.train_state["cfg"], "state_dict": state}, tmp_path / "p.pth")
    names = ("prune", "export", "train --refine") if key == "feature.0.weight" else ("prune",)
    for name in names:
        line = cli.error(command(name, tmp_path / "p.pth", tmp_path / "o"))
        assert f"NaN or infinite values in {key} (1 of" in line, line


def _resume_with(tmp_path, cli, checkpoints, **changes):
    state = {**checkpoints.train_state, **changes}
    torch.save(state, tmp_path / "t.pth.tar")
    return cli.error(command("train --resume", tmp_path / "t.pth.tar", tmp_path / "o"))


def test_training_state_of_a_resumed_file_is_checked(tmp_path, cli, checkpoints):
    good = checkpoints.train_state
    optimizer = {**good["optimizer"], "state": {0: {"momentum_buffer": torch.ones(3)}}}
    line = _resume_with(tmp_path, cli, checkpoints, optimizer=optimizer)
    assert "optimizer momentum_buffer of shape (3,) does not fit a parameter" in line
    scheduler = {**good["lr_scheduler"], "optimizer": {"param_groups": []}}
    line = _resume_with(tmp_path, cli, checkpoints, lr_scheduler=scheduler)
    assert "'lr_scheduler' is not a learning-rate schedule" in line
    scheduler = {**good["lr_scheduler"], "milestones": "1,2"}
    line = _resume_with(tmp_path, cli, checkpoints, lr_scheduler=scheduler)
    assert "entry 'milestones' is a str" in line
    assert "'epoch' must be a count" in _resume_with(tmp_path, cli, checkpoints, epoch=-4)
    assert "'step' must be a count" in _resume_with(tmp_path, cli, checkpoints, step="x")
    line = _resume_with(tmp_path, cli, checkpoints, rng={"torch": torch.zeros(3)})
    assert "its 'rng' state is invalid" in line
    line = _resume_with(tmp_path, cli, checkpoints, optimizer=[1, 2])
    assert "its optimizer state does not fit" in line


def test_the_reference_codes_legacy_checkpoints_still_load(tmp_path, checkpoints):
    """Safety costs no compatibility: a pre-1.6 file with a 0-d tensor accuracy loads."""
    legacy = {
        "epoch": 3,
        "best_prec1": torch.tensor(91.5),
        "cfg": checkpoints.train_state["cfg"],
        "state_dict": {f"module.{k}": v for k, v in checkpoints.state.items()},  # DataParallel
    }
    torch.save(legacy, tmp_path / "old.pth.tar", _use_new_zipfile_serialization=False)
    model, ckpt = load_trained_model(tmp_path / "old.pth.tar", dataset="digits")
    assert ckpt["epoch"] == 3
    assert all(torch.equal(v, checkpoints.state[k]) for k, v in model.state_dict().items())
