"""Ranking metrics (HR, recall, NDCG at K), top-K with exclusions, and the evaluation of scorers on a task.
"""
from __future__ import annotations

import math
import time
from typing import Callable

import numpy as np

from mmreason.recsys.context import Context, Task

KS = (10, 50)


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
