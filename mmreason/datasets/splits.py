"""The two test protocols, shared by every dataset (H&M in ``data``, Amazon in ``amazon``).

    unseen products  whole product codes (every colour of a product) go to train / val / test;
    temporal         per user, the last purchase day is test, the one before val, the rest train.
"""
from __future__ import annotations

import numpy as np


def unseen_product_split(product_codes, seed: int, test_frac: float, val_frac: float) -> dict[int, str]:
    """Whole product codes (all colour variants of a product) go to one of train / val / test."""
    codes = np.array(sorted(set(int(c) for c in product_codes)))
    order = np.random.default_rng(seed).permutation(len(codes))
    n_test, n_val = int(round(test_frac * len(codes))), int(round(val_frac * len(codes)))
    if len(codes) >= 3:  # a tiny catalogue still gets one held-out product in each
        n_test, n_val = max(n_test, int(test_frac > 0)), max(n_val, int(val_frac > 0))
    split = np.full(len(codes), "train", dtype=object)
    split[order[:n_test]] = "test"
    split[order[n_test:n_test + n_val]] = "val"
    return dict(zip(codes.tolist(), split.tolist()))


def temporal_split(days: list) -> dict:
    """Per user: last purchase day -> test, the one before -> val, the rest -> train.

    A user with two days gives train + test; with one day, train only (nothing to predict from).
    """
    days = sorted(days)
    split = {d: "train" for d in days}
    if len(days) >= 2:
        split[days[-1]] = "test"
    if len(days) >= 3:
        split[days[-2]] = "val"
    return split
