"""Data sets by name: `load_dataset(name, ...)` -> `DatasetSplits` of normalized tensors.

    splits = load_dataset("cifar10", data_dir="../shared/data/cifar10", train_size=5000, seed=1)

"digits" is built in (scikit-learn, no files). mnist, fashion-mnist, cifar10
and cifar100 are read by torchvision from `data_dir` (downloaded only with
`download=True`); if `data_dir` instead holds train/<class>/ and test/<class>/
folders, it is read as an image folder tree with that data set's
normalization. "imagefolder" reads any such tree and normalizes with the mean
and std of its training images.

Decoded pixels are cached per process and on disk as uint8 .npy files that
every process memory-maps (`fedalign.datasets.cache`); the splits index into
them and normalize per batch (`PixelDataset`), so the server and all Ray
actors of a simulation share one copy of the pixels.
"""

from __future__ import annotations

import functools
import os
from pathlib import Path

from fedalign.datasets import imagefolder
from fedalign.datasets.base import DatasetSplits, RawSplits, stratified_subset, to_splits
from fedalign.datasets.digits import load_digits_raw
from fedalign.datasets.stats import STATS
from fedalign.errors import UsageError

DATASET_NAMES = ("digits", "mnist", "fashion-mnist", "cifar10", "cifar100", "imagefolder")
_CHANNELS = {"mnist": 1, "fashion-mnist": 1, "cifar10": 3, "cifar100": 3}

__all__ = ["DATASET_NAMES", "STATS", "DatasetSplits", "RawSplits", "load_dataset", "load_raw", "stratified_subset"]


@functools.lru_cache(maxsize=4)
def _read_cached(kind: str, root: str, print_: str) -> RawSplits:
    """Pixels of one source; `print_` (file fingerprint) is in the key so edited files are re-read."""
    if kind == "digits":
        return load_digits_raw()
    if kind == "imagefolder":
        return imagefolder.load_imagefolder(Path(root), print_)
    from fedalign.datasets import cache, torchvision_sets  # imports torchvision (~1 s): only when needed

    return cache.cached(f"torchvision-{kind}", root, print_, lambda: torchvision_sets.read(kind, Path(root)))


def _missing_message(name: str, root: Path, download: bool) -> str:
    from fedalign.datasets import torchvision_sets

    hint = f"expected {torchvision_sets.layout_hint(name, root)} or {imagefolder.layout_hint(root)}"
    where = f"data directory {root} does not exist" if not root.exists() else f"no {name} data in {root}"
    if download:
        return f"{where} even after download; {hint}"
    return f"{where}; {hint}; download is off: pass --download (download=True in Python) to fetch it"


def load_raw(name: str, data_dir: str | os.PathLike | None = None, download: bool = False) -> tuple[RawSplits, str]:
    """Raw pixels of `name` and how they were found ("digits", "imagefolder" or a torchvision set)."""
    if name not in DATASET_NAMES:
        raise UsageError(f"unknown data set {name!r}; valid names: {', '.join(DATASET_NAMES)}")
    if name == "digits":
        return _read_cached("digits", "", ""), "digits"
    if not data_dir:
        extra = " (add --download to fetch it there)" if name != "imagefolder" else ""
        raise UsageError(f"data set {name!r} needs a data directory: pass --data-dir DIR{extra}")
    root = Path(data_dir).expanduser().resolve()
    if name == "imagefolder":
        if not imagefolder.is_imagefolder(root):
            what = "does not exist" if not root.exists() else "is not an image folder tree"
            raise UsageError(f"data directory {root} {what}; expected {imagefolder.layout_hint(root)}")
    elif imagefolder.is_imagefolder(root):
        pass  # cifar10 etc. stored as class folders: read as an image folder tree
    else:
        from fedalign.datasets import torchvision_sets

        root = torchvision_sets.resolve_root(name, root)
        files = torchvision_sets.expected_files(name, root)
        if download and not all(f.is_file() for f in files):
            torchvision_sets.download(name, root)
        if not all(f.is_file() for f in files):
            raise UsageError(_missing_message(name, root, download))
        from fedalign.datasets.cache import fingerprint

        return _read_cached(name, str(root), fingerprint(files)), name
    raw = _read_cached("imagefolder", str(root), imagefolder.fingerprint(root))
    if name != "imagefolder" and raw.train_x.shape[1] != _CHANNELS[name]:
        raise UsageError(
            f"{root} holds {raw.train_x.shape[1]}-channel images but {name} has {_CHANNELS[name]}; "
            "use --dataset imagefolder for other image trees"
        )
    return raw, "imagefolder"


def load_dataset(
    name: str,
    data_dir: str | os.PathLike | None = None,
    download: bool = False,
    train_size: int | None = None,
    test_size: int | None = None,
    seed: int = 0,
) -> DatasetSplits:
    """Normalized train/test tensors of data set `name` (see module doc); sizes None/0 = whole split.

    `train_size`/`test_size` pick a stratified subset chosen by `seed`.
    """
    raw, _ = load_raw(name, data_dir, download)
    mean, std = STATS.get(name, (None, None))  # None: computed on the train split
    return to_splits(name, raw, mean, std, train_size, test_size, int(seed))
