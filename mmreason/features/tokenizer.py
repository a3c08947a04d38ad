"""GPT-2 byte-level BPE tokenizer in Hugging Face format, plus mmreason's special tokens.

Two sources:
  A. a real GPT-2 tokenizer from a hub name or a local directory (``load_tokenizer("path/to/gpt2")``);
  B. (default) a byte-level BPE trained here on our own training text (``train_tokenizer``), so that no
     download is needed. The training text never contains a held-out product: see ``training_texts``.

    python -m mmreason.tokenizer                      # train (or reuse) artifacts/tokenizer/bpe-8000-<key>
    python -m mmreason.tokenizer --pretrained ~/gpt2  # option A: copy a real GPT-2 tokenizer + our tokens
"""
from __future__ import annotations

import hashlib
import json
import os
import time
from pathlib import Path
from typing import Iterable, Sequence

import pandas as pd

from mmreason import paths
from mmreason.io import atomic_dir
from mmreason.io import fingerprint as io_fingerprint

EOS = "<|endoftext|>"  # GPT-2's own eos; also our bos and pad (labels are masked with -100, not by pad id)
PHOTO = "<|photo|>"
USER = "<|user|>"
BEHAVIOUR = "<|behaviour|>"
PRODUCT = "<|product|>"
REASON = "<|reason|>"
SPECIAL_TOKENS = [EOS, PHOTO, USER, BEHAVIOUR, PRODUCT, REASON]
PROMPT_TOKENS = SPECIAL_TOKENS[1:]
RETRIEVED_SEPARATOR = " | "  # between the retrieved copies in the "retrieved" part (retrieval.neighbour_texts)

DEFAULT_VOCAB_SIZE = 8000
# the fewest tokens a loaded tokenizer may have (an offline hub can hand back an empty one without raising)
MIN_VOCAB = 1000
FINGERPRINT_FILE = "mmreason_tokenizer.json"
EXAMPLE_TEXT_COLUMNS = ["user_profile", "behaviour", "product", "reason"]
CATALOGUE_TEXT_COLUMNS = ["prod_name", "detail_desc"]


class TokenizerLoadError(RuntimeError):
    """A tokenizer could not be loaded, or loaded empty."""


def _wrap(tok):
    """A ``tokenizers.Tokenizer`` -> a Hugging Face fast tokenizer with our special tokens named."""
    from transformers import PreTrainedTokenizerFast

    return PreTrainedTokenizerFast(
        tokenizer_object=tok, eos_token=EOS, bos_token=EOS, pad_token=EOS,
        extra_special_tokens=PROMPT_TOKENS,  # no unk: byte-level BPE can spell any string
    )


def train_tokenizer(texts: Iterable[str], vocab_size: int = DEFAULT_VOCAB_SIZE, min_frequency: int = 2):
    """Train a GPT-2 style byte-level BPE (ByteLevel pre-tokenizer and decoder) on ``texts``."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)  # as GPT-2
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = processors.ByteLevel(trim_offsets=False)
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, min_frequency=min_frequency, special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False,
    )
    tok.train_from_iterator(texts, trainer)
    return _wrap(tok)


def check_tokenizer(tokenizer, source: str, min_vocab: int = MIN_VOCAB) -> None:
    """Raise one clear line when a tokenizer is empty (offline Hugging Face can return one silently)."""
    n = len(tokenizer)
    if n < min_vocab or not tokenizer.encode("hello", add_special_tokens=False):
        raise TokenizerLoadError(
            f"tokenizer from {source!r} is empty or broken (vocab {n} < {min_vocab}, or encode('hello') is empty); "
            "offline, pass a local directory holding tokenizer.json, or train one with `python -m mmreason.tokenizer`"
        )


def add_special_tokens(tokenizer):
    """Make sure eos/bos/pad are GPT-2's ``<|endoftext|>`` and our prompt markers exist (option A)."""
    vocab = tokenizer.get_vocab()
    missing = [t for t in PROMPT_TOKENS if t not in vocab]
    special = {"eos_token": EOS, "bos_token": EOS, "pad_token": EOS}
    if missing:
        special["extra_special_tokens"] = missing
    tokenizer.add_special_tokens(special, replace_extra_special_tokens=False)
    if tokenizer.unk_token == EOS:
        # GPT-2 names <|endoftext|> its unk too; byte-level BPE never emits unk, and an unk equal to eos
        # would make eos look unknown to the collator (mmreason.collate.token_id)
        tokenizer.unk_token = None
    return tokenizer


def load_tokenizer(name_or_dir: str | os.PathLike, min_vocab: int = MIN_VOCAB):
    """Option A (or a tokenizer saved by option B): a hub name or a local directory.

    Raises ``TokenizerLoadError`` (one line) if loading fails or yields an empty tokenizer.
    """
    from transformers import AutoTokenizer

    paths.offline()
    source = str(name_or_dir)
    try:
        tokenizer = AutoTokenizer.from_pretrained(source)
    except Exception as e:  # OSError offline, ValueError for a malformed directory, ...
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise TokenizerLoadError(f"could not load a tokenizer from {source!r}: {first}") from e
    check_tokenizer(tokenizer, source, min_vocab)
    return add_special_tokens(tokenizer)


# ----------------------------------------------------------------------------- training text

def held_out_product_codes(items: pd.DataFrame) -> set[int]:
    """Product codes that items.parquet keeps for validation/test (whole products are unseen)."""
    return set(items.loc[items["split_unseen"] != "train", "product_code"].astype("int64"))


def training_texts(items: pd.DataFrame, examples: pd.DataFrame | None = None,
                   catalogue: pd.DataFrame | None = None) -> list[str]:
    """The text option B trains on, deduplicated, in a fixed order.

    - examples: user_profile/behaviour/product/reason of temporal-train rows about a non-held-out article;
    - catalogue: prod_name and detail_desc of every product code that items.parquet does not hold out.
    """
    held_out = held_out_product_codes(items)
    texts: list[str] = []
    if examples is not None:
        keep = examples["split_temporal"].eq("train") & examples["split_unseen"].eq("train")
        for col in EXAMPLE_TEXT_COLUMNS:
            texts.extend(examples.loc[keep, col].dropna().astype(str))
    if catalogue is not None:
        cat = catalogue.loc[~catalogue["product_code"].astype("int64").isin(held_out)]
        for col in CATALOGUE_TEXT_COLUMNS:
            texts.extend(cat[col].dropna().astype(str))
    return [t for t in dict.fromkeys(texts) if t.strip()]


def fingerprint(texts: Sequence[str], vocab_size: int) -> dict:
    h = hashlib.sha256()
    for t in texts:
        h.update(t.encode("utf-8"))
        h.update(b"\0")
    return {"vocab_size": int(vocab_size), "n_texts": len(texts), "text_sha256": h.hexdigest(),
            "special_tokens": SPECIAL_TOKENS}


def trained_dir(texts: Sequence[str], vocab_size: int) -> Path:
    """``artifacts/tokenizer/bpe-<vocab>-<key>``, keyed by the training texts, so new texts never overwrite it."""
    return paths.keyed(paths.artifacts_dir() / "tokenizer", f"bpe-{vocab_size}",
                       io_fingerprint(fingerprint(texts, vocab_size))[:10])


def build_or_load_trained(texts: Sequence[str], vocab_size: int = DEFAULT_VOCAB_SIZE, min_vocab: int = MIN_VOCAB,
                          force: bool = False):
    """Our BPE for these texts from its keyed folder (trained first if missing); ``bpe-<vocab>`` points to it."""
    out_dir = trained_dir(texts, vocab_size)
    tokenizer = build_or_load(out_dir, texts=texts, vocab_size=vocab_size, min_vocab=min_vocab, force=force)
    paths.point_latest(out_dir.with_name(f"bpe-{vocab_size}"), out_dir)
    return tokenizer, out_dir


def build_or_load(out_dir: str | os.PathLike, texts: Sequence[str] | None = None,
                  vocab_size: int = DEFAULT_VOCAB_SIZE, pretrained: str | None = None,
                  force: bool = False, min_vocab: int = MIN_VOCAB):
    """Return the tokenizer saved in ``out_dir`` if its fingerprint matches, else build and save it.

    ``pretrained`` (option A) loads a real GPT-2 tokenizer instead of training; ``texts`` are needed
    otherwise. The fingerprint is the vocab size plus a hash of the training-text selection.
    """
    out_dir = Path(out_dir)
    if pretrained is not None:
        want = {"pretrained": str(pretrained), "special_tokens": SPECIAL_TOKENS}
    else:
        if texts is None:
            raise ValueError("build_or_load needs `texts` to train a tokenizer (or `pretrained` to load one)")
        want = fingerprint(texts, vocab_size)
    fp_path = out_dir / FINGERPRINT_FILE
    if not force and fp_path.exists() and json.loads(fp_path.read_text()) == want:
        print(f"tokenizer: reusing {out_dir} (fingerprint matches)")
        return load_tokenizer(out_dir, min_vocab=min_vocab)
    t0 = time.time()
    if pretrained is not None:
        tokenizer = load_tokenizer(pretrained, min_vocab=min_vocab)
    else:
        tokenizer = train_tokenizer(texts, vocab_size)
        check_tokenizer(tokenizer, "trained", min(min_vocab, vocab_size))
    with atomic_dir(out_dir) as tmp:  # a crash never leaves a half-written tokenizer behind
        tokenizer.save_pretrained(tmp)
        (tmp / FINGERPRINT_FILE).write_text(json.dumps(want, indent=2))
    print(f"tokenizer: wrote {out_dir} (vocab {len(tokenizer)}, {time.time() - t0:.1f}s)")
    return tokenizer
