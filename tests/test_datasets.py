"""Loaders on small files written in the real on-disk formats, plus the shared CIFAR-10 copy.

Each fixture writes what torchvision (or ImageFolder) reads: MNIST idx files
with their big-endian headers, CIFAR pickle batches, PNG class folders. The
loaded tensors are checked pixel for pixel against what was written.
"""

import json
import os
import pickle
import struct
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import fedalign.datasets as fd
from fedalign.datasets import DATASET_NAMES, DatasetSplits, load_dataset
from fedalign.datasets.stats import STATS
from fedalign.errors import UsageError

torch.set_num_threads(1)

SHARED_CIFAR10 = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "cifar10"


@pytest.fixture(autouse=True)
def _private_cache(tmp_path_factory, monkeypatch):
    monkeypatch.setenv("FEDALIGN_CACHE", str(tmp_path_factory.mktemp("cache")))


def _pixels(splits: DatasetSplits, part: str = "train") -> np.ndarray:
    """Undo the normalization: back to uint8 pixels."""
    x = getattr(splits, part).tensors[0]
    mean = torch.tensor(splits.mean).view(1, -1, 1, 1)
    std = torch.tensor(splits.std).view(1, -1, 1, 1)
    scale = 16.0 if splits.name == "digits" else 255.0
    return ((x * std + mean) * scale).round().to(torch.int64).numpy()


def _mnist_like(rng, n, p_on):
    """Mostly-black images with a fraction p_on of white pixels (mean close to MNIST's)."""
    return (rng.random((n, 28, 28)) < p_on).astype(np.uint8) * 255


def _write_idx(root: Path, folder: str, rng, p_on: float):
    raw = root / folder / "raw"
    raw.mkdir(parents=True)
    data = {}
    for prefix, n in (("train", 60), ("t10k", 20)):
        x = _mnist_like(rng, n, p_on)
        y = np.arange(n, dtype=np.uint8) % 10
        (raw / f"{prefix}-images-idx3-ubyte").write_bytes(struct.pack(">IIII", 0x0803, n, 28, 28) + x.tobytes())
        (raw / f"{prefix}-labels-idx1-ubyte").write_bytes(struct.pack(">II", 0x0801, n) + y.tobytes())
        data[prefix] = (x, y)
    return data


def _write_cifar(root: Path, hundred: bool, rng):
    folder = root / ("cifar-100-python" if hundred else "cifar-10-batches-py")
    folder.mkdir(parents=True)
    num_classes = 100 if hundred else 10
    names = [f"class{i:02d}" for i in range(num_classes)]
    batches = [("train", 200)] if hundred else [(f"data_batch_{i}", 20) for i in range(1, 6)]
    batches.append(("test", 100) if hundred else ("test_batch", 20))
    written = {}
    for fname, n in batches:
        mean, std = (np.array(v).reshape(1, 3, 1, 1) * 255 for v in STATS["cifar100" if hundred else "cifar10"])
        x = np.clip(rng.normal(mean, std, (n, 3, 32, 32)).round(), 0, 255).astype(np.uint8)  # CIFAR-like stats
        y = [int(v) for v in rng.integers(0, num_classes, n)]
        entry = {"batch_label": fname, "data": x.reshape(n, 3072), "filenames": [f"{i}.png" for i in range(n)]}
        if hundred:
            entry.update(fine_labels=y, coarse_labels=[v // 5 for v in y])
        else:
            entry["labels"] = y
        (folder / fname).write_bytes(pickle.dumps(entry))
        written[fname] = (x, np.array(y))
    meta = {"fine_label_names": names, "coarse_label_names": [f"c{i}" for i in range(20)]} if hundred else {
        "label_names": names, "num_cases_per_batch": 20, "num_vis": 3072}
    (folder / ("meta" if hundred else "batches.meta")).write_bytes(pickle.dumps(meta))
    return written, names


def _write_imagefolder(root: Path, rng, classes=("cat", "dog", "eel"), per_class=(6, 4), mode="RGB", size=8):
    written = {}
    for split, n in zip(("train", "test"), per_class):
        for label, name in enumerate(classes):
            (root / split / name).mkdir(parents=True)
            for i in range(n):
                shape = (size, size, 3) if mode == "RGB" else (size, size)
                arr = rng.integers(0, 256, shape, dtype=np.uint8)
                Image.fromarray(arr, mode=mode).save(root / split / name / f"{i:03d}.png")
                written.setdefault(split, []).append((label, arr))
    return written


def test_names():
    assert DATASET_NAMES == ("digits", "mnist", "fashion-mnist", "cifar10", "cifar100", "imagefolder")


def test_digits_builtin_split():
    s = load_dataset("digits")
    assert (s.name, s.num_classes, s.input_shape) == ("digits", 10, (1, 8, 8))
    assert len(s.train) == 1437 and len(s.test) == 360
    assert s.classes == [str(i) for i in range(10)]
    x, y = s.train.tensors
    assert x.dtype == torch.float32 and y.dtype == torch.int64 and x.shape == (1437, 1, 8, 8)
    assert abs(float(x.mean())) < 1e-4 and abs(float(x.std()) - 1) < 1e-3
    np.testing.assert_array_equal(s.train_labels, y.numpy())
    assert s.train_labels.dtype == np.int64
    assert np.bincount(s.test_labels).min() >= 35  # stratified: 35-37 per class
    # the test split does not depend on the seed; pixels are 0..16 integers
    other = load_dataset("digits", seed=5)
    assert torch.equal(other.test.tensors[0], s.test.tensors[0])
    assert _pixels(s).min() == 0 and _pixels(s).max() == 16


def test_stratified_seeded_subsets():
    a = load_dataset("digits", train_size=200, test_size=50, seed=1)
    b = load_dataset("digits", train_size=200, test_size=50, seed=1)
    c = load_dataset("digits", train_size=200, test_size=50, seed=2)
    assert len(a.train) == 200 and len(a.test) == 50
    assert np.bincount(a.train_labels).tolist() == [20] * 10
    assert np.bincount(a.test_labels).tolist() == [5] * 10
    assert torch.equal(a.train.tensors[0], b.train.tensors[0])
    assert not torch.equal(a.train.tensors[0], c.train.tensors[0])
    assert a.mean == load_dataset("digits").mean  # statistics of the full train split, not the subset
    tiny = load_dataset("digits", train_size=3, seed=0)  # fewer samples than classes still works
    assert len(tiny.train) == 3 and len(set(tiny.train_labels)) == 3


@pytest.mark.parametrize("name, folder, p_on", [("mnist", "MNIST", 0.13), ("fashion-mnist", "FashionMNIST", 0.29)])
def test_mnist_idx_files(tmp_path, name, folder, p_on):
    data = _write_idx(tmp_path, folder, np.random.default_rng(0), p_on)
    s = load_dataset(name, data_dir=tmp_path)
    assert (s.num_classes, s.input_shape, len(s.train), len(s.test)) == (10, (1, 28, 28), 60, 20)
    assert np.bincount(s.train_labels).tolist() == [6] * 10
    np.testing.assert_array_equal(_pixels(s)[:, 0], data["train"][0])
    np.testing.assert_array_equal(_pixels(s, "test")[:, 0], data["t10k"][0])
    assert s.mean == STATS[name][0] and s.std == STATS[name][1]
    assert abs(float(s.train.tensors[0].mean())) < 0.15  # MNIST-like pixel statistics -> about zero mean
    if name == "fashion-mnist":
        assert s.classes[0] == "T-shirt/top"
    # the data set's own folder works as --data-dir too
    assert len(load_dataset(name, data_dir=tmp_path / folder).train) == 60


def test_cifar10_pickle_batches(tmp_path):
    written, names = _write_cifar(tmp_path, hundred=False, rng=np.random.default_rng(1))
    s = load_dataset("cifar10", data_dir=tmp_path)
    assert (s.num_classes, s.input_shape, len(s.train), len(s.test)) == (10, (3, 32, 32), 100, 20)
    assert s.classes == names
    train_x = np.concatenate([written[f"data_batch_{i}"][0] for i in range(1, 6)])
    train_y = np.concatenate([written[f"data_batch_{i}"][1] for i in range(1, 6)])
    np.testing.assert_array_equal(_pixels(s), train_x)
    np.testing.assert_array_equal(s.train_labels, train_y)
    np.testing.assert_array_equal(_pixels(s, "test"), written["test_batch"][0])
    x = s.train.tensors[0]
    assert float(x.mean((0, 2, 3)).abs().max()) < 0.1  # CIFAR-like pixels -> about zero mean, unit std
    assert 0.85 < float(x.std()) < 1.1


def test_cifar100_pickle_batches(tmp_path):
    written, names = _write_cifar(tmp_path, hundred=True, rng=np.random.default_rng(2))
    s = load_dataset("cifar100", data_dir=tmp_path, train_size=100, seed=0)
    assert (s.num_classes, s.input_shape, len(s.train), len(s.test)) == (100, (3, 32, 32), 100, 100)
    assert s.classes == names
    full = load_dataset("cifar100", data_dir=tmp_path)
    np.testing.assert_array_equal(full.train_labels, written["train"][1])
    np.testing.assert_array_equal(_pixels(full), written["train"][0])
    # stratified subset keeps class proportions within one sample
    counts_full, counts_sub = np.bincount(full.train_labels, minlength=100), np.bincount(s.train_labels, minlength=100)
    assert np.abs(counts_sub - counts_full / 2).max() <= 1


def test_imagefolder_png_tree_and_disk_cache(tmp_path, monkeypatch):
    root = tmp_path / "tree"
    written = _write_imagefolder(root, np.random.default_rng(3))
    s = load_dataset("imagefolder", data_dir=root)
    assert (s.num_classes, s.classes, s.input_shape, len(s.train), len(s.test)) == (3, ["cat", "dog", "eel"], (3, 8, 8), 18, 12)
    assert np.bincount(s.train_labels).tolist() == [6, 6, 6]
    np.testing.assert_array_equal(_pixels(s), np.stack([a for _, a in written["train"]]).transpose(0, 3, 1, 2))
    x = s.train.tensors[0]  # statistics computed on this train split -> exactly standardized
    assert float(x.mean((0, 2, 3)).abs().max()) < 1e-4 and float((x.std((0, 2, 3)) - 1).abs().max()) < 0.01

    cache_dir = fd.cache.cache_dir()
    assert len(list(cache_dir.glob("imagefolder-*"))) == 1
    # the splits index into a read-only memory map of the cache entry, shared by all processes
    assert isinstance(s.train.pixels, np.memmap) and not s.train.pixels.flags.writeable
    # a fresh process would read the entry instead of decoding: simulate by forbidding decoding
    fd._read_cached.cache_clear()
    monkeypatch.setattr(fd.imagefolder, "decode_imagefolder", lambda root: pytest.fail("decoded again"))
    again = load_dataset("imagefolder", data_dir=root)
    assert torch.equal(again.train.tensors[0], x)
    # a changed tree is decoded again (new fingerprint -> new cache entry)
    monkeypatch.undo()
    monkeypatch.setenv("FEDALIGN_CACHE", str(cache_dir))
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(root / "train" / "dog" / "999.png")
    assert len(load_dataset("imagefolder", data_dir=root).train) == 19
    assert len(list(cache_dir.glob("imagefolder-*"))) == 2


def test_grayscale_tree_is_one_channel_and_cifar_name_uses_known_stats(tmp_path):
    gray = tmp_path / "gray"
    _write_imagefolder(gray, np.random.default_rng(4), classes=("a", "b"), mode="L", size=28)
    s = load_dataset("mnist", data_dir=gray)  # mnist stored as class folders
    assert s.input_shape == (1, 28, 28) and s.mean == STATS["mnist"][0]
    rgb = tmp_path / "rgb"
    _write_imagefolder(rgb, np.random.default_rng(5), size=32)
    c = load_dataset("cifar10", data_dir=rgb)
    assert c.input_shape == (3, 32, 32) and c.mean == STATS["cifar10"][0] and c.classes == ["cat", "dog", "eel"]
    with pytest.raises(UsageError, match="3-channel images but mnist has 1"):
        load_dataset("mnist", data_dir=rgb)


@pytest.mark.parametrize(
    "name, make, fragment",
    [
        ("svhn", None, "unknown data set 'svhn'; valid names: digits, mnist"),
        ("cifar10", None, "needs a data directory: pass --data-dir"),
        ("cifar10", "missing", r"does not exist; expected .*cifar-10-batches-py/ .* or .*/train/<class>/.*pass --download"),
        ("cifar10", "empty", r"no cifar10 data in .*; expected"),
        ("mnist", "empty", r"MNIST/raw/\{train-images-idx3-ubyte"),
        ("imagefolder", "empty", r"not an image folder tree; expected .*/train/<class>/<image>"),
        ("imagefolder", "no-images", r"Found no valid file"),
        ("imagefolder", "mixed-sizes", r"resize all images to one size"),
        ("imagefolder", "broken-image", r"cannot decode image"),
        ("cifar10", "broken-pickle", r"cannot read cifar10"),
        ("digits", "train-size", r"train_size=5000 is out of range; the split has 1437 samples"),
    ],
)
def test_bad_input_raises_usage_error(tmp_path, name, make, fragment):
    data_dir = None if make is None else tmp_path / "data"
    kwargs = {}
    if make in ("empty", "no-images", "mixed-sizes", "broken-image"):
        data_dir.mkdir()
    if make == "no-images":
        (data_dir / "train" / "a").mkdir(parents=True)
        (data_dir / "test" / "a").mkdir(parents=True)
    if make in ("mixed-sizes", "broken-image"):
        _write_imagefolder(data_dir, np.random.default_rng(0), classes=("a",), per_class=(2, 1))
        if make == "mixed-sizes":
            Image.fromarray(np.zeros((9, 9, 3), np.uint8)).save(data_dir / "train" / "a" / "zz.png")
        else:
            (data_dir / "train" / "a" / "zz.png").write_bytes(b"not a png")
    if make == "broken-pickle":
        _write_cifar(data_dir, hundred=False, rng=np.random.default_rng(0))
        (data_dir / "cifar-10-batches-py" / "data_batch_3").write_bytes(b"\x80\x04garbage")
    if make == "train-size":
        kwargs["train_size"] = 5000
    with pytest.raises(UsageError, match=fragment) as info:
        load_dataset(name, data_dir=data_dir, **kwargs)
    assert "\n" not in str(info.value)


@pytest.mark.slow
@pytest.mark.skipif(not SHARED_CIFAR10.is_dir(), reason="shared CIFAR-10 copy not present")
def test_shared_cifar10_imagefolder(monkeypatch):
    """The real copy: 50,000/10,000 JPEGs. First load decodes (~15 s), later ones read the cache (~1.5 s)."""
    monkeypatch.delenv("FEDALIGN_CACHE")  # the user's cache, so only the very first run pays for decoding
    fd._read_cached.cache_clear()
    start = time.perf_counter()
    s = load_dataset("cifar10", data_dir=SHARED_CIFAR10)
    elapsed = time.perf_counter() - start
    assert (s.num_classes, s.input_shape, len(s.train), len(s.test)) == (10, (3, 32, 32), 50_000, 10_000)
    assert s.classes[:2] == ["airplane", "automobile"] and s.classes[-1] == "truck"
    assert np.bincount(s.train_labels).tolist() == [5000] * 10
    assert np.bincount(s.test_labels).tolist() == [1000] * 10
    x = s.train.tensors[0]
    assert float(x.mean((0, 2, 3)).abs().max()) < 0.01 and float((x.std((0, 2, 3)) - 1).abs().max()) < 0.02
    print(f"shared CIFAR-10 load: {elapsed:.2f}s")
    del s, x
    fd._read_cached.cache_clear()


def test_per_batch_normalization_is_bit_identical_to_whole_array(tmp_path):
    """Loader batches (through Subset, shuffled) equal normalizing all pixels at once, bit for bit."""
    from torch.utils.data import DataLoader, Subset

    from fedalign.datasets.base import normalize

    root = tmp_path / "tree"
    _write_imagefolder(root, np.random.default_rng(7), size=8)
    s = load_dataset("cifar10", data_dir=root, train_size=12, seed=3)
    raw, _ = fd.load_raw("cifar10", root)
    whole = normalize(np.array(raw.train_x), raw.scale, s.mean, s.std)[torch.from_numpy(s.train.indices)]
    picked = [5, 0, 11, 3, 7]
    xs, ys = zip(*DataLoader(Subset(s.train, picked), batch_size=2))
    assert torch.equal(torch.cat(xs), whole[picked])
    assert torch.equal(torch.cat(ys), torch.from_numpy(s.train_labels[picked]))
    assert torch.equal(s.train[4][0], whole[4])


def test_a_new_empty_class_folder_changes_the_imagefolder_fingerprint(tmp_path):
    """ImageFolder counts an empty class folder as a class, so the cache key must see it."""
    root = tmp_path / "tree"
    _write_imagefolder(root, np.random.default_rng(7))
    before = fd.imagefolder.fingerprint(root)
    assert fd.imagefolder.fingerprint(root) == before
    (root / "train" / "fox").mkdir()
    assert fd.imagefolder.fingerprint(root) != before


def test_cached_pixels_and_partitions_load_without_torchvision_or_flwr_datasets(tmp_path):
    """A Ray actor that finds both caches warm never imports torchvision or flwr-datasets.

    Those imports cost each actor ~90 MB and ~120 MB of private memory
    (docs/sweep.md, memory); the first process fills the caches, a second,
    fresh one must get identical pixels and partitions from the files alone.
    """
    root = tmp_path / "tree"
    _write_imagefolder(root, np.random.default_rng(8))
    script = (
        "import sys, json, numpy as np\n"
        "from fedalign.config import resolve\n"
        "from fedalign.run_setup import splits_for, partitions_for\n"
        f"cfg = resolve({{'dataset': 'imagefolder', 'data-dir': {str(root)!r}, 'partitioner': 'dirichlet',"
        " 'alpha': 0.5, 'min-partition-size': 1})\n"
        "parts = partitions_for(cfg, 3)\n"
        "pixels = splits_for(cfg).train.pixels\n"
        "print(json.dumps({'parts': [p.tolist() for p in parts], 'sum': int(np.asarray(pixels).sum()),"
        " 'torchvision': 'torchvision' in sys.modules, 'flwr_datasets': 'flwr_datasets' in sys.modules}))\n"
    )
    env = {**os.environ, "FEDALIGN_CACHE": str(tmp_path / "cache")}
    first, second = (
        json.loads(subprocess.run([sys.executable, "-c", script], env=env, check=True, capture_output=True,
                                  text=True).stdout.strip().splitlines()[-1])  # fmt: skip
        for _ in range(2)
    )
    assert first["torchvision"] and first["flwr_datasets"]  # the first process decoded and partitioned
    assert not second["torchvision"] and not second["flwr_datasets"]
    assert second["parts"] == first["parts"] and second["sum"] == first["sum"]
    assert sorted(i for p in second["parts"] for i in p) == list(range(18))  # every sample, once
