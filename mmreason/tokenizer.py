"""GPT-2 byte-level BPE tokenizer in Hugging Face format, plus mmreason's special tokens.

The command; the library is ``mmreason.features.tokenizer``, whose docstring says what it does and why.
"""
from __future__ import annotations

import argparse
from pathlib import Path

import pandas as pd

from mmreason import paths
from mmreason.features import tokenizer as tokenizer_lib
from mmreason.features.tokenizer import (
    CATALOGUE_TEXT_COLUMNS,
    DEFAULT_VOCAB_SIZE,
    EXAMPLE_TEXT_COLUMNS,
    build_or_load,
    build_or_load_trained,
    held_out_product_codes,
    training_texts,
)


def main(argv=None):
    p = argparse.ArgumentParser(description=tokenizer_lib.__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    data = paths.artifacts_dir() / "data" / "hm"
    p.add_argument("--out", type=Path, default=None, help="default: artifacts/tokenizer/bpe-<vocab>-<key of texts> (or gpt2)")
    p.add_argument("--vocab-size", type=int, default=DEFAULT_VOCAB_SIZE)
    p.add_argument("--pretrained", default=None, help="option A: hub name or local dir of a GPT-2 tokenizer")
    p.add_argument("--items", type=Path, default=data / "items.parquet")
    p.add_argument("--examples", type=Path, default=data / "examples.parquet")
    p.add_argument("--catalogue", type=Path, default=paths.hm_dir() / "catalogue.parquet")
    p.add_argument("--force", action="store_true", help="rebuild even if the fingerprint matches")
    args = p.parse_args(argv)

    texts = None
    if args.pretrained is None:
        for f in (args.items, args.examples):
            if not f.exists():
                raise SystemExit(f"missing {f}: run `python -m mmreason.data` first")
        items = pd.read_parquet(args.items, columns=["product_code", "split_unseen"])
        examples = pd.read_parquet(args.examples, columns=EXAMPLE_TEXT_COLUMNS + ["split_temporal", "split_unseen"])
        catalogue = pd.read_parquet(args.catalogue, columns=["product_code"] + CATALOGUE_TEXT_COLUMNS)
        texts = training_texts(items, examples, catalogue)
        print(f"tokenizer: {len(texts):,} distinct training texts "
              f"({len(held_out_product_codes(items)):,} held-out product codes excluded)")
    if args.out is None and args.pretrained is None:  # the default: our BPE in its keyed folder
        tokenizer, _ = build_or_load_trained(texts, args.vocab_size, force=args.force)
    else:
        out = args.out or paths.artifacts_dir() / "tokenizer" / "gpt2"
        tokenizer = build_or_load(out, texts, args.vocab_size, args.pretrained, force=args.force)
    sample = "Skinny jeans in washed black denim with a high waist."
    ids = tokenizer.encode(sample, add_special_tokens=False)
    print(f"tokenizer: {len(tokenizer)} tokens; {sample!r} -> {len(ids)} tokens "
          f"{tokenizer.convert_ids_to_tokens(ids)[:12]}")
    return tokenizer


if __name__ == "__main__":
    main()
