"""``python -m mmreason.data`` as a function (``prepare_tables``): H&M or Amazon Fashion tables.
"""
from __future__ import annotations

import argparse
from pathlib import Path

from mmreason import paths
from mmreason.datasets import amazon
from mmreason.datasets.hm import prepare


def print_summary(info: dict, out: Path) -> None:
    print(f"[data] wrote {out}")
    for k, v in info.items():
        if isinstance(v, float):
            v = f"{v:.3f}"
        print(f"[data] {k:>24}: {v}")


def get_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m mmreason.data",
                                description="Prepare canonical tables from the raw H&M sample: ``python -m mmreason.data``.")
    p.add_argument("--dataset", choices=["hm", "amazon"], default="hm")
    p.add_argument("--hm-dir", default=None, help="raw H&M folder (default $MMREASON_HM_DIR or ../shared/data/hm)")
    p.add_argument("--amazon-dir", default=None, help="raw Amazon Fashion folder")
    p.add_argument("--out", default=None,
                   help="output folder (default artifacts/data/hm-<key of inputs and settings>, linked from artifacts/data/hm)")
    p.add_argument("--on-error", choices=["skip", "fail"], default="skip",
                   help="skip-and-report bad rows/photos (default) or stop at the first one")
    p.add_argument("--n-behaviour", type=int, default=5, help="earlier purchases listed in the behaviour segment")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--unseen-test-frac", type=float, default=0.10, help="share of product codes held out as test")
    p.add_argument("--unseen-val-frac", type=float, default=0.05, help="share of product codes held out as val")
    p.add_argument("--limit-users", type=int, default=0, help="keep only the first N customers (a quick slice)")
    p.add_argument("--workers", type=int, default=4, help="threads decoding photos")
    p.add_argument("--force", action="store_true", help="rebuild even if the inputs are unchanged")
    return p


def prepare_tables(argv=None) -> Path:
    """``python -m mmreason.data`` as a function: the folder of the prepared tables; ``DataError`` on bad input."""
    args = get_parser().parse_args(argv)
    if args.dataset == "amazon":
        args.amazon_dir = args.amazon_dir or str(paths.amazon_dir())
        args.out = args.out or str(paths.artifacts_dir() / "data" / "amazon")
        info, out = amazon.prepare(args)
    else:
        args.hm_dir = args.hm_dir or str(paths.hm_dir())
        info, out = prepare(args)
    print_summary(info, out)
    return out
