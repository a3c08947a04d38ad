"""GPT-2 byte-level BPE tokenizer in Hugging Face format, plus mmreason's special tokens.

The command; the library is ``mmreason.features.tokenizer``, whose docstring says what it does and why.
"""
from __future__ import annotations

import sys
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from mmreason import cli, paths
from mmreason.features.tokenizer import (
    CATALOGUE_TEXT_COLUMNS,
    DEFAULT_VOCAB_SIZE,
    EXAMPLE_TEXT_COLUMNS,
    MIN_VOCAB,
    build_or_load,
    build_or_load_trained,
    held_out_product_codes,
    training_texts,
)


@dataclass
class TokenizerOptions:
    """Train our byte-level BPE on the prepared texts (or save a real GPT-2 tokenizer): ``python -m mmreason.tokenizer``.

    Args:
        out: default: artifacts/tokenizer/bpe-<vocab>-<key of texts> (or gpt2)
        vocab_size: BPE vocabulary size
        pretrained: option A: hub name or local dir of a GPT-2 tokenizer
        items: the prepared items table
        examples: the prepared examples table
        catalogue: the raw catalogue (its texts of products without purchases)
        force: rebuild even if the fingerprint matches
    """
    out: Path | None = None
    vocab_size: int = DEFAULT_VOCAB_SIZE
    pretrained: str | None = None
    items: Path = field(default_factory=lambda: paths.artifacts_dir() / "data" / "hm" / "items.parquet")
    examples: Path = field(default_factory=lambda: paths.artifacts_dir() / "data" / "hm" / "examples.parquet")
    catalogue: Path = field(default_factory=lambda: paths.hm_dir() / "catalogue.parquet")
    force: bool = False

    def __post_init__(self):  # loading checks a tokenizer has as many (the offline trap of an empty one)
        if self.vocab_size < MIN_VOCAB:
            raise ValueError(f"--vocab-size {self.vocab_size}: at least {MIN_VOCAB}")


def get_parser() -> cli.ArgumentParser:
    return cli.parser(TokenizerOptions, prog="python -m mmreason.tokenizer",
                      description=TokenizerOptions.__doc__.split("\n")[0])


def main(argv=None):
    args, = get_parser().parse(argv)

    texts = None
    if args.pretrained is None:
        for f in (args.items, args.examples):
            if not f.exists():
                print(f"error: missing {f}: run `python -m mmreason.data` first", file=sys.stderr)
                return 2
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
    sys.exit(main())
