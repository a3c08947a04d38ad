"""Run every missing step before training: tables -> tokenizer -> domain CLIP -> photo-embedding cache.

Each step reuses its artifact when the inputs and settings that made it are unchanged (every step
keeps a fingerprint next to its output), so a rerun of ``python -m mmreason.train`` only trains.
"""
from __future__ import annotations

import random
from dataclasses import asdict, dataclass, is_dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from mmreason import clip as clip_lib
from mmreason import data as data_lib
from mmreason import embed as embed_lib
from mmreason import paths
from mmreason import tokenizer as tok_lib
from mmreason.io import DataError


@dataclass
class Artifacts:
    examples: pd.DataFrame
    items: pd.DataFrame
    tokenizer: object
    cache: dict  # the photo-embedding cache: {"article_id", "embedding", "meta", ...}
    data_dir: Path

    @property
    def embeddings(self) -> torch.Tensor:
        return self.cache["embedding"]

    def photo_lookup(self, article_ids) -> tuple[torch.Tensor, torch.Tensor]:
        """(N, D) photo embeddings in the order of ``article_ids`` and has_photo (N,)."""
        return embed_lib.lookup(self.cache, article_ids)


@dataclass
class PipelineConfig:
    hm_dir: str | None = None           # raw H&M folder (default ../shared/data/hm or $MMREASON_HM_DIR)
    data_dir: str | None = None         # prepared tables (default artifacts/data/hm)
    tokenizer: str | None = None        # None: train our byte-level BPE; else a GPT-2 tokenizer name or directory
    tokenizer_vocab: int = tok_lib.DEFAULT_VOCAB_SIZE
    clip_model: str = clip_lib.DEFAULT_MODEL
    clip_pretrained: str | None = None  # None: train the domain CLIP; else an open_clip tag or checkpoint path
    clip_epochs: int | None = None      # None: the domain CLIP's default
    embed_workers: int = 2


def ensure(config: PipelineConfig | dict | None = None, **overrides) -> Artifacts:
    """Make (or reuse) every artifact the generator needs and return them loaded.

    The random streams are left as they were, so a run that had to train the CLIP first initialises
    and trains the generator exactly like a rerun that reused it.
    """
    state = (random.getstate(), np.random.get_state())
    with torch.random.fork_rng(devices=range(torch.cuda.device_count())):
        try:
            return _ensure(config, **overrides)
        finally:
            random.setstate(state[0])
            np.random.set_state(state[1])


def _ensure(config: PipelineConfig | None = None, **overrides) -> Artifacts:
    if config is None or isinstance(config, dict):
        base = dict(config or {})
    elif is_dataclass(config):
        base = asdict(config)
    else:  # a jsonargparse Namespace, as LightningCLI stores it in checkpoints
        base = config.as_dict() if hasattr(config, "as_dict") else dict(vars(config))
    c = PipelineConfig(**base | overrides)
    hm_dir, data_dir, tokenizer, tokenizer_vocab = c.hm_dir, c.data_dir, c.tokenizer, c.tokenizer_vocab
    clip_model, clip_pretrained, clip_epochs, embed_workers = c.clip_model, c.clip_pretrained, c.clip_epochs, c.embed_workers
    paths.offline()
    hm_dir = hm_dir or str(paths.hm_dir())
    data_dir = Path(data_dir or paths.artifacts_dir() / "data" / "hm")
    print(f"[pipeline] 1/4 tables from {hm_dir}")
    if data_lib.main(["--hm-dir", hm_dir, "--out", str(data_dir)]) != 0:
        raise DataError(f"data preparation from {hm_dir} failed (see the message above)")
    t = data_lib.load_tables(data_dir, names=("items", "examples"))
    items, examples = t["items"], t["examples"]

    print("[pipeline] 2/4 tokenizer")
    if tokenizer is None:
        catalogue_path = Path(hm_dir) / "catalogue.parquet"
        catalogue = (pd.read_parquet(catalogue_path, columns=["product_code"] + tok_lib.CATALOGUE_TEXT_COLUMNS)
                     if catalogue_path.exists() else None)
        texts = tok_lib.training_texts(items, examples, catalogue)
        tok_dir = paths.artifacts_dir() / "tokenizer" / f"bpe-{tokenizer_vocab}"
        tok = tok_lib.build_or_load(tok_dir, texts=texts, vocab_size=tokenizer_vocab,
                                    min_vocab=256)  # a trained BPE has at least the byte alphabet
    else:
        tok = tok_lib.build_or_load(paths.artifacts_dir() / "tokenizer" / Path(tokenizer).name, pretrained=tokenizer)

    print(f"[pipeline] 3/4 CLIP {clip_model}")
    if clip_pretrained is None:
        cfg = clip_lib.get_default_config()
        cfg.model = clip_model
        if clip_epochs is not None:
            cfg.epochs = clip_epochs
        clip_pretrained = str(clip_lib.ensure_domain_clip(items, cfg))

    print("[pipeline] 4/4 photo embeddings")
    cache = embed_lib.load_embeddings(items, clip_model, clip_pretrained, workers=embed_workers)
    return Artifacts(examples=examples, items=items, tokenizer=tok, cache=cache, data_dir=data_dir)
