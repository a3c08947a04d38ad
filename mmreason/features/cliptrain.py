"""Fine-tuning CLIP on the catalogue's photo/text pairs (``train_clip``), cached by items and
settings (``ensure_domain_clip``); the flags ``python -m mmreason.clip`` and ``embed`` share.
"""
from __future__ import annotations

import hashlib
import json
import math
import os
import random
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from mmreason import paths
from mmreason.features.clip import (
    CHECKPOINT_NAME,
    DEFAULT_MODEL,
    META_NAME,
    Preprocess,
    cache_photos,
    default_clip_dir,
    encode_texts,
    load_clip,
    product_texts,
    save_checkpoint,
)
from mmreason.io import check_ranges, fingerprint


def items_fingerprint(items: pd.DataFrame) -> str:
    """A content hash of the items table the CLIP is trained on (the same on every machine)."""
    rows = pd.util.hash_pandas_object(items.astype(str), index=False).to_numpy()
    return hashlib.sha256(rows.tobytes() + "\0".join(map(str, items.columns)).encode()).hexdigest()


def domain_clip_dir(items: pd.DataFrame, cfg: "ClipTrainConfig") -> Path:
    """``artifacts/clip/<model>-<key>``, keyed by the settings that change the weights and by the items."""
    key = fingerprint(_result_fields(asdict(cfg)), items_fingerprint(items))[:10]
    return paths.keyed(paths.artifacts_dir() / "clip", cfg.model, key)


# ----------------------------------------------------------------------------- training (option B)

@dataclass
class ClipTrainConfig:
    """How the domain CLIP trains (``python -m mmreason.clip`` and ``embed`` take these as flags).

    Args:
        model: architecture JSON name (mmreason/model_configs)
        epochs: passes over the training photos
        batch_size: photo-text pairs per step (the contrastive loss's negatives)
        hflip: random horizontal flip of training photos (--no-hflip: off)
        desc_words: words of detail_desc appended to the product text
        threads: torch threads
        workers: photo-decoding processes
        max_train: cap on training pairs (tests, smoke runs)
    """
    model: str = DEFAULT_MODEL
    epochs: int = 8
    batch_size: int = 256
    lr: float = 2e-3
    weight_decay: float = 0.1
    warmup_steps: int = 50
    desc_words: int = 12         # words of detail_desc appended to the product text
    hflip: bool = True           # random horizontal flip of training photos
    seed: int = 0
    threads: int = 2
    workers: int = 2             # photo-decoding processes
    max_train: int | None = None  # cap on training pairs (tests, smoke runs)

    def __post_init__(self):  # a contrastive batch needs a negative: 2 pairs at least
        check_ranges(self, epochs=">=1", batch_size=">=2", lr=">0", weight_decay=">=0", warmup_steps=">=0",
                         desc_words=">=0", seed=">=0", threads=">=1", workers=">=0", max_train=">=1")


def get_default_config() -> ClipTrainConfig:
    return ClipTrainConfig()


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def recall_at_k(sim: torch.Tensor, ks=(1, 5, 10)) -> dict:
    """sim (N, N) with the match on the diagonal -> {"R@k": fraction of rows whose match is in the top k}."""
    target = sim.diagonal().unsqueeze(1)
    rank = (sim > target).sum(1)  # (N,) how many candidates beat the true match
    return {f"R@{k}": float((rank < k).float().mean()) for k in ks}


def one_per_product(items: pd.DataFrame) -> pd.DataFrame:
    """The lowest article_id of each product_code: retrieval galleries without near-duplicate texts."""
    return items.sort_values("article_id").drop_duplicates("product_code")


@torch.no_grad()
def encode_cached(model, preprocess: Preprocess, photos_u8: torch.Tensor, batch_size=512) -> torch.Tensor:
    out = [model.encode_image(preprocess.normalize(photos_u8[i:i + batch_size]), normalize=True)
           for i in range(0, len(photos_u8), batch_size)]
    return torch.cat(out)


def _param_groups(model, weight_decay):
    """open_clip_train's rule: no decay on gains, biases, embeddings, logit_scale."""
    decay, no_decay = [], []
    for n, p in model.named_parameters():
        if n == "token_embedding.weight":
            continue  # trained by SparseAdam (49k-row table, only a few hundred rows touched per step)
        skip = p.ndim < 2 or "bn" in n or "ln" in n or "bias" in n or "embedding" in n or "logit_scale" in n
        (no_decay if skip else decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def _usable(items: pd.DataFrame, split: str) -> pd.DataFrame:
    df = items[(items["split_unseen"] == split) & items["has_photo"].astype(bool) & (items["photo_path"] != "")]
    return df.reset_index(drop=True)


def train_clip(items: pd.DataFrame, cfg: ClipTrainConfig | None = None, out_dir: str | os.PathLike | None = None):
    """Train the domain CLIP on split_unseen=="train" items, validate on "val" items; save; return meta."""
    import open_clip
    from open_clip.loss import ClipLoss
    from tqdm import tqdm

    cfg = cfg or get_default_config()
    out_dir = Path(out_dir) if out_dir else domain_clip_dir(items, cfg)
    torch.set_num_threads(cfg.threads)
    seed_everything(cfg.seed)
    t_start = time.time()

    model, preprocess, tokenizer = load_clip(cfg.model, pretrained=None)
    train = _usable(items, "train")
    if cfg.max_train:
        train = train.sample(n=min(cfg.max_train, len(train)), random_state=cfg.seed).reset_index(drop=True)
    val = one_per_product(_usable(items, "val")).reset_index(drop=True)
    print(f"clip: {cfg.model}, {sum(p.numel() for p in model.parameters()) / 1e6:.2f}M params, "
          f"{preprocess.size}px pad-to-square; {len(train):,} train / {len(val):,} val pairs "
          f"(val: one article per held-out product_code)")

    photos, ok, errors = cache_photos(train["photo_path"], preprocess, workers=cfg.workers, desc="cache train photos")
    val_photos, val_ok, val_errors = cache_photos(val["photo_path"], preprocess, workers=cfg.workers, desc="cache val photos")
    for df, errs in ((train, errors), (val, val_errors)):
        for i, e in errs.items():
            print(f"unreadable photo: {df.at[i, 'photo_path']} (article_id={df.at[i, 'article_id']}): {e}", file=sys.stderr)
    photos, train = photos[ok], train[ok.numpy()].reset_index(drop=True)
    val_photos, val = val_photos[val_ok], val[val_ok.numpy()].reset_index(drop=True)
    tokens = tokenizer(product_texts(train, cfg.desc_words))  # (N, context_length)
    val_texts = product_texts(val, cfg.desc_words)
    t_cache = time.time() - t_start
    print(f"clip: cached {len(photos):,} photos as {tuple(photos.shape[1:])} uint8 "
          f"({photos.numel() / 2**20:.0f} MiB) in {t_cache:.0f}s")

    model.train()
    model.token_embedding.sparse = True
    opt = torch.optim.AdamW(_param_groups(model, cfg.weight_decay), lr=cfg.lr, betas=(0.9, 0.98), eps=1e-6)
    opt_emb = torch.optim.SparseAdam([model.token_embedding.weight], lr=cfg.lr, betas=(0.9, 0.98), eps=1e-6)
    loss_fn = ClipLoss()
    n = len(photos)
    bs = min(cfg.batch_size, n)
    steps_per_epoch = max(1, n // bs)  # drop the ragged last batch: ClipLoss wants a full set of negatives
    total = cfg.epochs * steps_per_epoch
    gen = torch.Generator().manual_seed(cfg.seed)
    history = []
    step = 0
    for epoch in range(1, cfg.epochs + 1):
        t0 = time.time()
        perm = torch.randperm(n, generator=gen)
        losses = []
        bar = tqdm(range(steps_per_epoch), desc=f"epoch {epoch}/{cfg.epochs}", unit="step", disable=None,
                   leave=False, mininterval=2)
        for i in bar:
            lr = cfg.lr * min(1.0, (step + 1) / max(1, cfg.warmup_steps)) * 0.5 * (1 + math.cos(math.pi * step / total))
            for o in (opt, opt_emb):
                for g in o.param_groups:
                    g["lr"] = lr
            idx = perm[i * bs:(i + 1) * bs]
            x = photos[idx]  # (B, 3, S, S) uint8
            if cfg.hflip:
                flip = torch.rand(len(idx), generator=gen) < 0.5
                x = torch.where(flip.view(-1, 1, 1, 1), x.flip(-1), x)
            image_features, text_features, logit_scale = model(preprocess.normalize(x), tokens[idx])
            loss = loss_fn(image_features, text_features, logit_scale)
            opt.zero_grad(set_to_none=True)
            opt_emb.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            opt_emb.step()
            with torch.no_grad():
                model.logit_scale.clamp_(0, math.log(100))
            losses.append(loss.item())
            step += 1
            bar.set_postfix(loss=f"{loss.item():.3f}", lr=f"{lr:.1e}")
        bar.close()
        model.eval()
        val_metrics = evaluate_pairs(model, preprocess, tokenizer, val_photos, val_texts, bs, loss_fn)
        model.train()
        dt = time.time() - t0
        rec = {"epoch": epoch, "train_loss": float(np.mean(losses)), **val_metrics, "seconds": dt}
        history.append(rec)
        print(f"epoch {epoch}/{cfg.epochs}: train loss {rec['train_loss']:.3f}, val loss {rec['val_loss']:.3f}, "
              f"val R@10 i2t {rec['val_i2t_R@10']:.3f} t2i {rec['val_t2i_R@10']:.3f} "
              f"(chance {rec['val_chance_R@10']:.3f}), logit scale {model.logit_scale.exp().item():.1f}, "
              f"{dt:.0f}s, {steps_per_epoch * bs / dt:.0f} img/s", flush=True)

    model.token_embedding.sparse = False
    model.eval()
    train_seconds = time.time() - t_start
    meta = {"train_config": asdict(cfg), "n_train": len(train), "n_val": len(val), "history": history,
            "cache_seconds": t_cache, "train_seconds": train_seconds,
            "torch": torch.__version__, "open_clip": open_clip.__version__}
    ckpt = save_checkpoint(model, out_dir, cfg.model, preprocess, meta)
    print(f"clip: trained in {train_seconds:.0f}s (photo cache {t_cache:.0f}s); wrote {ckpt}")
    return json.loads((out_dir / META_NAME).read_text())


@torch.no_grad()
def evaluate_pairs(model, preprocess, tokenizer, photos_u8, texts, batch_size, loss_fn) -> dict:
    """Validation ClipLoss (same batch size as training) and i2t/t2i recall over the whole gallery."""
    img = encode_cached(model, preprocess, photos_u8)
    txt = encode_texts(model, tokenizer, texts)
    scale = model.logit_scale.exp()
    losses = [loss_fn(img[i:i + batch_size], txt[i:i + batch_size], scale).item()
              for i in range(0, len(img) - batch_size + 1, batch_size)] or [loss_fn(img, txt, scale).item()]
    sim = img @ txt.T
    out = {"val_loss": float(np.mean(losses))}
    out.update({f"val_i2t_{k}": v for k, v in recall_at_k(sim).items()})
    out.update({f"val_t2i_{k}": v for k, v in recall_at_k(sim.T).items()})
    out["val_chance_R@10"] = min(1.0, 10 / len(img))
    return out


def _result_fields(train_config: dict) -> dict:
    """The settings that change the weights (not threads or decoding workers)."""
    return {k: v for k, v in train_config.items() if k not in ("threads", "workers")}


def ensure_domain_clip(items: pd.DataFrame, cfg: ClipTrainConfig | None = None,
                       out_dir: str | os.PathLike | None = None, retrain: bool = False) -> Path:
    """Path of the domain CLIP checkpoint for ``cfg``, training it first if missing or trained differently.

    By default it lives in its keyed folder (``domain_clip_dir``), and ``artifacts/clip/<model>`` points to it.
    """
    cfg = cfg or get_default_config()
    keyed = out_dir is None
    out_dir = Path(out_dir) if out_dir else domain_clip_dir(items, cfg)
    ckpt, meta_path = out_dir / CHECKPOINT_NAME, out_dir / META_NAME
    if not retrain and ckpt.exists() and meta_path.exists():
        old = json.loads(meta_path.read_text()).get("train_config", {})
        if _result_fields(old) == _result_fields(asdict(cfg)):
            print(f"clip: reusing {out_dir}")
        else:
            print(f"clip: {out_dir} was trained with another config; retraining")
            train_clip(items, cfg, out_dir)
    else:
        train_clip(items, cfg, out_dir)
    if keyed:
        paths.point_latest(default_clip_dir(cfg.model), out_dir)
    return ckpt
