"""``python -m mmreason.data`` as a function (``prepare_tables``): H&M or Amazon Fashion tables.
"""
from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path
from typing import Literal

from mmreason import paths
from mmreason.datasets import amazon
from mmreason.datasets.hm import prepare
from mmreason.io import check_ranges


def print_summary(info: dict, out: Path) -> None:
    print(f"[data] wrote {out}")
    for k, v in info.items():
        if isinstance(v, float):
            v = f"{v:.3f}"
        print(f"[data] {k:>24}: {v}")


@dataclass
class PrepareConfig:
    """Prepare canonical tables from the raw H&M sample (or Amazon Fashion): ``python -m mmreason.data``.

    Args:
        dataset: which raw data
        hm_dir: raw H&M folder (default $MMREASON_HM_DIR or ../shared/data/hm)
        amazon_dir: raw Amazon Fashion folder
        out: output folder (default artifacts/data/hm-<key of inputs and settings>, linked from artifacts/data/hm)
        on_error: skip-and-report bad rows/photos (default) or stop at the first one
        n_behaviour: earlier purchases listed in the behaviour segment
        seed: seed of the splits
        unseen_test_frac: share of product codes held out as test
        unseen_val_frac: share of product codes held out as val
        limit_users: keep only the first N customers (a quick slice; 0: all)
        workers: threads decoding photos
        force: rebuild even if the inputs are unchanged
    """
    dataset: Literal["hm", "amazon"] = "hm"
    hm_dir: str | None = None
    amazon_dir: str | None = None
    out: str | None = None
    on_error: Literal["skip", "fail"] = "skip"
    n_behaviour: int = 5
    seed: int = 0
    unseen_test_frac: float = 0.10
    unseen_val_frac: float = 0.05
    limit_users: int = 0
    workers: int = 4
    force: bool = False

    def __post_init__(self):
        check_ranges(self, n_behaviour=">=0", seed=">=0", unseen_test_frac="[0,1)", unseen_val_frac="[0,1)",
                         limit_users=">=0", workers=">=1")
        if self.unseen_test_frac + self.unseen_val_frac >= 1:
            raise ValueError(f"--unseen-test-frac {self.unseen_test_frac} + --unseen-val-frac {self.unseen_val_frac}: "
                             "below 1, to leave product codes to train on")


def prepare_tables(config: PrepareConfig | None = None) -> Path:
    """``python -m mmreason.data`` as a function: the folder of the prepared tables; ``DataError`` on bad input."""
    c = config or PrepareConfig()
    if c.dataset == "amazon":
        info, out = amazon.prepare(replace(c, amazon_dir=c.amazon_dir or str(paths.amazon_dir()),
                                           out=c.out or str(paths.artifacts_dir() / "data" / "amazon")))
    else:
        info, out = prepare(replace(c, hm_dir=c.hm_dir or str(paths.hm_dir())))
    print_summary(info, out)
    return out
