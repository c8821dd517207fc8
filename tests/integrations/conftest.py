"""Ultralytics runs offline here, its settings in a temporary folder (set before it is
imported: it reads them at import)."""

import os
import tempfile

os.environ["YOLO_OFFLINE"] = "1"
os.environ["YOLO_CONFIG_DIR"] = tempfile.mkdtemp(prefix="slimfx-ultralytics-settings-")
os.environ.setdefault("YOLO_VERBOSE", "False")

from pathlib import Path

import numpy as np
import pytest
from PIL import Image


def write_detection_dataset(root: Path, images: int = 4, size: int = 64) -> Path:
    """A tiny YOLO-format detection dataset on disk: images with red and blue boxes drawn
    in, one label file per image (class, centre and size, normalised), a data yaml."""
    rng = np.random.default_rng(0)
    for split in ("train", "val"):
        (root / "images" / split).mkdir(parents=True, exist_ok=True)
        (root / "labels" / split).mkdir(parents=True, exist_ok=True)
        for i in range(images):
            image = np.full((size, size, 3), 40, np.uint8)
            lines = []
            for _ in range(2):
                w, h = rng.integers(size // 5, size // 2, 2)
                x0, y0 = rng.integers(0, size - size // 2, 2)
                cls = int(rng.integers(0, 2))
                image[y0 : y0 + h, x0 : x0 + w] = (220, 60, 60) if cls == 0 else (60, 60, 220)
                cx, cy = (x0 + w / 2) / size, (y0 + h / 2) / size
                lines.append(f"{cls} {cx:.6f} {cy:.6f} {w / size:.6f} {h / size:.6f}")
            Image.fromarray(image).save(root / "images" / split / f"{i}.png")
            (root / "labels" / split / f"{i}.txt").write_text("\n".join(lines) + "\n")
    data = root / "data.yaml"
    data.write_text(
        f"path: {root}\ntrain: images/train\nval: images/val\nnames:\n  0: red\n  1: blue\n"
    )
    return data


@pytest.fixture(scope="session")
def detection_data(tmp_path_factory) -> Path:
    return write_detection_dataset(tmp_path_factory.mktemp("yolo-data"))


@pytest.fixture
def train_args(tmp_path) -> dict:
    """Ultralytics training arguments for a few seconds on the CPU."""
    return dict(
        epochs=1,
        imgsz=64,
        batch=4,
        workers=0,
        device="cpu",
        amp=False,
        plots=False,
        project=str(tmp_path / "runs"),
        exist_ok=True,
        verbose=False,
    )
