"""scikit-learn's 8x8 handwritten digits: the built-in data set that needs no files.

1,797 images with pixel values 0..16, split once into 1,437 train / 360 test
with a fixed, stratified `train_test_split`, so every run and every seed sees
the same test set (seeds only choose subsets, in `to_splits`).
"""

from __future__ import annotations

import numpy as np

from fedalign.datasets.base import RawSplits

TEST_SIZE = 360
SPLIT_RANDOM_STATE = 0


def load_digits_raw() -> RawSplits:
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    bunch = load_digits()
    x = bunch.images.astype(np.uint8)[:, None, :, :]  # N x 1 x 8 x 8, values 0..16
    y = bunch.target.astype(np.int64)
    train_x, test_x, train_y, test_y = train_test_split(
        x, y, test_size=TEST_SIZE, stratify=y, random_state=SPLIT_RANDOM_STATE
    )
    return RawSplits(
        train_x=train_x,
        train_y=train_y,
        test_x=test_x,
        test_y=test_y,
        classes=[str(c) for c in bunch.target_names],
        scale=16.0,
        source="sklearn.datasets.load_digits",
    )
