"""Candidates and ranking for a customer's next purchase day: ``python -m mmreason.recommend``.

Protocol (the per-customer temporal split of ``mmreason.data``). To evaluate on split S (val or test),
every customer with an S day and at least one earlier purchase is asked for that day: the *history* is
every purchase strictly before it (for test it includes the customer's val day), the *targets* are the
articles bought on it. Every model ranks the whole catalogue for the same customers.

What a model may know besides the customer's own history -- never the S day itself:
* ``popularity``, ``recent_popularity``, ``itemknn``: other customers' purchases from the allowed splits
  (val: train; test: train + val) made strictly *before the customer's own evaluation day* ("as of").
  ``recent_popularity`` counts the 4 weeks before each customer's own day (ties by as-of popularity).
* ``popularity_global``: counts over the allowed splits on all dates, the simple global baseline.
  Days are per customer, so it sees other customers' purchases made *after* some evaluation days; its
  gap to ``popularity`` shows what that cross-customer look-ahead is worth.
* ``repurchase``: the customer's own earlier articles (and other colours of them), recency-weighted.
* ``two_tower`` (photo + attributes + id; user: attention over recent purchases + profile): trained on
  the (history -> next day) pairs of the allowed splits, all dates (val: train pairs; test: train + val
  pairs; ``--two-tower-fit train`` for train only). Like ``popularity_global`` it has seen other
  customers' purchases made after some evaluation days.
* ``repurchase+two_tower``: repurchase's candidates first, in its order; the two-tower ranks the rest.

Every model is scored twice: with the customer's already-bought articles kept, and excluded.
``recommend_for_user`` then excludes them for a model only where that helped on val.

``--user ID`` shows one customer's top-K for their next day; ``--explain`` adds a reason per article
through ``explain_fn`` (see ``load_explainer``), once a trained reason generator exists.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import math
import sys
import time
from dataclasses import asdict, dataclass
from functools import lru_cache
from pathlib import Path
from typing import Callable

import numpy as np
import pandas as pd
import scipy.sparse as sp
import torch
import torch.nn as nn
import torch.nn.functional as F
from tqdm.auto import tqdm

from mmreason import paths
from mmreason.data import load_tables
from mmreason.io import DataError, atomic_write_bytes, atomic_write_json

ATTRIBUTES = ["product_type_name", "colour_group_name", "graphical_appearance_name", "section_name",
              "garment_group_name", "index_group_name"]
USER_FIELDS = ["age_band", "club_member_status", "fashion_news_frequency"]
MODELS = ["popularity", "popularity_global", "recent_popularity", "repurchase", "itemknn", "two_tower",
          "repurchase+two_tower"]
LEARNED = ("two_tower", "repurchase+two_tower")  # the models that need the trained two-tower network
ALLOWED = {"val": ("train",), "test": ("train", "val"), "next": ("train", "val", "test")}
RECENT_DAYS = 28
KS = (10, 50)

# (customer_id, article_ids, day) -> one reason per article; ``load_explainer`` wires the reason generator.
ExplainFn = Callable[[str, list[int], pd.Timestamp], list[str]]
PhotoEmbeddings = dict | tuple  # {article_id: vector} or (article_ids (N,), matrix (N, D))


class UnknownUser(KeyError):
    pass


def day_number(values) -> np.ndarray:
    """Days since 1970-01-01 as int64 (from datetimes)."""
    return np.asarray(values).astype("datetime64[D]").astype(np.int64)


# --------------------------------------------------------------------------- metrics

def hit_rate_at_k(ranked, targets: set, k: int) -> float:
    """1 if any target is in the top k."""
    return float(any(a in targets for a in list(ranked)[:k]))


def recall_at_k(ranked, targets: set, k: int) -> float:
    """Share of the targets found in the top k (denominator: all targets, not min(k, |targets|))."""
    return sum(a in targets for a in list(ranked)[:k]) / len(targets)


def ndcg_at_k(ranked, targets: set, k: int) -> float:
    """Binary-relevance NDCG: sum 1/log2(rank+1) over hits, over the ideal for min(|targets|, k) hits."""
    dcg = sum(1.0 / math.log2(r + 2) for r, a in enumerate(list(ranked)[:k]) if a in targets)
    ideal = sum(1.0 / math.log2(r + 2) for r in range(min(len(targets), k)))
    return dcg / ideal


def ranking_metrics(rankings, targets: list[set], ks=KS) -> dict[str, float]:
    """Mean HR/Recall/NDCG@k over users; ``rankings[u]`` is a ranked list, ``targets[u]`` a non-empty set."""
    out = {}
    for k in ks:
        out[f"HR@{k}"] = float(np.mean([hit_rate_at_k(r, t, k) for r, t in zip(rankings, targets)]))
        out[f"Recall@{k}"] = float(np.mean([recall_at_k(r, t, k) for r, t in zip(rankings, targets)]))
        out[f"NDCG@{k}"] = float(np.mean([ndcg_at_k(r, t, k) for r, t in zip(rankings, targets)]))
    return out


# --------------------------------------------------------------------------- the evaluation task

@dataclass
class Task:
    """Who is asked, as of when, with which history, and what the models may count."""

    split: str
    customers: list[str]
    user_rows: np.ndarray  # (U,) rows in Context.users
    cutoff: np.ndarray  # (U,) day number of the asked day
    history: list[np.ndarray]  # item rows bought strictly before the cutoff, oldest first
    history_days: list[np.ndarray]
    targets: list[set]  # item rows bought on the cutoff day (empty for "next")
    pool_item: np.ndarray  # purchases of everyone from the allowed splits, sorted by day
    pool_user: np.ndarray
    pool_day: np.ndarray
    n_cold: int = 0  # customers with an S day but no earlier purchase (not evaluated)


class Context:
    """The prepared tables as integer arrays: items and users by row, interactions by (user, day)."""

    def __init__(self, tables: dict[str, pd.DataFrame], fingerprint: str = ""):
        self.items = tables["items"].reset_index(drop=True)
        self.users = tables["users"].reset_index(drop=True)
        self.fingerprint = fingerprint
        self.item_row = pd.Series(np.arange(len(self.items)), index=self.items["article_id"].to_numpy())
        self.user_row = pd.Series(np.arange(len(self.users)), index=self.users["customer_id"].to_numpy())
        inter = tables["interactions"]
        self.i_user = self.user_row.loc[inter["customer_id"].to_numpy()].to_numpy()
        self.i_item = self.item_row.loc[inter["article_id"].to_numpy()].to_numpy()
        self.i_day = day_number(inter["t_dat"])
        self.i_split = inter["split_temporal"].to_numpy().astype(str)
        order = np.lexsort((self.i_item, self.i_day, self.i_user))  # by user, then day, then item row
        self.i_user, self.i_item = self.i_user[order], self.i_item[order]
        self.i_day, self.i_split = self.i_day[order], self.i_split[order]
        self.user_start = np.searchsorted(self.i_user, np.arange(len(self.users) + 1))
        self.product = pd.factorize(self.items["product_code"])[0]

    @property
    def n_items(self) -> int:
        return len(self.items)

    def resolve_user(self, user_id: str) -> str:
        """A full customer_id, or a unique prefix of one (at least 6 characters)."""
        if user_id in self.user_row.index:
            return user_id
        hits = [c for c in self.user_row.index if len(user_id) >= 6 and c.startswith(user_id)] if user_id else []
        if len(hits) == 1:
            return hits[0]
        many = f" ({len(hits)} customers share that prefix)" if hits else ""
        raise UnknownUser(f"unknown customer_id {user_id!r}{many}")

    def task(self, split: str, customers: list[str] | None = None) -> Task:
        if split not in ALLOWED:
            raise ValueError(f"split must be one of {list(ALLOWED)}, got {split!r}")
        pool = np.isin(self.i_split, ALLOWED[split])
        order = np.argsort(self.i_day[pool], kind="stable")
        pool_item, pool_user, pool_day = self.i_item[pool][order], self.i_user[pool][order], self.i_day[pool][order]
        if split == "next":  # as of the day after the data ends, everything is history
            rows = self.user_row.loc[customers].to_numpy() if customers is not None else np.arange(len(self.users))
            cut = np.full(len(rows), self.i_day.max() + 1)
        else:
            sel = self.i_split == split
            first = pd.Series(self.i_day[sel]).groupby(self.i_user[sel]).min()
            rows, cut = first.index.to_numpy(), first.to_numpy()
            if customers is not None:
                keep = np.isin(rows, self.user_row.loc[customers].to_numpy())
                rows, cut = rows[keep], cut[keep]
        kept, cuts, history, history_days, targets, n_cold = [], [], [], [], [], 0
        for u, c in zip(rows, cut):
            s, e = self.user_start[u], self.user_start[u + 1]
            days, items = self.i_day[s:e], self.i_item[s:e]
            before = days < c
            if split != "next" and not before.any():
                n_cold += 1
                continue
            kept.append(u), cuts.append(c)
            history.append(items[before])
            history_days.append(days[before])
            targets.append(set(items[days == c].tolist()))
        kept, cuts = np.array(kept, dtype=np.int64), np.array(cuts, dtype=np.int64)
        return Task(split, self.users["customer_id"].to_numpy()[kept].tolist(), kept, cuts, history, history_days,
                    targets, pool_item, pool_user, pool_day, n_cold)


# --------------------------------------------------------------------------- baselines

def _counts(items: np.ndarray, n: int) -> np.ndarray:
    return np.bincount(items, minlength=n).astype(np.float64)


def _asof_counts(task: Task, n: int, since_days: int | None = None) -> Callable[[int], np.ndarray]:
    """cutoff -> purchases per item in the pool strictly before it (and within ``since_days`` of it)."""
    cache = {}

    def f(c):
        if c not in cache:
            hi = np.searchsorted(task.pool_day, c, "left")
            lo = 0 if since_days is None else np.searchsorted(task.pool_day, c - since_days, "left")
            cache[c] = _counts(task.pool_item[lo:hi], n)
        return cache[c]
    return f


def _tiebreak(counts: np.ndarray) -> np.ndarray:
    """Popularity scaled into [0, 1): added to integer-valued scores it only orders ties."""
    return counts / (counts.max() + 1.0)


def score_popularity(ctx: Context, task: Task, idx: np.ndarray) -> np.ndarray:
    f = _asof_counts(task, ctx.n_items)
    return np.stack([f(task.cutoff[i]) for i in idx])


def score_popularity_global(ctx: Context, task: Task, idx: np.ndarray) -> np.ndarray:
    return np.tile(_counts(task.pool_item, ctx.n_items), (len(idx), 1))


def score_recent_popularity(ctx: Context, task: Task, idx: np.ndarray) -> np.ndarray:
    recent, alltime = _asof_counts(task, ctx.n_items, RECENT_DAYS), _asof_counts(task, ctx.n_items)
    return np.stack([recent(task.cutoff[i]) + _tiebreak(alltime(task.cutoff[i])) for i in idx])


def score_repurchase(ctx: Context, task: Task, idx: np.ndarray, product_weight: float = 0.5) -> np.ndarray:
    """Own earlier articles weighted 1/(1 + weeks ago); other colours of them at ``product_weight``."""
    pop = _asof_counts(task, ctx.n_items)
    out = np.empty((len(idx), ctx.n_items))
    for j, i in enumerate(idx):
        w = 1.0 / (1.0 + (task.cutoff[i] - task.history_days[i]) / 7.0)
        own = np.bincount(task.history[i], weights=w, minlength=ctx.n_items)
        prod = np.bincount(ctx.product[task.history[i]], weights=w, minlength=ctx.product.max() + 1)
        out[j] = own + product_weight * prod[ctx.product] * (own == 0)
        out[j] = 1e3 * out[j] + _tiebreak(pop(task.cutoff[i]))
    return out


def score_itemknn(ctx: Context, task: Task, idx: np.ndarray) -> np.ndarray:
    """Sum over history items of the item-item cosine on who bought what (pool as of the cutoff)."""
    n_users = len(ctx.users)
    pop = _asof_counts(task, ctx.n_items)
    out = np.empty((len(idx), ctx.n_items))
    cache: dict[int, tuple] = {}
    for j, i in enumerate(tqdm(idx, desc="itemknn", unit="user", mininterval=1.0, disable=None, leave=False)):
        c = task.cutoff[i]
        if c not in cache:
            hi = np.searchsorted(task.pool_day, c, "left")
            x = sp.csr_matrix((np.ones(hi), (task.pool_user[:hi], task.pool_item[:hi])), shape=(n_users, ctx.n_items))
            x.data[:] = 1.0  # bought at all, not how often
            xt = x.T.tocsr()
            norm = np.sqrt(np.asarray(x.sum(0)).ravel())
            cache = {c: (x, xt, norm)}  # cutoffs arrive in any order; keep only the last
        x, xt, norm = cache[c]
        hist = np.unique(task.history[i])
        hist = hist[norm[hist] > 0]
        s = np.zeros(ctx.n_items)
        if len(hist):
            w = x[:, hist] @ (1.0 / norm[hist])  # (users,) how strongly each co-buyer links to the history
            s = np.asarray(xt @ w).ravel()
            s = np.divide(s, norm, out=np.zeros_like(s), where=norm > 0)
            s[hist] -= 1.0  # drop each history item's similarity to itself
        out[j] = 1e3 * s + _tiebreak(pop(c))
    return out


def repurchase_then(scores: Callable) -> Callable:
    """A scorer ranking ``score_repurchase``'s evidence first (own earlier articles and their other colours,
    in its order), then every other article by ``scores`` (e.g. the two-tower's) instead of by popularity."""
    def fn(ctx: Context, task: Task, idx: np.ndarray) -> np.ndarray:
        rep, other = score_repurchase(ctx, task, idx), np.asarray(scores(ctx, task, idx), dtype=np.float64)
        # repurchase evidence scores >= 1 (1e3 x a weight > 1e-3), the popularity tiebreak alone < 1
        return np.where(rep >= 1.0, other.max(axis=1, keepdims=True) + rep, other)
    return fn


BASELINES = {"popularity": score_popularity, "popularity_global": score_popularity_global,
             "recent_popularity": score_recent_popularity, "repurchase": score_repurchase, "itemknn": score_itemknn}


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


# --------------------------------------------------------------------------- ranking and evaluation

def top_k(scores: np.ndarray, k: int, exclude: list[np.ndarray] | None = None) -> np.ndarray:
    """(U, N) scores -> (U, k) item rows, best first, ties to the lower row; ``exclude``: rows per user
    left out. Padded with -1 where fewer than k items remain."""
    s = -np.asarray(scores, dtype=np.float64).copy()
    if exclude is not None:
        for j, ex in enumerate(exclude):
            s[j, ex] = np.inf
    kk = min(k, s.shape[1])
    part = np.argpartition(s, kk - 1, axis=1)[:, :kk]
    out = np.full((len(s), k), -1, dtype=np.int64)
    for j in range(len(s)):
        # Every item scoring at least the kk-th best, so ties at the boundary are resolved exactly.
        cand = np.flatnonzero((s[j] <= s[j, part[j]].max()) & (s[j] < np.inf))
        best = cand[np.lexsort((cand, s[j, cand]))][:kk]
        out[j, :len(best)] = best
    return out


def evaluate(ctx: Context, task: Task, scorers: dict[str, Callable], ks=KS, chunk: int = 256) -> dict:
    """Metrics of every scorer with already-bought articles kept and excluded, on the same customers."""
    idx = np.arange(len(task.customers))
    results = {}
    for name, fn in scorers.items():
        t0 = time.time()
        ranks = {"kept": [], "excluded": []}
        for c in np.array_split(idx, max(1, math.ceil(len(idx) / chunk))):
            s = fn(ctx, task, c)
            ranks["kept"].append(top_k(s, max(ks)))
            ranks["excluded"].append(top_k(s, max(ks), [task.history[i] for i in c]))
        for policy, r in ranks.items():
            results[f"{name}|{policy}"] = {"model": name, "bought": policy, "users": len(idx),
                                           **ranking_metrics(np.concatenate(r), task.targets, ks),
                                           "seconds": round(time.time() - t0, 2)}
    return results


def markdown_table(rows: list[dict], columns: list[str]) -> str:
    def fmt(v):
        return f"{v:.4f}" if isinstance(v, float) else str(v)
    lines = ["| " + " | ".join(columns) + " |", "|" + "|".join(" --- " for _ in columns) + "|"]
    lines += ["| " + " | ".join(fmt(r.get(c, "")) for c in columns) + " |" for r in rows]
    return "\n".join(lines)


# --------------------------------------------------------------------------- one customer

def load_context(data_dir) -> Context:
    """The prepared tables of ``data_dir`` as a ``Context``, cached per folder and manifest fingerprint."""
    manifest = Path(data_dir) / "manifest.json"
    if not manifest.exists():
        raise DataError(f"{data_dir}: no prepared tables; run `python -m mmreason.data` first")
    return _load_context_cached(str(Path(data_dir).resolve()), json.loads(manifest.read_text()).get("fingerprint", ""))


@lru_cache(maxsize=2)
def _load_context_cached(data_dir: str, fingerprint: str) -> Context:
    return Context(load_tables(Path(data_dir), names=("users", "items", "interactions")), fingerprint)


def default_exclusion(model_name: str, out_dir: Path) -> bool:
    """Exclude already-bought articles for a model only if that scored higher NDCG@10 on val."""
    path = Path(out_dir) / "val" / "metrics.json"
    if not path.exists():
        return False
    res = json.loads(path.read_text())["results"]
    kept, excl = res.get(f"{model_name}|kept"), res.get(f"{model_name}|excluded")
    return bool(kept and excl and excl["NDCG@10"] > kept["NDCG@10"])


def recommend_for_user(model_name: str, user_id: str, k: int = 10, *, split: str = "next", data_dir=None,
                       out_dir=None, photo_embeddings: PhotoEmbeddings | None = None,
                       exclude_bought: bool | None = None, config: TwoTowerConfig | None = None,
                       fit_on: str = "allowed") -> pd.DataFrame:
    """Top-``k`` articles for ``user_id``'s next purchase day.

    ``split="next"``: after the end of the data (every purchase is history); ``"val"``/``"test"``: the
    customer's val/test day, and ``bought`` marks what they really bought then. Raises ``UnknownUser``.
    """
    if model_name not in MODELS:
        raise ValueError(f"unknown model {model_name!r}; choose from {MODELS}")
    data_dir = Path(data_dir or paths.artifacts_dir() / "data" / "hm")
    out_dir = Path(out_dir or paths.artifacts_dir() / "recommend")
    ctx = load_context(data_dir)
    cid = ctx.resolve_user(user_id)
    task = ctx.task(split, [cid])
    if not task.customers:
        raise UnknownUser(f"customer {cid[:10]}… has no {split} day with earlier purchases")
    if model_name in LEARNED:
        photo = photo_matrix(photo_embeddings, ctx.items["article_id"])
        fn = two_tower(ctx, config or TwoTowerConfig(), photo, out_dir, split, fit_on=fit_on).scores
        fn = repurchase_then(fn) if model_name == "repurchase+two_tower" else fn
    else:
        fn = BASELINES[model_name]
    exclude = default_exclusion(model_name, out_dir) if exclude_bought is None else exclude_bought
    s = fn(ctx, task, np.array([0]))
    rows = top_k(s, k, [task.history[0]] if exclude else None)[0]
    rows = rows[rows >= 0]
    items = ctx.items.iloc[rows]
    return pd.DataFrame({
        "rank": np.arange(1, len(rows) + 1), "article_id": items["article_id"].to_numpy(),
        "prod_name": items["prod_name"].to_numpy(), "product_type_name": items["product_type_name"].to_numpy(),
        "colour_group_name": items["colour_group_name"].to_numpy(), "score": s[0, rows],
        "already_bought": np.isin(rows, task.history[0]),
        **({"bought": [r in task.targets[0] for r in rows]} if split != "next" else {}),
    }).assign(customer_id=cid, model=model_name, excluded_bought=exclude,
              day=pd.Timestamp(np.datetime64(int(task.cutoff[0]), "D")))


# --------------------------------------------------------------------------- explanations

def load_explainer(generator) -> ExplainFn:
    """The reason generator in ``generator`` (a run folder or checkpoint) as ``explain_fn(customer_id,
    article_ids, day) -> reasons``; prompts are built as of ``day`` like the training examples."""
    from mmreason.explain import Explainer

    return Explainer(generator)


def _explain(args, cid: str, frame: pd.DataFrame, explain_fn: ExplainFn | None) -> pd.DataFrame:
    from mmreason.lit import find_checkpoint

    run = paths.resolve(args.generator) if args.generator else paths.run_dir()  # the default `mmreason.train` run
    if explain_fn is None:
        if find_checkpoint(run) is None:
            print(f"[recommend] reasons need a trained reason generator (no checkpoint at {run}; "
                  "see `python -m mmreason.train`)")
            return frame
        explain_fn = load_explainer(run)
    ids, day = frame["article_id"].tolist(), frame["day"].iloc[0]
    if hasattr(explain_fn, "explain"):  # an Explainer: also say when no candidate passed the filter
        ex = explain_fn.explain(cid, ids, day)
        return frame.assign(reason=[e.reason for e in ex],
                            filter=["passed" if e.passed_filter else "failed: " + ", ".join(e.rejected[0][1]) for e in ex])
    return frame.assign(reason=explain_fn(cid, ids, day))


# --------------------------------------------------------------------------- CLI

def get_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m mmreason.recommend", description=__doc__.split("\n")[0])
    p.add_argument("--data", default=None, help="prepared tables (default artifacts/data/hm)")
    p.add_argument("--out", default=None, help="output folder (default artifacts/recommend)")
    p.add_argument("--split", choices=["val", "test", "next"], default=None,
                   help="evaluation split (default val); with --user also 'next' (the default there)")
    p.add_argument("--models", default=",".join(MODELS), help=f"comma-separated, from {','.join(MODELS)}")
    p.add_argument("--embeddings", default="auto", help=EMBEDDINGS_HELP)
    p.add_argument("--retrain", action="store_true", help="train the two-tower model even if a matching one is saved")
    p.add_argument("--two-tower-fit", choices=["allowed", "train"], default="allowed",
                   help="pairs the two-tower model learns from: the splits the evaluated split may know "
                        "(val: train, test: train+val, next: all; default) or the train split only")
    p.add_argument("--user", default=None, help="show one customer's top-K (full id or a unique prefix)")
    p.add_argument("--model", default="two_tower", choices=MODELS, help="the model used with --user")
    p.add_argument("-k", "--k", type=int, default=10, help="articles shown with --user")
    p.add_argument("--explain", action="store_true", help="with --user: a generated reason per article")
    p.add_argument("--generator", default=None, help=f"reason-generator run folder or checkpoint (default artifacts/runs/{paths.DEFAULT_RUN})")
    p.add_argument("--no-progress", action="store_true")
    for f in TwoTowerConfig.__dataclass_fields__.values():  # --dim, --epochs, ... straight from the config
        kind = (lambda v: v.lower() in ("1", "true", "yes")) if isinstance(f.default, bool) else type(f.default)
        p.add_argument(f"--{f.name.replace('_', '-')}", type=kind, default=f.default,
                       help=f"two-tower {f.name} (default {f.default})")
    return p


def main(argv=None, explain_fn: ExplainFn | None = None) -> int:
    args = get_parser().parse_args(argv)
    data_dir = Path(args.data or paths.artifacts_dir() / "data" / "hm")
    out_dir = Path(args.out or paths.artifacts_dir() / "recommend")
    cfg = TwoTowerConfig(**{f: getattr(args, f) for f in TwoTowerConfig.__dataclass_fields__})
    args.embeddings = resolve_embeddings(args.embeddings, data_dir)
    try:
        photos = load_photo_embeddings(args.embeddings) if args.embeddings else None
        ctx = load_context(data_dir)
        if args.user is not None:
            cid = ctx.resolve_user(args.user)
            split = args.split or "next"
            if args.model in LEARNED and args.retrain:
                two_tower(ctx, cfg, photo_matrix(photos, ctx.items["article_id"]), out_dir, split, retrain=True,
                          progress=not args.no_progress, fit_on=args.two_tower_fit)
            frame = recommend_for_user(args.model, cid, args.k, split=split, data_dir=data_dir, out_dir=out_dir,
                                       photo_embeddings=photos, config=cfg, fit_on=args.two_tower_fit)
            if args.explain:
                frame = _explain(args, cid, frame, explain_fn)
            cols = [c for c in ["rank", "article_id", "prod_name", "product_type_name", "colour_group_name", "score",
                                "already_bought", "bought", "reason", "filter"] if c in frame]
            print(f"[recommend] {args.model} for customer {cid[:10]}… ({split} day; already-bought articles "
                  f"{'excluded' if frame['excluded_bought'].iloc[0] else 'kept'})")
            print(markdown_table(frame[cols].to_dict("records"), cols))
            return 0
        split = args.split or "val"
        if split == "next":
            raise DataError("--split next has no targets to evaluate; use it with --user")
        models = [m.strip() for m in args.models.split(",") if m.strip()]
        bad = [m for m in models if m not in MODELS]
        if bad:
            raise DataError(f"unknown model(s) {', '.join(bad)}; choose from {', '.join(MODELS)}")
    except (UnknownUser, DataError) as e:
        print(f"error: {e.args[0] if isinstance(e, UnknownUser) else e}", file=sys.stderr)
        return 2
    t0 = time.time()
    task = ctx.task(split)
    print(f"[recommend] {split}: {len(task.customers)} customers, {sum(map(len, task.targets))} target articles, "
          f"{ctx.n_items} candidates; {task.n_cold} customers without earlier purchases not evaluated")
    scorers = {m: BASELINES[m] for m in models if m in BASELINES}
    train_s = None
    if any(m in LEARNED for m in models):
        t1 = time.time()
        rec = two_tower(ctx, cfg, photo_matrix(photos, ctx.items["article_id"]), out_dir, split, retrain=args.retrain,
                        progress=not args.no_progress, fit_on=args.two_tower_fit)
        train_s = round(time.time() - t1, 1)
        scorers |= {m: rec.scores if m == "two_tower" else repurchase_then(rec.scores) for m in models if m in LEARNED}
    results = evaluate(ctx, task, scorers)
    cols = ["model", "bought", "users"] + [f"{m}@{k}" for k in KS for m in ("HR", "Recall", "NDCG")]
    table = markdown_table(list(results.values()), cols)
    notes = (f"Split {split}: {len(task.customers)} customers with a {split} day and earlier purchases "
             f"({task.n_cold} without, not evaluated); candidates: all {ctx.n_items} articles. "
             f"'bought': the customer's already-bought articles kept in or excluded from the ranking. "
             f"Photo embeddings: {args.embeddings or 'none'}. Others' purchases usable: "
             f"{'+'.join(ALLOWED[split])} splits (as of each customer's day, except popularity_global and "
             f"two_tower, fitted on {'+'.join(ALLOWED[split]) if args.two_tower_fit == 'allowed' else 'train'} "
             f"pairs of all dates).")
    print(table)
    out = out_dir / split
    atomic_write_json(out / "metrics.json", {
        "split": split, "results": results, "customers": len(task.customers), "cold_customers": task.n_cold,
        "targets": int(sum(map(len, task.targets))), "candidates": ctx.n_items, "embeddings": args.embeddings,
        "two_tower": {"config": asdict(cfg), "fit_on": ALLOWED[split] if args.two_tower_fit == "allowed" else ["train"],
                      "train_or_load_seconds": train_s, "log": rec.log} if train_s is not None else None,
        "seconds": round(time.time() - t0, 1), "data_fingerprint": ctx.fingerprint})
    atomic_write_bytes(out / "metrics.md", f"# Recommendation, {split}\n\n{notes}\n\n{table}\n".encode())
    print(f"[recommend] wrote {out}/metrics.json and metrics.md ({time.time() - t0:.1f}s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
