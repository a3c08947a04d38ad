"""CLIP photo encoders, built and loaded through open_clip.

Option A: any open_clip architecture with a ``pretrained`` tag or a local checkpoint file
(``load_clip("ViT-B-32", pretrained="/path/open_clip_pytorch_model.bin")``).
Option B (default): a tiny domain CLIP described by ``mmreason/model_configs/<name>.json`` (registered
with ``open_clip.add_model_config``), trained here contrastively (``open_clip.loss.ClipLoss``) on
(photo, product text) pairs of training products only; validation products are whole held-out
product codes. The checkpoint is a plain open_clip state_dict.

Photos are 2:3 portraits: every encoder pads them to a square with white (H&M's studio background is
light) before resizing, i.e. open_clip's ``resize_mode="longest"`` with ``fill_color=255``.

    python -m mmreason.clip                  # train artifacts/clip/mmr-vit-tiny-<key>/ (~6 min on 2 cores)
    python -m mmreason.clip --epochs 1 --max-train 512
"""
from __future__ import annotations

import argparse
from pathlib import Path

import pandas as pd

from mmreason import paths
from mmreason.features.clip import DEFAULT_MODEL
from mmreason.features.cliptrain import add_train_args, ensure_domain_clip, train_config_from_args


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--items", type=Path, default=paths.artifacts_dir() / "data" / "hm" / "items.parquet")
    p.add_argument("--clip-model", default=DEFAULT_MODEL, help="architecture JSON name (mmreason/model_configs)")
    p.add_argument("--out", type=Path, default=None, help="default: artifacts/clip/<clip-model>-<key>")
    add_train_args(p)
    args = p.parse_args(argv)
    if not args.items.exists():
        raise SystemExit(f"missing {args.items}: run `python -m mmreason.data` first")
    return ensure_domain_clip(pd.read_parquet(args.items), train_config_from_args(args, args.clip_model), args.out,
                              retrain=True)


if __name__ == "__main__":
    main()
