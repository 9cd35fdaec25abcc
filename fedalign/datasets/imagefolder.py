"""Image trees in torchvision's ImageFolder layout: <dir>/train/<class>/*, <dir>/test/<class>/*.

Files are listed with torchvision's own `find_classes`/`make_dataset`, so the
class order and accepted extensions are exactly ImageFolder's; decoding is done
here once into a uint8 array (and cached on disk), because decoding tens of
thousands of small JPEGs per run would dominate a short experiment.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from fedalign.datasets import cache
from fedalign.datasets.base import RawSplits
from fedalign.errors import UsageError

_GRAY_MODES = {"1", "L", "LA", "I", "I;16", "F", "P;L"}


def is_imagefolder(root: str | os.PathLike) -> bool:
    root = Path(root)
    return (root / "train").is_dir() and (root / "test").is_dir()


def layout_hint(root: str | os.PathLike) -> str:
    return f"{root}/train/<class>/<image> and {root}/test/<class>/<image> (ImageFolder)"


def _require_tree(root: Path) -> None:
    if not is_imagefolder(root):
        raise UsageError(f"data directory {root} is not an image folder tree; expected {layout_hint(root)}")


def list_samples(root: Path) -> tuple[list[str], list[tuple[str, int]], list[tuple[str, int]]]:
    """Class names (from train/) and (path, label) lists for train/ and test/."""
    from torchvision.datasets.folder import IMG_EXTENSIONS, find_classes, make_dataset

    _require_tree(root)
    try:
        classes, class_to_idx = find_classes(root / "train")
        train = make_dataset(root / "train", class_to_idx, extensions=IMG_EXTENSIONS)
        test = make_dataset(root / "test", class_to_idx, extensions=IMG_EXTENSIONS, allow_empty=True)
    except FileNotFoundError as err:
        raise UsageError(f"image folder {root} is incomplete ({err}); expected {layout_hint(root)}") from None
    unknown = sorted({e.name for e in os.scandir(root / "test") if e.is_dir()} - set(classes))
    if unknown:
        raise UsageError(
            f"{root}/test has class folders missing from train/: {', '.join(unknown)}; "
            "train/ and test/ must use the same class names"
        )
    if not test:
        raise UsageError(f"{root}/test holds no images; expected {layout_hint(root)}")
    return classes, train, test


def _decode(samples: list[tuple[str, int]]) -> tuple[np.ndarray, np.ndarray, bool]:
    """uint8 N x H x W x 3 pixels, int64 labels, and whether every image was grayscale."""
    images, gray = [], True
    size = None
    for path, _ in samples:
        try:
            with Image.open(path) as im:
                gray = gray and im.mode in _GRAY_MODES
                arr = np.asarray(im.convert("RGB"))
        except (OSError, UnidentifiedImageError, Image.DecompressionBombError, ValueError) as err:
            raise UsageError(f"cannot decode image {path} ({err}); remove or replace the file") from None
        if size is None:
            size = arr.shape
        elif arr.shape != size:
            raise UsageError(
                f"image {path} is {arr.shape[1]}x{arr.shape[0]} but earlier images are "
                f"{size[1]}x{size[0]}; resize all images to one size"
            )
        images.append(arr)
    labels = np.fromiter((label for _, label in samples), dtype=np.int64, count=len(samples))
    return np.stack(images), labels, gray


def _tree_entries(root: Path) -> list[str]:
    """Every class folder under train/ and test/ and every file below them, sorted."""
    entries = []
    for split in ("train", "test"):
        for top in sorted(e.path for e in os.scandir(root / split) if e.is_dir()):
            for folder, _, files in os.walk(top, followlinks=True):
                entries.append(folder)
                entries.extend(os.path.join(folder, f) for f in files)
    return sorted(entries)


def fingerprint(root: Path) -> str:
    """Cheap identity of the tree's current contents (one stat per class folder and file).

    Covers a superset of what ImageFolder reads (folders, and files of any
    extension), so any change to what `list_samples` would return changes it,
    without importing torchvision (~90 MB per process) in every Ray actor that
    only maps the cached pixels.
    """
    _require_tree(root)
    return cache.fingerprint(_tree_entries(root))


def decode_imagefolder(root: Path) -> RawSplits:
    classes, train, test = list_samples(root)
    train_x, train_y, train_gray = _decode(train)
    test_x, test_y, test_gray = _decode(test)
    if train_x.shape[1:] != test_x.shape[1:]:
        raise UsageError(
            f"train images are {train_x.shape[2]}x{train_x.shape[1]} but test images are "
            f"{test_x.shape[2]}x{test_x.shape[1]}; resize all images to one size"
        )
    channels = slice(0, 1) if train_gray and test_gray else slice(0, 3)

    def to_nchw(x: np.ndarray) -> np.ndarray:
        return np.ascontiguousarray(x.transpose(0, 3, 1, 2)[:, channels])

    return RawSplits(to_nchw(train_x), train_y, to_nchw(test_x), test_y, classes, 255.0, f"imagefolder:{root}")


def load_imagefolder(root: Path, print_: str) -> RawSplits:
    """Decoded pixels of the tree at `root` whose `fingerprint` is `print_`, from disk cache if there."""
    return cache.cached("imagefolder", root, print_, lambda: decode_imagefolder(root))
