"""Photo embeddings for every article, cached in one file per CLIP, plus evidence that they mean something.

The command; the library is ``mmreason.features.embed``, whose docstring says what it does and why.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import pandas as pd
import torch

from mmreason import paths
from mmreason.features import embed as embed_lib
from mmreason.features.clip import DEFAULT_MODEL, META_NAME, load_clip
from mmreason.features.cliptrain import add_train_args, ensure_domain_clip, train_config_from_args
from mmreason.features.embed import evaluate, format_evaluation, load_embeddings, model_id
from mmreason.io import atomic_write_json


def main(argv=None):
    p = argparse.ArgumentParser(description=embed_lib.__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--items", type=Path, default=paths.artifacts_dir() / "data" / "hm" / "items.parquet")
    p.add_argument("--clip-model", default=DEFAULT_MODEL, help="open_clip architecture name (ours or built-in)")
    p.add_argument("--pretrained", default=None,
                   help="option A: open_clip pretrained tag or checkpoint path; default trains/uses the domain CLIP")
    p.add_argument("--clip-dir", type=Path, default=None, help="domain CLIP folder (default artifacts/clip/<model>-<key>)")
    p.add_argument("--out", type=Path, default=None, help="cache file (default artifacts/embeddings/<model-id>-<key>.pt)")
    p.add_argument("--batch-size-embed", type=int, default=256)
    p.add_argument("--rebuild", action="store_true", help="recompute the cache even if it is fresh")
    p.add_argument("--retrain-clip", action="store_true", help="retrain the domain CLIP even if it exists")
    p.add_argument("--no-eval", dest="eval", action="store_false")
    add_train_args(p)
    args = p.parse_args(argv)
    if not args.items.exists():
        raise SystemExit(f"missing {args.items}: run `python -m mmreason.data` first")
    items = pd.read_parquet(args.items)
    torch.set_num_threads(args.threads)

    desc_words = args.desc_words
    if args.pretrained is None:
        pretrained = ensure_domain_clip(items, train_config_from_args(args, args.clip_model), args.clip_dir,
                                        retrain=args.retrain_clip)
        desc_words = json.loads((pretrained.parent / META_NAME).read_text())["train_config"]["desc_words"]
    else:
        pretrained = args.pretrained
    mid = model_id(args.clip_model, pretrained)
    clip = load_clip(args.clip_model, pretrained)
    cache = load_embeddings(items, args.clip_model, pretrained, args.out, batch_size=args.batch_size_embed,
                            workers=args.workers, rebuild=args.rebuild, clip=clip)
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
    main()
