"""Training and measuring the feedback model: (customer, article, reason) pairs, AUCs, text
sensitivity; ``run(FeedbackRun(...), FeedbackConfig(...))`` is ``python -m mmreason.feedback`` as a function (RL trains its reward this way).
"""
from __future__ import annotations

import sys
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np
import pandas as pd
from sklearn.metrics import roc_auc_score
from tqdm.auto import tqdm

from mmreason import paths
from mmreason.datasets.reasons import Purchase, build_hook, product_copy
from mmreason.io import DataError, atomic_write_bytes, atomic_write_json
from mmreason.recsys.context import Context, load_context
from mmreason.recsys.feedback import HISTORY_FIELDS, KINDS, FeedbackConfig, FeedbackModel
from mmreason.recsys.ranking import markdown_table
from mmreason.recsys.twotower import load_photo_embeddings, photo_matrix, resolve_embeddings

# --------------------------------------------------------------------------- pairs

def silver_reason(article: dict, history: list[Purchase]) -> str:
    """The reason ``mmreason.data`` would give: the hook on this history + the article's copy."""
    hook = build_hook(article, history)
    return f"{hook.text} {product_copy(article)[0]}".strip()


def build_pairs(ctx: Context, negatives: int = 4, seed: int = 0, progress: bool = True) -> pd.DataFrame:
    """One row per (customer, article, day): the purchases (label 1) and sampled non-purchases (label 0),
    each with its silver reason for that customer as of that day."""
    rng = np.random.default_rng(seed)
    week = ctx.i_day // 7
    bought_in_week = pd.Series(ctx.i_item).groupby(week).unique().to_dict()
    records = ctx.items.to_dict("records")
    aid = ctx.items["article_id"].to_numpy()
    fields = {r["article_id"]: tuple(r[f] for f in HISTORY_FIELDS) for r in records}
    rows = []
    for u in tqdm(range(len(ctx.users)), desc="pairs", unit="user", mininterval=1.0, disable=None if progress else True):
        s, e = ctx.user_start[u], ctx.user_start[u + 1]
        days, items, splits = ctx.i_day[s:e], ctx.i_item[s:e], ctx.i_split[s:e]
        past: list[tuple[int, int]] = []  # (day, article_id) of earlier purchases, as mmreason.data orders them
        for d in np.unique(days):
            on_day = np.flatnonzero(days == d)
            # History as of the start of the day, most recent first.
            history = [Purchase(a, int(d - d0), *fields[a]) for d0, a in reversed(past)]
            # Not bought by this customer from this day to the end of its 7-day period. Earlier buys that
            # week stay eligible: barring them would make "bought it days ago" a positive-only feature.
            mine = set(items[(days >= d) & (days // 7 == d // 7)].tolist())
            pool = [i for i in bought_in_week[d // 7].tolist() if i not in mine]
            want = negatives * len(on_day)
            neg = [int(i) for i in rng.choice(pool, size=min(want, len(pool)), replace=False)] if pool else []
            while len(neg) < want and len(mine) + len(neg) < ctx.n_items:  # a quiet week: top up from the catalogue
                i = int(rng.integers(ctx.n_items))
                if i not in mine and i not in neg:
                    neg.append(i)
            for label, rows_ in ((1, items[on_day].tolist()), (0, neg)):
                for i in rows_:
                    rows.append((u, int(i), int(d), label, splits[on_day[0]], silver_reason(records[i], history)))
            past += sorted((int(d), int(aid[i])) for i in items[on_day])
    return pd.DataFrame(rows, columns=["user", "item", "day", "label", "split", "reason"])


# --------------------------------------------------------------------------- evaluation

def auc(y, p) -> float:
    return float(roc_auc_score(y, p)) if len(set(np.asarray(y).tolist())) == 2 else float("nan")


def evaluate(ctx: Context, pairs: pd.DataFrame, config: FeedbackConfig, photo=None, progress: bool = True):
    """Fit the full model and the no-text / text-only ablations on train days; AUCs and text sensitivity.

    Sensitivity: on each split, the full model's scores with the real reason vs an empty reason and vs
    the reason of a random other pair of that split (same customer/article features, other text)."""
    full = FeedbackModel(ctx, config, photo)
    models = {k: FeedbackModel(ctx, config, photo, k, feats=full.feats) for k in KINDS[1:]} | {"full": full}
    rng = np.random.default_rng(config.seed)
    blocks = {}
    for split in tqdm(("train", "val", "test"), desc="features", disable=None if progress else True, leave=False):
        part = pairs[pairs["split"] == split]
        if len(part):
            blocks[split] = (part, full.blocks(part["user"], part["item"], part["day"], part["reason"], split))
    part, b = blocks["train"]
    for m in models.values():
        m.fit_blocks(b, part["label"])
    aucs, sens = {}, {}
    for split, (part, b) in blocks.items():
        y, u, i = part["label"].to_numpy(), part["user"].to_numpy(), part["item"].to_numpy()
        p = full.predict_blocks(b)
        p_empty = full.predict_blocks(full.with_reasons(b, u, i, [""] * len(part)))
        p_shuf = full.predict_blocks(full.with_reasons(b, u, i, part["reason"].to_numpy()[rng.permutation(len(part))]))
        aucs[split] = {"pairs": len(part), "positives": int(y.sum()), "with_text": auc(y, p),
                       "no_text_features": auc(y, models["no_text"].predict_blocks(b)), "empty_reasons": auc(y, p_empty),
                       "shuffled_reasons": auc(y, p_shuf), "text_only": auc(y, models["text_only"].predict_blocks(b))}
        sens[split] = {"mean_abs_real_minus_empty": float(np.abs(p - p_empty).mean()),
                       "mean_abs_real_minus_shuffled": float(np.abs(p - p_shuf).mean()),
                       "mean_p_pos_real": float(p[y == 1].mean()), "mean_p_pos_empty": float(p_empty[y == 1].mean()),
                       "mean_p_neg_real": float(p[y == 0].mean()), "mean_p_neg_empty": float(p_empty[y == 0].mean())}
    return full, aucs, sens


# --------------------------------------------------------------------------- CLI

@dataclass
class FeedbackRun:
    """Train, measure and save the purchase-feedback model: ``python -m mmreason.feedback``.

    Args:
        data: prepared tables (default artifacts/data/hm)
        out: output folder (default artifacts/feedback)
        embeddings: the photo embedding cache (its help: ``recsys.twotower.EMBEDDINGS_HELP``)
        progress: progress bars (--no-progress: none)
    """
    data: str | None = None
    out: str | None = None
    embeddings: str | None = "auto"
    progress: bool = True


def run(args: FeedbackRun | None = None, cfg: FeedbackConfig | None = None) -> int:
    """``python -m mmreason.feedback`` as a function: train, measure and save the feedback model; 2 on bad input."""
    args, cfg = replace(args or FeedbackRun()), cfg or FeedbackConfig()
    data_dir = Path(args.data or paths.artifacts_dir() / "data" / "hm")
    out = Path(args.out or paths.artifacts_dir() / "feedback")
    args.embeddings = resolve_embeddings(args.embeddings, data_dir)
    t0 = time.time()
    try:
        ctx = load_context(data_dir)
        photo = photo_matrix(load_photo_embeddings(args.embeddings), ctx.items["article_id"]) if args.embeddings else None
    except DataError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    pairs = build_pairs(ctx, cfg.negatives, cfg.seed, progress=args.progress)
    t_pairs = time.time() - t0
    print(f"[feedback] {len(pairs)} pairs ({int(pairs['label'].sum())} purchases, {cfg.negatives} sampled "
          f"non-purchases each) in {t_pairs:.1f}s; by split: {pairs['split'].value_counts().to_dict()}")
    if (pairs["split"] == "train").sum() == 0 or pairs.loc[pairs["split"] == "train", "label"].nunique() < 2:
        print("error: no training pairs of both classes", file=sys.stderr)
        return 2
    model, aucs, sens = evaluate(ctx, pairs, cfg, photo, progress=args.progress)
    rows = [{"split": s, **v} for s, v in aucs.items()]
    table = markdown_table(rows, ["split", "pairs", "positives", "with_text", "no_text_features", "empty_reasons",
                                  "shuffled_reasons", "text_only"])
    srows = [{"split": s, **v} for s, v in sens.items()]
    stable = markdown_table(srows, ["split", "mean_abs_real_minus_empty", "mean_abs_real_minus_shuffled",
                                    "mean_p_pos_real", "mean_p_pos_empty", "mean_p_neg_real", "mean_p_neg_empty"])
    print(f"AUC (trained on train days):\n{table}\n\nText sensitivity (how much the reason moves the score):\n{stable}")
    model.save(out / "model.pkl")
    n_dense = len(model.feats.names(True))
    coef = dict(zip(model.feature_names()[:n_dense], model.clf.coef_[0][:n_dense].round(3).tolist()))
    atomic_write_json(out / "metrics.json", {"auc": aucs, "text_sensitivity": sens, "config": asdict(cfg),
                                              "embeddings": args.embeddings, "dense_coefficients": coef,
                                              "seconds": round(time.time() - t0, 1), "pairs_seconds": round(t_pairs, 1),
                                              "data_fingerprint": ctx.fingerprint})
    atomic_write_bytes(out / "metrics.md", (
        f"# Feedback model\n\nLogistic regression, trained on train-split days; {cfg.negatives} same-week "
        f"non-purchases per purchase; photo embeddings: {args.embeddings or 'none'}.\n\n## AUC\n\n{table}\n\n"
        f"## Text sensitivity\n\n{stable}\n").encode())
    print(f"[feedback] wrote {out}/model.pkl, metrics.json, metrics.md ({time.time() - t0:.1f}s)")
    return 0
