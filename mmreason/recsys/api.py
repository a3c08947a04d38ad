"""One customer's top-K for their next purchase day (``recommend_for_user``).
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd

from mmreason import paths
from mmreason.recsys.baselines import BASELINES, repurchase_then
from mmreason.recsys.context import UnknownUser, load_context
from mmreason.recsys.ranking import top_k
from mmreason.recsys.twotower import PhotoEmbeddings, TwoTowerConfig, photo_matrix, two_tower

MODELS = ["popularity", "popularity_global", "recent_popularity", "repurchase", "itemknn", "two_tower",
          "repurchase+two_tower"]
LEARNED = ("two_tower", "repurchase+two_tower")  # the models that need the trained two-tower network


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
