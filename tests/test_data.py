"""Datasets: the fixed digits split, and CIFAR read from its real on-disk format."""

from __future__ import annotations

import hashlib
import pickle
import urllib.error
from pathlib import Path

import numpy as np
import pytest
import torch
from torchvision import datasets

from slimfx.cli import main
from slimfx.data import CIFAR_MEAN, CIFAR_STD, DatasetError, load_dataset

# ---------------------------------------------------------------- digits


def test_digits_split_is_fixed_and_stratified(digits_train, digits_test):
    assert len(digits_train) == 1347 and len(digits_test) == 450
    x, y = digits_train[0]
    assert x.shape == (3, 32, 32) and x.dtype == torch.float32 and y.dtype == torch.int64
    again = load_dataset("digits", False)
    assert torch.equal(again.tensors[0], digits_test.tensors[0])
    assert torch.equal(again.tensors[1], digits_test.tensors[1])
    counts = torch.bincount(digits_test.tensors[1], minlength=10)
    assert counts.min() >= 43 and counts.max() <= 47  # stratified: ~45 of each digit
    # normalised on the training split; the three channels are copies
    train_x = digits_train.tensors[0]
    assert abs(float(train_x.mean())) < 1e-4 and abs(float(train_x.std()) - 1) < 1e-3
    assert torch.equal(train_x[:, 0], train_x[:, 2])


def test_unknown_dataset_is_a_value_error():
    with pytest.raises(ValueError, match="--dataset must be one of"):
        load_dataset("mnist", True)


# ---------------------------------------------------------------- CIFAR on disk


def _write_pickle(path: Path, obj) -> str:
    data = pickle.dumps(obj, protocol=2)
    path.write_bytes(data)
    return hashlib.md5(data).hexdigest()


def _images(rng, n):
    return rng.integers(0, 256, size=(n, 3 * 32 * 32), dtype=np.uint8)


def write_tiny_cifar10(root: Path, per_batch: int = 4, test: int = 6) -> dict:
    """``cifar-10-batches-py`` as the real archive has it, with a few images per batch.

    Returns the file name → md5 of what was written, and the arrays.
    """
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    md5, arrays = {}, {}
    for i in range(1, 6):
        name = f"data_batch_{i}"
        data, labels = _images(rng, per_batch), [int(v) for v in rng.integers(0, 10, per_batch)]
        arrays[name] = (data, labels)
        md5[name] = _write_pickle(
            folder / name,
            {
                "batch_label": f"training batch {i} of 5",
                "labels": labels,
                "data": data,
                "filenames": [f"img_{i}_{k}.png" for k in range(per_batch)],
            },
        )
    data, labels = _images(rng, test), [int(v) for v in rng.integers(0, 10, test)]
    arrays["test_batch"] = (data, labels)
    md5["test_batch"] = _write_pickle(
        folder / "test_batch",
        {
            "batch_label": "testing batch 1 of 1",
            "labels": labels,
            "data": data,
            "filenames": [f"test_{k}.png" for k in range(test)],
        },
    )
    names = [
        "airplane",
        "automobile",
        "bird",
        "cat",
        "deer",
        "dog",
        "frog",
        "horse",
        "ship",
        "truck",
    ]
    md5["batches.meta"] = _write_pickle(
        folder / "batches.meta",
        {
            "num_cases_per_batch": per_batch,
            "label_names": names,
            "num_vis": 3072,
        },
    )
    return {"md5": md5, "arrays": arrays}


def trust_checksums(monkeypatch, md5: dict) -> None:
    """Make torchvision's CIFAR10 expect the md5 of the files the test wrote.

    torchvision checks every file against the md5 of the real archive; the tiny files have
    their own. The check itself stays in force (a changed byte still fails it).
    """
    cls = datasets.CIFAR10
    monkeypatch.setattr(
        cls, "train_list", [[f"data_batch_{i}", md5[f"data_batch_{i}"]] for i in range(1, 6)]
    )
    monkeypatch.setattr(cls, "test_list", [["test_batch", md5["test_batch"]]])
    monkeypatch.setattr(cls, "meta", {**cls.meta, "md5": md5["batches.meta"]})


@pytest.fixture
def tiny_cifar10(tmp_path, monkeypatch):
    written = write_tiny_cifar10(tmp_path / "data")
    trust_checksums(monkeypatch, written["md5"])
    return tmp_path / "data", written["arrays"]


def test_cifar10_loads_from_the_real_on_disk_format(tiny_cifar10):
    root, arrays = tiny_cifar10
    train = load_dataset("cifar10", True, root)
    test = load_dataset("cifar10", False, root)
    assert len(train) == 20 and len(test) == 6
    # without augmentation an image is ToTensor + Normalize of the stored bytes
    plain = load_dataset("cifar10", False, root, augment=False)
    data, labels = arrays["test_batch"]
    x, y = plain[3]
    expected = torch.from_numpy(data[3].reshape(3, 32, 32)).float() / 255
    expected = (expected - torch.tensor(CIFAR_MEAN)[:, None, None]) / torch.tensor(CIFAR_STD)[
        :, None, None
    ]
    assert y == labels[3]
    assert torch.allclose(x, expected, atol=1e-6)
    # training images are augmented (random crop with padding, flip): same shape
    assert train[0][0].shape == (3, 32, 32)


def test_cifar100_loads_from_the_real_on_disk_format(tmp_path, monkeypatch):
    folder = tmp_path / "cifar-100-python"
    folder.mkdir()
    rng = np.random.default_rng(1)
    md5 = {}
    for name, n in (("train", 10), ("test", 5)):
        md5[name] = _write_pickle(
            folder / name,
            {
                "filenames": [f"{name}{k}.png" for k in range(n)],
                "batch_label": name,
                "fine_labels": [int(v) for v in rng.integers(0, 100, n)],
                "coarse_labels": [int(v) for v in rng.integers(0, 20, n)],
                "data": _images(rng, n),
            },
        )
    md5["meta"] = _write_pickle(
        folder / "meta",
        {
            "fine_label_names": [f"class{k}" for k in range(100)],
            "coarse_label_names": [f"super{k}" for k in range(20)],
        },
    )
    cls = datasets.CIFAR100
    monkeypatch.setattr(cls, "train_list", [["train", md5["train"]]])
    monkeypatch.setattr(cls, "test_list", [["test", md5["test"]]])
    monkeypatch.setattr(cls, "meta", {**cls.meta, "md5": md5["meta"]})
    assert len(load_dataset("cifar100", True, tmp_path)) == 10
    assert len(load_dataset("cifar100", False, tmp_path)) == 5


def test_corrupted_cifar_file_is_named(tiny_cifar10):
    root, _ = tiny_cifar10
    victim = root / "cifar-10-batches-py" / "data_batch_3"
    raw = bytearray(victim.read_bytes())
    raw[-5] ^= 0xFF
    victim.write_bytes(bytes(raw))
    with pytest.raises(DatasetError, match=r"data_batch_3 is corrupted"):
        load_dataset("cifar10", True, root)


def test_real_checksums_reject_files_that_are_not_the_real_archive(tmp_path):
    written = write_tiny_cifar10(tmp_path)
    assert written["md5"]["data_batch_1"] != datasets.CIFAR10.train_list[0][1]
    with pytest.raises(DatasetError, match="corrupted"):
        load_dataset("cifar10", True, tmp_path)


def test_missing_cifar_says_where_to_put_the_files(tmp_path):
    with pytest.raises(DatasetError) as info:
        load_dataset("cifar10", True, tmp_path / "nowhere")
    message = str(info.value)
    assert str(tmp_path / "nowhere" / "cifar-10-batches-py") in message
    assert "data_batch_1" in message and "--download" in message


def test_failed_download_is_a_clear_error(tmp_path, monkeypatch):
    def offline(self):
        raise urllib.error.URLError("no network")

    monkeypatch.setattr(datasets.CIFAR10, "download", offline)
    with pytest.raises(DatasetError, match="could not download CIFAR-10"):
        load_dataset("cifar10", True, tmp_path, download=True)


def test_cli_prunes_on_the_tiny_cifar(tiny_cifar10, tmp_path, capsys, wf):
    root, _ = tiny_cifar10
    model = wf.sparse_trained_like(wf.reference_vgg(dataset="cifar10", depth=11))
    ckpt = tmp_path / "ref.pth.tar"
    torch.save({"epoch": 3, "best_prec1": 0.5, "state_dict": model.state_dict()}, ckpt)
    code = main(
        [
            "prune",
            "--dataset",
            "cifar10",
            "--data-dir",
            str(root),
            "--depth",
            "11",
            "--model",
            str(ckpt),
            "--save",
            str(tmp_path / "out"),
            "--no-plots",
        ]
    )
    out = capsys.readouterr().out
    assert code == 0
    assert "Test accuracy of the slim model" in out
    assert (tmp_path / "out" / "pruned.pth").is_file()
