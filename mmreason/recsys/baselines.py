"""The non-learned recommenders: popularity (as of, global, recent), repurchase, item-kNN.
"""
from __future__ import annotations

from typing import Callable

import numpy as np
import scipy.sparse as sp
from tqdm.auto import tqdm

from mmreason.recsys.context import RECENT_DAYS, Context, Task

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
