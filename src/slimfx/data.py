"""Datasets of the network-slimming workflow: CIFAR-10, CIFAR-100 and a bundled ``digits`` set.

``cifar10``/``cifar100`` are read by torchvision from ``data_dir`` with the reference code's
transforms (4-pixel padded random crop and horizontal flip for training, per-channel
normalisation). Nothing is downloaded unless ``download=True``; a missing or corrupted
dataset raises :class:`DatasetError` saying where the files belong.

``digits`` is scikit-learn's bundled set of 1797 handwritten 8x8 digits, upsampled to 32x32
and repeated over three channels so that the CIFAR VGGs run on it unchanged. The train/test
split is fixed (stratified, seeded with :data:`DIGITS_SPLIT_SEED`): 1347 training and 450
test images, the same on every machine and for every ``--seed``.
"""

from __future__ import annotations

import itertools
import logging
import os
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset, DistributedSampler, Sampler, TensorDataset

from slimfx.errors import SlimfxError

logger = logging.getLogger(__name__)

DATASETS = ("cifar10", "cifar100", "digits")
NUM_CLASSES = {"cifar10": 10, "cifar100": 100, "digits": 10}
#: Seed of the fixed digits train/test split (independent of the training seed).
DIGITS_SPLIT_SEED = 0
DIGITS_TEST_FRACTION = 0.25
CIFAR_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR_STD = (0.2023, 0.1994, 0.2010)
CIFAR_URL = "https://www.cs.toronto.edu/~kriz/cifar.html"


class DatasetError(SlimfxError):
    """A dataset is missing, corrupted or could not be downloaded."""


def load_dataset(
    name: str,
    train: bool,
    data_dir: str | os.PathLike = "data",
    *,
    download: bool = False,
    augment: bool | None = None,
) -> Dataset:
    """One split of a dataset, as ``(image, label)`` pairs of 3x32x32 float tensors.

    Parameters
    ----------
    name : {"cifar10", "cifar100", "digits"}
    train : bool
        Training split (``True``) or test split.
    data_dir : path
        Folder holding ``cifar-10-batches-py/`` or ``cifar-100-python/`` (unused for digits).
    download : bool
        Fetch CIFAR from the internet when it is not in ``data_dir``.
    augment : bool, optional
        Random crop and flip (CIFAR training split only); defaults to ``train``.

    Raises
    ------
    ValueError
        Unknown dataset name.
    DatasetError
        CIFAR files missing, corrupted, or the download failed.

    Examples
    --------
    >>> test_set = load_dataset("digits", train=False)
    >>> len(test_set), tuple(test_set[0][0].shape)
    (450, (3, 32, 32))
    """
    if name not in DATASETS:
        raise ValueError(f"--dataset must be one of {', '.join(DATASETS)}, got {name!r}")
    if name == "digits":
        return digits(train)
    return cifar(
        name, train, data_dir, download=download, augment=train if augment is None else augment
    )


def digits(train: bool) -> TensorDataset:
    """The digits split: 8x8 images scaled to [0, 1], upsampled to 32x32 RGB, normalised."""
    images, labels = _digits_arrays()
    train_idx, test_idx = _digits_split(labels)
    x = torch.from_numpy(images).float().div_(16.0).unsqueeze(1)  # N, 1, 8, 8 in [0, 1]
    x = F.interpolate(x, size=(32, 32), mode="bilinear", align_corners=False)
    mean, std = x[train_idx].mean(), x[train_idx].std()
    x = ((x - mean) / std).expand(-1, 3, -1, -1).contiguous()
    y = torch.from_numpy(labels).long()
    idx = torch.from_numpy(train_idx if train else test_idx)
    return TensorDataset(x[idx], y[idx])


def _digits_arrays() -> tuple[np.ndarray, np.ndarray]:
    from sklearn.datasets import load_digits

    bunch = load_digits()
    return bunch.images.astype(np.float32), bunch.target.astype(np.int64)


def _digits_split(labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    from sklearn.model_selection import train_test_split

    train_idx, test_idx = train_test_split(
        np.arange(len(labels)),
        test_size=DIGITS_TEST_FRACTION,
        random_state=DIGITS_SPLIT_SEED,
        stratify=labels,
    )
    return np.sort(train_idx), np.sort(test_idx)


def _cifar_class(name: str):
    from torchvision import datasets

    return datasets.CIFAR10 if name == "cifar10" else datasets.CIFAR100


def cifar_transform(augment: bool):
    """The reference code's CIFAR transforms."""
    from torchvision import transforms

    steps = [transforms.RandomCrop(32, padding=4), transforms.RandomHorizontalFlip()]
    tail = [transforms.ToTensor(), transforms.Normalize(CIFAR_MEAN, CIFAR_STD)]
    return transforms.Compose((steps if augment else []) + tail)


def cifar(
    name: str, train: bool, data_dir: str | os.PathLike, *, download: bool, augment: bool
) -> Dataset:
    """A CIFAR split read by torchvision, after checking its files (see :func:`check_cifar`)."""
    cls = _cifar_class(name)
    root = Path(data_dir)
    if download:
        _download(cls, name, root)
    check_cifar(name, root)
    return cls(str(root), train=train, transform=cifar_transform(augment), download=False)


def _download(cls, name: str, root: Path) -> None:
    try:
        root.mkdir(parents=True, exist_ok=True)
        cls(str(root), train=True, download=True)
    except (OSError, RuntimeError) as exc:  # URLError is an OSError
        first = " ".join(str(exc).split())[:160] or type(exc).__name__
        raise DatasetError(
            f"could not download {_pretty(name)} into {root} ({first}); download "
            f"{cls.filename} from {CIFAR_URL} and extract it in {root}"
        ) from exc


def check_cifar(name: str, root: str | os.PathLike) -> None:
    """Check the CIFAR files under ``root`` the way torchvision does (md5 of every file).

    Raises
    ------
    DatasetError
        Naming the folder and the first missing or corrupted file.
    """
    from torchvision.datasets.utils import check_integrity

    cls = _cifar_class(name)
    folder = Path(root) / cls.base_folder
    files = [*cls.train_list, *cls.test_list, [cls.meta["filename"], cls.meta["md5"]]]
    missing = [f for f, _ in files if not (folder / f).is_file()]
    if missing:
        expected = ", ".join(f for f, _ in files)
        raise DatasetError(
            f"{_pretty(name)} not found: expected {folder}{os.sep} with {expected} "
            f"(missing {missing[0]}); extract {cls.filename} from {CIFAR_URL} into "
            f"{Path(root)}, point --data-dir at it, or add --download"
        )
    for filename, md5 in files:
        if not check_integrity(str(folder / filename), md5):
            raise DatasetError(
                f"{_pretty(name)} file {folder / filename} is corrupted (its md5 is not "
                f"{md5}); delete {folder} and extract {cls.filename} again, or add --download"
            )


def _pretty(name: str) -> str:
    return {"cifar10": "CIFAR-10", "cifar100": "CIFAR-100"}.get(name, name)


def example_input(batch: int = 1) -> torch.Tensor:
    """A batch of inputs of the shape every dataset here yields (3x32x32)."""
    return torch.randn(batch, 3, 32, 32)


class SkipSampler(Sampler):
    """``inner`` without its first ``skip`` indices (resuming inside an epoch)."""

    def __init__(self, inner: Sampler, skip: int):
        self.inner, self.skip = inner, skip

    def __iter__(self):
        return itertools.islice(iter(self.inner), self.skip, None)

    def __len__(self) -> int:
        return max(len(self.inner) - self.skip, 0)


def epoch_loader(
    dataset: Dataset,
    batch_size: int,
    *,
    seed: int,
    epoch: int,
    skip_batches: int = 0,
    rank: int = 0,
    world_size: int = 1,
    num_workers: int = 0,
    pin_memory: bool = False,
) -> DataLoader:
    """The shuffled training batches of one epoch, a function of ``(seed, epoch)`` only.

    A :class:`~torch.utils.data.DistributedSampler` (one replica without ``torchrun``) picks
    the order and this rank's share; ``skip_batches`` leaves out batches already trained on,
    and worker seeds come from a generator seeded by ``(seed, epoch)``, so an epoch resumed
    in the middle sees exactly the batches an uninterrupted one would.
    """
    sampler = DistributedSampler(
        dataset, num_replicas=world_size, rank=rank, shuffle=True, seed=seed, drop_last=False
    )
    sampler.set_epoch(epoch)
    return DataLoader(
        dataset,
        batch_size=batch_size,
        sampler=SkipSampler(sampler, skip_batches * batch_size),
        num_workers=num_workers,
        pin_memory=pin_memory,
        generator=torch.Generator().manual_seed(seed * 1_000_003 + epoch),
    )
