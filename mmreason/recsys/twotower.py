"""The two-tower recommender (photo + attributes + id; user: attention over recent purchases +
profile), its trainer and cache, and the photo embeddings it reads.
"""
from __future__ import annotations

import hashlib
import json
import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch
import torch.nn as nn
import torch.nn.functional as F
from tqdm.auto import tqdm

from mmreason.io import DataError, atomic_write_bytes, check_ranges
from mmreason.recsys.context import ALLOWED, ATTRIBUTES, USER_FIELDS, Context, Task

PhotoEmbeddings = dict | tuple  # {article_id: vector} or (article_ids (N,), matrix (N, D))


# --------------------------------------------------------------------------- photo embeddings

DEFAULT_EMBEDDINGS = "mmr-vit-tiny.pt"  # embed.default_cache_path(clip.DEFAULT_MODEL)'s name (no open_clip import)
EMBEDDINGS_HELP = ("photo embedding cache: a torch file {'article_id', 'embedding'}; 'auto' (default): "
                   f"<artifacts>/embeddings/{DEFAULT_EMBEDDINGS} beside the --data tables when it exists; 'none'")


def resolve_embeddings(value: str | None, data_dir: Path) -> str | None:
    """``--embeddings``: a path as given, ``none`` -> None, ``auto``/None -> the default cache of the
    artifacts root that holds ``data_dir`` (``<root>/data/hm`` -> ``<root>/embeddings/mmr-vit-tiny.pt``) if present."""
    if value not in (None, "auto"):
        return None if value == "none" else value
    path = Path(data_dir).resolve().parent.parent / "embeddings" / DEFAULT_EMBEDDINGS
    return str(path) if path.exists() else None


def load_photo_embeddings(path) -> tuple[np.ndarray, np.ndarray]:
    """A torch file {"article_id": LongTensor (N,), "embedding": FloatTensor (N, D), ...} -> (ids, matrix),
    e.g. the cache of ``mmreason.embed`` (artifacts/embeddings/<clip>.pt); other keys are ignored."""
    if not Path(path).exists():
        raise DataError(f"{path}: photo embedding file not found")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception:  # noqa: BLE001 -- a cache whose metadata holds other types: our own artifact
        obj = torch.load(path, map_location="cpu", weights_only=False)
    if not isinstance(obj, dict) or "article_id" not in obj or "embedding" not in obj:
        raise DataError(f"{path}: expected a dict with 'article_id' and 'embedding' tensors")
    return obj["article_id"].numpy().astype(np.int64), obj["embedding"].float().numpy()


def photo_matrix(photo_embeddings: PhotoEmbeddings | None, article_ids) -> tuple[np.ndarray, np.ndarray] | None:
    """Align embeddings to ``article_ids``: (matrix (N, D) L2-normalised, zeros where missing; has (N,))."""
    if photo_embeddings is None:
        return None
    if isinstance(photo_embeddings, dict):
        ids = np.fromiter(photo_embeddings.keys(), dtype=np.int64, count=len(photo_embeddings))
        mat = np.stack([np.asarray(v, dtype=np.float32) for v in photo_embeddings.values()])
    else:
        ids, mat = np.asarray(photo_embeddings[0], dtype=np.int64), np.asarray(photo_embeddings[1], dtype=np.float32)
    pos = pd.Series(np.arange(len(ids)), index=ids)
    article_ids = np.asarray(article_ids, dtype=np.int64)
    has = np.isin(article_ids, ids)
    out = np.zeros((len(article_ids), mat.shape[1]), dtype=np.float32)
    out[has] = mat[pos.loc[article_ids[has]].to_numpy()]
    out /= np.maximum(np.linalg.norm(out, axis=1, keepdims=True), 1e-8)
    return out, has


# --------------------------------------------------------------------------- the two-tower model

@dataclass
class TwoTowerConfig:
    dim: int = 64
    max_history: int = 20  # most recent purchases the user tower pools
    epochs: int = 10
    batch_size: int = 256
    lr: float = 3e-3
    weight_decay: float = 1e-4
    dropout: float = 0.2
    temperature: float = 0.07
    id_dropout: float = 0.0  # share of article ids hidden during training
    logq: bool = True  # subtract log(training frequency) from in-batch logits (sampling-bias correction)
    seed: int = 0

    def __post_init__(self):  # in-batch negatives: 2 pairs at least
        check_ranges(self, dim=">=1", max_history=">=1", epochs=">=1", batch_size=">=2", lr=">0",
                         weight_decay=">=0", dropout="[0,1)", temperature=">0", id_dropout="[0,1)", seed=">=0")


class TwoTower(nn.Module):
    """Item tower: id + attribute embeddings + projected photo. User tower: attention over the item
    vectors of recent purchases (with recency) + profile embeddings. Scores are cosine / temperature."""

    def __init__(self, n_ids: int, attr_sizes: list[int], user_sizes: list[int], photo_dim: int, cfg: TwoTowerConfig):
        super().__init__()
        d, self.cfg = cfg.dim, cfg
        self.id_emb = nn.Embedding(n_ids + 1, d, padding_idx=0)  # row 0: an article with no training purchase
        self.attr_emb = nn.ModuleList(nn.Embedding(n, d) for n in attr_sizes)
        self.photo_proj = nn.Linear(photo_dim, d) if photo_dim else None
        self.item_mlp = nn.Sequential(nn.LayerNorm(d), nn.Dropout(cfg.dropout), nn.Linear(d, d), nn.GELU(), nn.Linear(d, d))
        self.user_emb = nn.ModuleList(nn.Embedding(n, d) for n in user_sizes)
        self.recency = nn.Embedding(cfg.max_history, d)
        self.start = nn.Parameter(torch.zeros(d))  # always-present token: pooling never sees an empty history
        self.query = nn.Linear(d, d)
        self.user_mlp = nn.Sequential(nn.Linear(3 * d, d), nn.GELU(), nn.Dropout(cfg.dropout), nn.Linear(d, d))
        for e in [self.id_emb, *self.attr_emb, *self.user_emb, self.recency]:
            nn.init.normal_(e.weight, std=0.05)

    def item_vectors(self, ids, attrs, photo=None):
        """ids (M,), attrs (M, A), photo (M, P) -> (M, d), unit length."""
        x = self.id_emb(ids) + sum(emb(attrs[:, k]) for k, emb in enumerate(self.attr_emb))
        if self.photo_proj is not None:
            x = x + self.photo_proj(photo)
        return F.normalize(x + self.item_mlp(x), dim=-1)

    def user_vectors(self, hist, mask, user_feats):
        """hist (B, L, d) item vectors right-aligned (newest last), mask (B, L), user_feats (B, U) -> (B, d)."""
        B, L, d = hist.shape
        prof = sum(emb(user_feats[:, k]) for k, emb in enumerate(self.user_emb))  # (B, d)
        pos = torch.arange(L - 1, -1, -1, device=hist.device).clamp(max=self.cfg.max_history - 1)
        h = torch.cat([hist + self.recency(pos), self.start.expand(B, 1, d)], 1)  # (B, L+1, d)
        m = torch.cat([mask, torch.ones(B, 1, dtype=torch.bool, device=mask.device)], 1)
        att = (h @ self.query(prof).unsqueeze(-1)).squeeze(-1) / math.sqrt(d)  # (B, L+1)
        w = att.masked_fill(~m, float("-inf")).softmax(-1)
        pooled = (w.unsqueeze(-1) * h).sum(1)
        mean = (hist * mask.unsqueeze(-1)).sum(1) / mask.sum(1, keepdim=True).clamp(min=1)
        return F.normalize(self.user_mlp(torch.cat([pooled, mean, prof], -1)), dim=-1)


def _vocab(values) -> dict[str, int]:
    """Value -> index, 0 reserved for empty/unknown."""
    return {v: i + 1 for i, v in enumerate(sorted({str(v) for v in values if isinstance(v, str) and v}))}


class TwoTowerRecommender:
    """A ``TwoTower`` with its vocabularies and item features; trains, saves, loads and scores."""

    def __init__(self, ctx: Context, cfg: TwoTowerConfig, photo: tuple[np.ndarray, np.ndarray] | None,
                 vocab: dict | None = None, splits: tuple[str, ...] = ("train",)):
        self.ctx, self.cfg, self.splits = ctx, cfg, tuple(splits)
        train = np.isin(ctx.i_split, self.splits)  # the purchases it may learn from
        if vocab is None:
            vocab = {"attrs": {c: _vocab(ctx.items[c]) for c in ATTRIBUTES},
                     "users": {c: _vocab(ctx.users[c]) for c in USER_FIELDS},
                     "ids": sorted(ctx.items["article_id"].to_numpy()[np.unique(ctx.i_item[train])].tolist())}
        self.vocab = vocab
        id_of = {a: i + 1 for i, a in enumerate(vocab["ids"])}
        self.ids = torch.tensor([id_of.get(a, 0) for a in ctx.items["article_id"]], dtype=torch.long)
        self.attrs = torch.tensor(np.stack([ctx.items[c].map(vocab["attrs"][c]).fillna(0).to_numpy(np.int64)
                                            for c in ATTRIBUTES], 1))
        self.user_feats = torch.tensor(np.stack([ctx.users[c].map(vocab["users"][c]).fillna(0).to_numpy(np.int64)
                                                 for c in USER_FIELDS], 1))
        self.photo = torch.from_numpy(photo[0]) if photo is not None else None
        torch.manual_seed(cfg.seed)  # the initial weights too, whatever ran before in this process
        self.model = TwoTower(len(vocab["ids"]), [len(vocab["attrs"][c]) + 1 for c in ATTRIBUTES],
                              [len(vocab["users"][c]) + 1 for c in USER_FIELDS],
                              0 if photo is None else photo[0].shape[1], cfg)
        counts = np.bincount(ctx.i_item[train], minlength=ctx.n_items) + 1.0
        self.log_freq = torch.tensor(np.log(counts / counts.sum()), dtype=torch.float32)
        self.log: list[dict] = []

    def _items(self, rows: torch.Tensor) -> torch.Tensor:
        ids = self.ids[rows]
        if self.model.training and self.cfg.id_dropout:  # learn to place articles without their own id
            ids = ids * (torch.rand(ids.shape) >= self.cfg.id_dropout)
        return self.model.item_vectors(ids, self.attrs[rows], None if self.photo is None else self.photo[rows])

    def _histories(self, histories: list[np.ndarray]) -> np.ndarray:
        """Right-aligned (B, L) item rows of the last L purchases, -1 padded."""
        L = self.cfg.max_history
        out = np.full((len(histories), L), -1, dtype=np.int64)
        for j, h in enumerate(histories):
            h = h[-L:]
            if len(h):
                out[j, L - len(h):] = h
        return out

    def _users(self, user_rows, hist: np.ndarray) -> torch.Tensor:
        flat = hist[hist >= 0]
        uniq, inv = np.unique(flat, return_inverse=True)
        vec = self._items(torch.from_numpy(uniq))  # (M, d)
        idx = np.zeros(hist.shape, dtype=np.int64)
        idx[hist >= 0] = inv
        mask = torch.from_numpy(hist >= 0)
        h = vec[torch.from_numpy(idx)] * mask.unsqueeze(-1)  # (B, L, d)
        return self.model.user_vectors(h, mask, self.user_feats[torch.as_tensor(user_rows)])

    def training_pairs(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(user rows, histories (P, L), target item rows) from train-split days that have earlier train days."""
        ctx, users, hists, targets = self.ctx, [], [], []
        for u in range(len(ctx.users)):
            s, e = ctx.user_start[u], ctx.user_start[u + 1]
            keep = np.isin(ctx.i_split[s:e], self.splits)
            items, days = ctx.i_item[s:e][keep], ctx.i_day[s:e][keep]
            for d in np.unique(days)[1:]:
                hist = items[days < d]
                for t in items[days == d]:
                    users.append(u), hists.append(hist), targets.append(t)
        return np.array(users, dtype=np.int64), self._histories(hists), np.array(targets, dtype=np.int64)

    def fit(self, progress: bool = True, threads: int | None = 1) -> "TwoTowerRecommender":
        """In-batch sampled softmax over train pairs. ``threads``: torch CPU threads while training; the
        matrices are small (B x d), so one thread beats several on a shared machine (10x here)."""
        old = torch.get_num_threads()
        if threads:
            torch.set_num_threads(threads)
        try:
            return self._fit(progress)
        finally:
            torch.set_num_threads(old)

    def _fit(self, progress: bool) -> "TwoTowerRecommender":
        cfg = self.cfg
        torch.manual_seed(cfg.seed)
        rng = np.random.default_rng(cfg.seed)
        users, hists, targets = self.training_pairs()
        if len(users) == 0:
            raise DataError("no training pairs: no customer has two train-split purchase days")
        opt = torch.optim.AdamW(self.model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
        steps = cfg.epochs * math.ceil(len(users) / cfg.batch_size)
        sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=cfg.lr, total_steps=steps, pct_start=0.1)
        self.model.train()
        bar = tqdm(total=steps, desc="two_tower", unit="step", mininterval=1.0, disable=None if progress else True)
        for epoch in range(cfg.epochs):
            t0, losses = time.time(), []
            for b in np.array_split(rng.permutation(len(users)), math.ceil(len(users) / cfg.batch_size)):
                tgt = torch.from_numpy(targets[b])
                u = self._users(users[b], hists[b])  # (B, d)
                v = self._items(tgt)  # (B, d)
                logits = u @ v.T / cfg.temperature  # (B, B): row i's positive is column i
                if cfg.logq:
                    logits = logits - self.log_freq[tgt].unsqueeze(0)
                same = (tgt.unsqueeze(0) == tgt.unsqueeze(1)) & ~torch.eye(len(b), dtype=torch.bool)
                loss = F.cross_entropy(logits.masked_fill(same, float("-inf")), torch.arange(len(b)))
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                sched.step()
                losses.append(loss.item())
                bar.update(1)
            dt = time.time() - t0
            self.log.append({"epoch": epoch + 1, "loss": float(np.mean(losses)), "seconds": round(dt, 2)})
            bar.write(f"[two_tower] epoch {epoch + 1}/{cfg.epochs}: loss {np.mean(losses):.3f}, "
                      f"{dt:.1f}s, {len(users) / dt:,.0f} pairs/s") if progress else None
        bar.close()
        self.model.eval()
        return self

    @torch.no_grad()
    def scores(self, ctx: Context, task: Task, idx: np.ndarray) -> np.ndarray:
        self.model.eval()
        items = self._items(torch.arange(ctx.n_items))  # (N, d)
        out = []
        for chunk in np.array_split(idx, max(1, math.ceil(len(idx) / 512))):
            if len(chunk) == 0:
                continue
            u = self._users(task.user_rows[chunk], self._histories([task.history[i] for i in chunk]))
            out.append((u @ items.T).numpy().astype(np.float64))
        return np.concatenate(out) if out else np.zeros((0, ctx.n_items))

    # -- persistence
    def key(self, photo_key: str) -> str:
        parts = [asdict(self.cfg), self.ctx.fingerprint, photo_key, self.splits]
        return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()[:16]

    def save(self, path: Path, key: str) -> None:
        import io

        buf = io.BytesIO()
        torch.save({"config": asdict(self.cfg), "vocab": self.vocab, "state_dict": self.model.state_dict(),
                    "key": key, "log": self.log, "photo_dim": 0 if self.photo is None else self.photo.shape[1]}, buf)
        atomic_write_bytes(path, buf.getvalue())


def photo_key(photo) -> str:
    if photo is None:
        return "none"
    return hashlib.sha1(np.ascontiguousarray(photo[0]).tobytes()).hexdigest()[:16]


def two_tower(ctx: Context, cfg: TwoTowerConfig, photo, out_dir: Path, split: str = "val", retrain: bool = False,
              progress: bool = True, fit_on: str = "allowed") -> TwoTowerRecommender:
    """The two-tower model for evaluating ``split``, loaded from ``out_dir/two_tower_<split>.pt`` when that
    was trained with the same data, config, photos and splits; else trained and saved there.

    ``fit_on="allowed"``: trained on the (history -> next day) pairs of the splits ``split`` may know
    (val: train; test: train + val; next: all), like the baselines. ``"train"``: train split only.
    """
    splits = ALLOWED[split] if fit_on == "allowed" else ("train",)
    path = Path(out_dir) / f"two_tower_{split}.pt"
    rec = TwoTowerRecommender(ctx, cfg, photo, splits=splits)
    key = rec.key(photo_key(photo))
    if path.exists() and not retrain:
        ckpt = torch.load(path, map_location="cpu", weights_only=False)
        if ckpt.get("key") == key:
            rec = TwoTowerRecommender(ctx, cfg, photo, vocab=ckpt["vocab"], splits=splits)
            rec.model.load_state_dict(ckpt["state_dict"])
            rec.model.eval()
            rec.log = ckpt.get("log", [])
            print(f"[recommend] reusing {path}")
            return rec
        print(f"[recommend] {path} was trained with other data/settings/photos; retraining")
    t0 = time.time()
    rec.fit(progress=progress)
    print(f"[recommend] trained two_tower on {'+'.join(splits)} pairs in {time.time() - t0:.1f}s -> {path}")
    rec.save(path, key)
    return rec
