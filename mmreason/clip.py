"""CLIP photo encoders, built and loaded through open_clip.

The command; the library is ``mmreason.features.clip``, whose docstring says what it does and why.
"""
from __future__ import annotations

import argparse
from pathlib import Path

import pandas as pd

from mmreason import paths
from mmreason.features import clip as clip_lib
from mmreason.features.clip import DEFAULT_MODEL
from mmreason.features.cliptrain import add_train_args, ensure_domain_clip, train_config_from_args


def main(argv=None):
    p = argparse.ArgumentParser(description=clip_lib.__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
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
