"""CLIP photo encoders, built and loaded through open_clip.

The command; the library is ``mmreason.features.clip``, whose docstring says what it does and why.
"""
from __future__ import annotations

import sys
from dataclasses import dataclass, field, replace
from pathlib import Path

import pandas as pd

from mmreason import cli, paths
from mmreason.features.clip import DEFAULT_MODEL
from mmreason.features.cliptrain import ClipTrainConfig, ensure_domain_clip


@dataclass
class ClipOptions:
    """Train the domain CLIP on the prepared items' photos: ``python -m mmreason.clip``.

    Args:
        items: the prepared items table
        clip_model: architecture JSON name (mmreason/model_configs)
        out: default: artifacts/clip/<clip-model>-<key>
    """
    items: Path = field(default_factory=lambda: paths.artifacts_dir() / "data" / "hm" / "items.parquet")
    clip_model: str = DEFAULT_MODEL
    out: Path | None = None


def get_parser() -> cli.ArgumentParser:
    return cli.parser(ClipOptions, ClipTrainConfig, skip={"model"}, prog="python -m mmreason.clip",
                      description=ClipOptions.__doc__.split("\n")[0])


def main(argv=None):
    opts, train = get_parser().parse(argv)
    if not opts.items.exists():
        print(f"error: missing {opts.items}: run `python -m mmreason.data` first", file=sys.stderr)
        return 2
    return ensure_domain_clip(pd.read_parquet(opts.items), replace(train, model=opts.clip_model), opts.out,
                              retrain=True)


if __name__ == "__main__":
    sys.exit(main())
