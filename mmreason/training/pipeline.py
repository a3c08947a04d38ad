"""Run every missing step before training: tables -> tokenizer -> domain CLIP -> photo-embedding cache
(-> retrieval datastore and each article's retrieved copies, when ``retrieval_k`` asks for them).

Each artifact lives in a folder (or file) keyed by the inputs and settings that made it (``paths.keyed``),
so a rerun of ``python -m mmreason.train`` only trains, and a run of other settings builds its own
artifacts beside, never over, another run's. ``Artifacts.record()`` names the exact artifacts and their
checksums; a trained run keeps that record in its checkpoint and ``load_recorded`` reads exactly those
back (or refuses in one line), so evaluation, RL, explanations and notebooks see what training saw.
"""
from __future__ import annotations

import random
from dataclasses import asdict, dataclass, is_dataclass
from functools import cached_property
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from mmreason.features import clip as clip_lib
from mmreason.features import cliptrain
from mmreason.datasets import prepare, hm
from mmreason.features import embed as embed_lib
from mmreason import paths
from mmreason.features import photodetails, photonet, retrieval
from mmreason.features import tokenizer as tok_lib
from mmreason.io import DataError, sha256_file


@dataclass
class Artifacts:
    examples: pd.DataFrame
    items: pd.DataFrame
    tokenizer: object
    cache: dict  # the photo-embedding cache: {"article_id", "embedding", "meta", "path", ...}
    data_dir: Path
    tokenizer_dir: Path | None = None
    clip_model: str = clip_lib.DEFAULT_MODEL
    clip_pretrained: str | None = None  # the CLIP checkpoint (a file) or open_clip tag the cache was made with
    retrieved: dict | None = None  # {article_id: the prompt's retrieved segment} (retrieval.ensure_neighbours)
    retrieved_path: Path | None = None

    @property
    def embeddings(self) -> torch.Tensor:
        return self.cache["embedding"]

    def photo_lookup(self, article_ids) -> tuple[torch.Tensor, torch.Tensor]:
        """(N, D) photo embeddings in the order of ``article_ids`` and has_photo (N,)."""
        return embed_lib.lookup(self.cache, article_ids)

    @cached_property
    def photo_offers(self) -> dict[int, str]:
        """{article_id: the copy a run that sees the photo offers after its hook} (``photodetails.ensure_offers``:
        the text's nearest copies re-ranked by the photo and vetted by it), built once per artifacts folder and
        read once per run; not part of ``record()``: it chooses what is shown, never what is trained."""
        store = retrieval.ensure_store(self.items, self.cache)
        return photodetails.ensure_offers(store, self.items, photonet.load_features(self.items))[0]

    def record(self) -> dict:
        """The exact artifacts (resolved paths) and their checksums: what a trained run depends on."""
        clip_file = self.clip_pretrained and Path(self.clip_pretrained).is_file()
        return {  # each place as paths.in_artifacts gives it: absolute, and relative to the artifacts root
            "tables": {**paths.in_artifacts(self.data_dir),
                       "sha256": {n: sha256_file(self.data_dir / f"{n}.parquet") for n in RECORDED_TABLES}},
            "tokenizer": {**paths.in_artifacts(self.tokenizer_dir), "sha256": _tokenizer_sha(self.tokenizer_dir)},
            "clip": {"model": self.clip_model,
                     **(paths.in_artifacts(self.clip_pretrained) if clip_file else {"path": self.clip_pretrained}),
                     "sha256": sha256_file(self.clip_pretrained) if clip_file else None},
            "embeddings": {**paths.in_artifacts(self.cache["path"]), "sha256": embed_lib.content_sha256(self.cache)},
        } | ({} if self.retrieved_path is None else {
            "retrieved": {**paths.in_artifacts(self.retrieved_path), "sha256": sha256_file(self.retrieved_path)}})


def artifacts_content(record: dict | None) -> dict:
    """A ``record()`` as its content: the checksums (and CLIP model), not where the files live. A folder's name
    is a fingerprint that also covers the code that builds it, so a code change can rebuild the same tables
    under a new name. A CLIP without a checksum (a tag) keeps its name."""
    return {k: {f: x for f, x in v.items() if f not in ("path", "in_artifacts") or v.get("sha256") is None}
            if isinstance(v, dict) else v for k, v in (record or {}).items()}


def same_content(a: dict | None, b: dict | None) -> bool:
    """Two ``record()``s name the same artifacts (``artifacts_content``)."""
    return artifacts_content(a) == artifacts_content(b)


TABLES = ("items", "examples")  # what the generator reads
RECORDED_TABLES = ("users", "items", "interactions", "examples")  # what evaluation, RL and explanations read too


def _tokenizer_sha(tok_dir) -> str | None:
    f = Path(tok_dir) / "tokenizer.json" if tok_dir else None
    return sha256_file(f) if f and f.exists() else None


@dataclass
class PipelineConfig:
    hm_dir: str | None = None           # raw H&M folder (default ../shared/data/hm or $MMREASON_HM_DIR)
    data_dir: str | None = None         # prepared tables (default artifacts/data/hm-<key>)
    tokenizer: str | None = None        # None: train our byte-level BPE; else a GPT-2 tokenizer name or directory
    tokenizer_vocab: int = tok_lib.DEFAULT_VOCAB_SIZE
    clip_model: str = clip_lib.DEFAULT_MODEL
    clip_pretrained: str | None = None  # None: train the domain CLIP; else an open_clip tag or checkpoint path
    clip_epochs: int | None = None      # None: the domain CLIP's default
    embed_workers: int = 2
    retrieval_k: int = 0                # >0: each article's k nearest other products' copies (the prompt's retrieved part)
    retrieval_by: str = "text_type"     # retrieval.nearest's ranking; measured best on validation (results/cpu/retrieval.md)


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
    steps = 5 if c.retrieval_k else 4
    paths.offline()
    hm_dir = hm_dir or str(paths.hm_dir())
    print(f"[pipeline] 1/{steps} tables from {hm_dir}")
    data_dir = prepare.prepare_tables(prepare.PrepareConfig(hm_dir=str(hm_dir), out=str(data_dir) if data_dir else None))
    t = hm.load_tables(data_dir, names=TABLES)
    items, examples = t["items"], t["examples"]

    print(f"[pipeline] 2/{steps} tokenizer")
    if tokenizer is None:
        catalogue_path = Path(hm_dir) / "catalogue.parquet"
        catalogue = (pd.read_parquet(catalogue_path, columns=["product_code"] + tok_lib.CATALOGUE_TEXT_COLUMNS)
                     if catalogue_path.exists() else None)
        texts = tok_lib.training_texts(items, examples, catalogue)
        tok, tok_dir = tok_lib.build_or_load_trained(texts, tokenizer_vocab,
                                                     min_vocab=256)  # a trained BPE has at least the byte alphabet
    else:
        tok_dir = paths.artifacts_dir() / "tokenizer" / Path(tokenizer).name
        tok = tok_lib.build_or_load(tok_dir, pretrained=tokenizer)

    print(f"[pipeline] 3/{steps} CLIP {clip_model}")
    if clip_pretrained is None:
        cfg = cliptrain.get_default_config()
        cfg.model = clip_model
        if clip_epochs is not None:
            cfg.epochs = clip_epochs
        clip_pretrained = str(cliptrain.ensure_domain_clip(items, cfg))

    print(f"[pipeline] 4/{steps} photo embeddings")
    cache = embed_lib.load_embeddings(items, clip_model, clip_pretrained, workers=embed_workers)
    retrieved = retrieved_path = None
    if c.retrieval_k:
        print(f"[pipeline] 5/5 retrieval: the {c.retrieval_k} nearest other products' copies by {c.retrieval_by}")
        store = retrieval.ensure_store(items, cache)
        retrieved, retrieved_path = retrieval.ensure_neighbours(store, items, c.retrieval_k, c.retrieval_by,
                                                                photo_lookup=lambda ids: embed_lib.lookup(cache, ids))
    return Artifacts(examples=examples, items=items, tokenizer=tok, cache=cache, data_dir=data_dir, tokenizer_dir=tok_dir,
                     clip_model=clip_model, clip_pretrained=clip_pretrained, retrieved=retrieved,
                     retrieved_path=retrieved_path)


def load_recorded(record: dict, run: str = "the run", embed_workers: int = 2) -> Artifacts:
    """The artifacts a run was trained on, exactly: each is checked against its recorded checksum.

    A missing photo-embedding cache is recomputed from the recorded CLIP and accepted only if it comes out
    identical; anything else missing or changed stops with one line saying what and how to get it back.
    """
    def refuse(kind, path, what):
        raise DataError(f"{run} was trained on the {kind} {path}, which {what}; rerun the run's own config "
                        f"(`python -m mmreason.train --config <run>/logs/version_0/config.yaml` rebuilds what is "
                        f"missing, accepted only with the recorded checksum) or retrain the run")

    paths.offline()
    tables = record["tables"]
    data_dir = paths.from_artifacts(tables)
    for name, sha in tables["sha256"].items():
        f = data_dir / f"{name}.parquet"
        if not f.exists():
            refuse("tables", data_dir, f"has no {f.name}")
        if sha256_file(f) != sha:
            refuse("tables", data_dir, f"has changed ({f.name})")
    t = hm.load_tables(data_dir, names=TABLES)

    rec = record["tokenizer"]
    tok_dir = paths.from_artifacts(rec)
    if not (tok_dir / "tokenizer.json").exists():
        refuse("tokenizer", tok_dir, "is missing")
    if _tokenizer_sha(tok_dir) != rec["sha256"]:
        refuse("tokenizer", tok_dir, "has changed")
    tok = tok_lib.load_tokenizer(tok_dir, min_vocab=1)

    clip, emb = record["clip"], record["embeddings"]
    clip_path = str(paths.from_artifacts(clip)) if clip["sha256"] else clip["path"]  # a file, or a tag
    path = paths.from_artifacts(emb)
    if path.exists():
        cache = embed_lib.read_embeddings(path) | {"path": str(path)}
    else:
        if clip["sha256"] is not None:
            if not Path(clip_path).exists():
                refuse("CLIP", clip_path, "is missing (and so is its photo-embedding cache)")
            if sha256_file(clip_path) != clip["sha256"]:
                refuse("CLIP", clip_path, "has changed (and its photo-embedding cache is missing)")
        print(f"[pipeline] {path.name} is missing: recomputing it from the run's CLIP {clip_path}")
        cache = embed_lib.load_embeddings(t["items"], clip["model"], clip_path, path, workers=embed_workers)
    if embed_lib.content_sha256(cache) != emb["sha256"]:
        refuse("photo embeddings", path, "differ from the recorded ones")
    retrieved = retrieved_path = None
    if "retrieved" in record:
        retrieved_path = paths.from_artifacts(record["retrieved"])
        if not retrieved_path.exists():
            refuse("retrieved copies", retrieved_path, "is missing")
        if sha256_file(retrieved_path) != record["retrieved"]["sha256"]:
            refuse("retrieved copies", retrieved_path, "has changed")
        df = pd.read_parquet(retrieved_path)
        retrieved = dict(zip(df["article_id"].astype(int), df["retrieved"].astype(str)))
    return Artifacts(examples=t["examples"], items=t["items"], tokenizer=tok, cache=cache, data_dir=data_dir,
                     tokenizer_dir=tok_dir, clip_model=clip["model"], clip_pretrained=clip_path, retrieved=retrieved,
                     retrieved_path=retrieved_path)
