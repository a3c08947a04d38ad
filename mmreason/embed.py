"""Photo embeddings for every article, cached in one file per CLIP, plus evidence that they mean something.

The command; the library is ``mmreason.features.embed``, whose docstring says what it does and why.
"""
from __future__ import annotations

import sys
import json
from dataclasses import dataclass, field, replace
from pathlib import Path

import pandas as pd
import torch

from mmreason import cli, paths
from mmreason.features.clip import DEFAULT_MODEL, META_NAME, load_clip
from mmreason.features.cliptrain import ClipTrainConfig, ensure_domain_clip
from mmreason.features.embed import evaluate, format_evaluation, load_embeddings, model_id
from mmreason.io import atomic_write_json, check_ranges


@dataclass
class EmbedOptions:
    """Photo embeddings for every article, cached, plus evidence that they mean something: ``python -m mmreason.embed``.

    Args:
        items: the prepared items table
        clip_model: open_clip architecture name (ours or built-in)
        pretrained: option A: open_clip pretrained tag or checkpoint path; default trains/uses the domain CLIP
        clip_dir: domain CLIP folder (default artifacts/clip/<model>-<key>)
        out: cache file (default artifacts/embeddings/<model-id>-<key>.pt)
        batch_size_embed: photos per forward pass
        rebuild: recompute the cache even if it is fresh
        retrain_clip: retrain the domain CLIP even if it exists
        eval: the retrieval / linear-probe evidence (--no-eval: only the cache)
    """
    items: Path = field(default_factory=lambda: paths.artifacts_dir() / "data" / "hm" / "items.parquet")
    clip_model: str = DEFAULT_MODEL
    pretrained: str | None = None
    clip_dir: Path | None = None
    out: Path | None = None
    batch_size_embed: int = 256
    rebuild: bool = False
    retrain_clip: bool = False
    eval: bool = True

    def __post_init__(self):
        check_ranges(self, batch_size_embed=">=1")


def get_parser() -> cli.ArgumentParser:
    return cli.parser(EmbedOptions, ClipTrainConfig, skip={"model"}, prog="python -m mmreason.embed",
                      description=EmbedOptions.__doc__.split("\n")[0])


def main(argv=None):
    args, train = get_parser().parse(argv)
    if not args.items.exists():
        print(f"error: missing {args.items}: run `python -m mmreason.data` first", file=sys.stderr)
        return 2
    items = pd.read_parquet(args.items)
    torch.set_num_threads(train.threads)

    desc_words = train.desc_words
    if args.pretrained is None:
        pretrained = ensure_domain_clip(items, replace(train, model=args.clip_model), args.clip_dir,
                                        retrain=args.retrain_clip)
        desc_words = json.loads((pretrained.parent / META_NAME).read_text())["train_config"]["desc_words"]
    else:
        pretrained = args.pretrained
    mid = model_id(args.clip_model, pretrained)
    clip = load_clip(args.clip_model, pretrained)
    cache = load_embeddings(items, args.clip_model, pretrained, args.out, batch_size=args.batch_size_embed,
                            workers=train.workers, rebuild=args.rebuild, clip=clip)
    if not args.eval:
        return cache
    model, _, tokenizer = clip
    path = Path(cache["path"])
    ev = {"model_id": mid, "cache": str(path), "meta": cache["meta"], **evaluate(model, tokenizer, cache, items, desc_words)}
    eval_path = path.with_suffix(".eval.json")
    atomic_write_json(eval_path, ev)
    for line in format_evaluation(ev):
        print(line)
    print(f"embed: wrote {eval_path}")
    return cache


if __name__ == "__main__":
    sys.exit(main())
