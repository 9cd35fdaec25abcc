"""MNIST, Fashion-MNIST, CIFAR-10 and CIFAR-100 read through `torchvision.datasets`.

torchvision reads the files; this module checks the layout first (so a wrong
directory gives one clear line instead of torchvision's RuntimeError) and
turns the result into `RawSplits`.

CIFAR: torchvision verifies the md5 of every local batch file and of the meta
file, which rejects any copy that is not byte-identical to the 2009 archive
(re-pickled copies, the small fixtures the tests write). `_LocalFiles` keeps
torchvision's reader but checks only that the files exist; a download still
goes through torchvision's `download()`, which verifies the archive's md5. A
damaged local batch then surfaces as an unpickling error, reported as such.
MNIST-style sets need no such change: torchvision only checks that the raw
idx files exist.
"""

from __future__ import annotations

import os
import pickle
from pathlib import Path

import numpy as np
from torchvision.datasets import CIFAR10, CIFAR100, MNIST, FashionMNIST

from fedalign.datasets.base import RawSplits
from fedalign.errors import UsageError

class _LocalFiles:
    """Mixin for torchvision's CIFAR classes: existence check instead of md5 (see module doc)."""

    def _files(self) -> list[str]:
        names = [f for f, _ in self.train_list + self.test_list] + [self.meta["filename"]]
        return [os.path.join(self.root, self.base_folder, f) for f in names]

    def _check_integrity(self) -> bool:
        return all(os.path.isfile(f) for f in self._files())

    def _load_meta(self) -> None:
        with open(os.path.join(self.root, self.base_folder, self.meta["filename"]), "rb") as f:
            self.classes = pickle.load(f, encoding="latin1")[self.meta["key"]]
        self.class_to_idx = {c: i for i, c in enumerate(self.classes)}


class LocalCIFAR10(_LocalFiles, CIFAR10):
    pass


class LocalCIFAR100(_LocalFiles, CIFAR100):
    pass


_MNIST_FILES = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")

_CLASSES = {"mnist": MNIST, "fashion-mnist": FashionMNIST, "cifar10": LocalCIFAR10, "cifar100": LocalCIFAR100}


def _folder(name: str) -> str:
    cls = _CLASSES[name]
    return cls.base_folder if hasattr(cls, "base_folder") else os.path.join(cls.__name__, "raw")


def expected_files(name: str, root: Path) -> list[Path]:
    """The files torchvision reads for `name` under `root`."""
    cls = _CLASSES[name]
    if name in ("mnist", "fashion-mnist"):
        return [root / cls.__name__ / "raw" / f for f in _MNIST_FILES]
    names = [f for f, _ in cls.train_list + cls.test_list] + [cls.meta["filename"]]
    return [root / cls.base_folder / f for f in names]


def resolve_root(name: str, root: Path) -> Path:
    """Accept the torchvision root or the data set's own folder (<root>/cifar-10-batches-py, <root>/MNIST)."""
    folder = Path(_folder(name))
    if root.name == folder.parts[0] and not (root / folder).exists() and (root.parent / folder).exists():
        return root.parent
    return root


def layout_hint(name: str, root: Path) -> str:
    if name in ("mnist", "fashion-mnist"):
        return f"{root}/{_folder(name)}/{{{','.join(_MNIST_FILES)}}} (torchvision idx files)"
    kind = "CIFAR-10" if name == "cifar10" else "CIFAR-100"
    return f"{root}/{_folder(name)}/ ({kind} python pickle batches, as torchvision downloads them)"


def download(name: str, root: Path) -> None:
    try:
        for train in (True, False):
            _CLASSES[name](str(root), train=train, download=True)
    except (OSError, RuntimeError) as err:
        raise UsageError(f"downloading {name} into {root} failed ({err}); check the network or fetch the files by hand") from None


def read(name: str, root: Path) -> RawSplits:
    """Both splits of `name` from `root` (files must exist; see `expected_files`)."""
    cls = _CLASSES[name]
    try:
        train, test = cls(str(root), train=True), cls(str(root), train=False)
    except (RuntimeError, OSError, EOFError, KeyError, ValueError, TypeError, pickle.UnpicklingError) as err:
        raise UsageError(f"cannot read {name} from {root} ({type(err).__name__}: {err}); expected {layout_hint(name, root)}") from None

    def pixels(ds) -> np.ndarray:
        x = np.asarray(ds.data, dtype=np.uint8)
        return np.ascontiguousarray(x[:, None] if x.ndim == 3 else x.transpose(0, 3, 1, 2))

    def labels(ds) -> np.ndarray:
        return np.asarray(ds.targets, dtype=np.int64)

    return RawSplits(
        pixels(train), labels(train), pixels(test), labels(test), list(train.classes), 255.0, f"torchvision:{cls.__name__}:{root}"
    )
