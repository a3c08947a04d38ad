"""Purchase-feedback model, P(buy | customer, article, shown reason): ``python -m mmreason.feedback``.

It becomes the RL reward for the reason generator, so it scores *any* text: ``FeedbackModel.score`` and
``score_batch`` take arbitrary strings.

Pairs. Positives are real purchases (one per customer-article-day). Negatives: for each positive,
``negatives`` articles that other customers bought in the same 7-day period (days // 7) and this
customer did not buy from that day to the period's end (from the whole catalogue where the period offers
too few). Every pair gets a silver reason built *the same way* for positives and negatives: ``build_hook(article, the customer's history as of
that day)`` + the article's copy, exactly as ``mmreason.data`` builds the targets. (Borrowing another
customer's reason for a negative would leak the label: a borrowed hook names purchases that are not in
this customer's history, so "the reason names my own history" would separate the classes by construction.)

Features, all as of the pair's day (strictly earlier purchases only):
* history overlap: per attribute (type, colour, pattern, section, garment group, index group), how
  many earlier purchases share the article's value (log count and share); same article / same product
  bought before; history size;
* popularity: the article's purchases by everyone, in all and in the 4 weeks, before the start of the
  pair's 7-day period. Not "before the day": a negative is sampled from what others bought that week, so
  its own sampling purchase would often fall before the day while a positive's never does, and the model
  learnt that recent buys by others *lower* the odds -- an artefact. Counted over the splits a model may
  see (``recommend.ALLOWED``: train and val pairs count train-split purchases, test pairs train + val;
  ``score`` counts every split);
* photo: cosine of the article's photo embedding to the mean of the history's (when embeddings are given);
* text of the reason: overlap of its words with the words of the customer's history (names and attribute
  values) and with the article's own, its length, and hashed TF-IDF unigrams.
A logistic regression is trained on train-split days; AUC is reported on the val and test days, with the
reason text, without text features, with empty and with shuffled reasons, and on text features alone.
The sampled negatives are popularity-matched (bought by someone that week), so the AUC measures
"which of this week's articles will this customer buy", a harder task than buy vs random article.
"""
from __future__ import annotations

import argparse
import io
import pickle
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import scipy.sparse as sp
from sklearn.feature_extraction.text import HashingVectorizer, TfidfTransformer
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import roc_auc_score
from sklearn.preprocessing import StandardScaler
from tqdm.auto import tqdm

from mmreason import paths
from mmreason.io import DataError, atomic_write_bytes, atomic_write_json
from mmreason.metrics import tokenize
from mmreason.reasons import Purchase, build_hook, product_copy
from mmreason.recommend import (ALLOWED, ATTRIBUTES, EMBEDDINGS_HELP, Context, UnknownUser, day_number,
                                load_context, load_photo_embeddings, markdown_table, photo_key, photo_matrix,
                                resolve_embeddings)

RECENT_DAYS = 28
POOLS = {"train": ("train",), **ALLOWED}  # pairs of a split -> splits whose purchases popularity may count
SPAN = 1 << 20  # larger than any day number (days since 1970), so key * SPAN + day sorts by key, then day
STOPWORDS = set("a an and are as at be by for from has have here in is it its of on one or so that the this to "
                "with you your yours it's".split())
HISTORY_FIELDS = ["prod_name", "product_type_name", "colour_group_name", "graphical_appearance_name",
                  "garment_group_name", "section_name"]  # what a reason may cite about earlier purchases


@dataclass
class FeedbackConfig:
    negatives: int = 4  # sampled non-purchases per purchase
    hash_features: int = 2 ** 12  # hashed unigrams of the reason (bigrams overfit here)
    C: float = 0.01  # inverse L2 strength; chosen on val AUC among 1, 0.1, 0.01 (text features overfit at 1)
    seed: int = 0


class AsOf:
    """Counts of events per integer key in a day window, by binary search over sorted key * SPAN + day."""

    def __init__(self, keys: np.ndarray, days: np.ndarray):
        self.code = np.sort(keys.astype(np.int64) * SPAN + days.astype(np.int64))

    def count(self, keys, before, since=None) -> np.ndarray:
        """Events with key ``keys[i]`` on days in [``since[i]``, ``before[i]``)."""
        keys = np.asarray(keys, dtype=np.int64) * SPAN
        lo = keys if since is None else keys + np.asarray(since, dtype=np.int64)
        return np.searchsorted(self.code, keys + np.asarray(before, dtype=np.int64)) - np.searchsorted(self.code, lo)


def content_tokens(text: str) -> set[str]:
    return {t for t in tokenize(text or "") if t not in STOPWORDS}


class PairFeatures:
    """Feature rows for (customer, article, day, reason) from the purchases strictly before the day."""

    def __init__(self, ctx: Context, photo: tuple[np.ndarray, np.ndarray] | None = None):
        self.ctx = ctx
        self.n_users = len(ctx.users)  # key of an unknown customer: no purchases at all
        self.attr_codes = np.stack([pd.factorize(ctx.items[c])[0] for c in ATTRIBUTES], 1)  # (N, A)
        self.n_values = int(self.attr_codes.max()) + 1
        own = [(self.attr_codes[ctx.i_item, k], self.n_values) for k in range(len(ATTRIBUTES))]
        own += [(ctx.i_item, ctx.n_items), (ctx.product[ctx.i_item], ctx.product.max() + 1), (np.zeros_like(ctx.i_item), 1)]
        self.own = [(AsOf(ctx.i_user * n + v, ctx.i_day), n) for v, n in own]  # per user and value
        self.pop = {}  # per pool of allowed splits: AsOf by item
        self.photo = photo[0] if photo is not None else None
        if self.photo is not None:  # running sums of history photos, rows ordered by (user, day)
            self.photo_cum = np.vstack([np.zeros((1, self.photo.shape[1]), np.float32),
                                        np.cumsum(self.photo[ctx.i_item], 0, dtype=np.float64).astype(np.float32)])
        self.item_tokens = [content_tokens(" ".join(r)) for r in ctx.items[HISTORY_FIELDS].itertuples(index=False)]
        self._hist_tokens: dict[tuple[int, int], frozenset] = {}

    # -- blocks
    def names(self, text: bool = True) -> list[str]:
        n = ["hist_n"] + [f"{a}_{s}" for a in ATTRIBUTES for s in ("count", "share")]
        n += ["same_article", "same_product", "pop_all", "pop_recent"] + (["photo_sim"] if self.photo is not None else [])
        return n + (["text_len", "text_hist_share", "text_hist_n", "text_item_share", "text_shared_share"] if text else [])

    def user_item(self, users: np.ndarray, items: np.ndarray, days: np.ndarray, pool: str) -> tuple[np.ndarray, np.ndarray]:
        """(P, F) history-overlap, popularity and photo features, and (P,) history sizes.

        ``users`` are rows in ``ctx.users`` (-1: unknown, no history); ``pool`` names the splits whose
        purchases popularity may count (``recommend.ALLOWED``)."""
        users = np.where(users < 0, self.n_users, users)
        A = len(ATTRIBUTES)
        counts = [asof.count(users * n + v, days) for (asof, n), v in zip(
            self.own, [*self.attr_codes[items].T, items, self.ctx.product[items], np.zeros_like(items)])]
        hist_n = counts[-1].astype(float)
        cols = [np.log1p(hist_n)]
        for k in range(A):
            cols += [np.log1p(counts[k]), counts[k] / np.maximum(hist_n, 1)]
        cols += [np.log1p(counts[A]), np.log1p(counts[A + 1])]
        pop = self._pool(pool)
        week = days // 7 * 7  # popularity stops at the start of the pair's 7-day period, see the module doc
        cols += [np.log1p(pop.count(items, week)), np.log1p(pop.count(items, week, week - RECENT_DAYS))]
        if self.photo is not None:
            cols.append(self._photo_sim(users, items, hist_n.astype(np.int64)))
        return np.stack(cols, 1).astype(np.float64), counts[-1]

    def _pool(self, pool: str) -> AsOf:
        if pool not in self.pop:
            sel = np.isin(self.ctx.i_split, POOLS[pool])
            self.pop[pool] = AsOf(self.ctx.i_item[sel], self.ctx.i_day[sel])
        return self.pop[pool]

    def _photo_sim(self, users, items, hist_n) -> np.ndarray:
        ctx = self.ctx
        start = np.append(ctx.user_start, ctx.user_start[-1])[users]  # unknown users: an empty range
        mean = self.photo_cum[start + hist_n] - self.photo_cum[start]  # (P, D) sum over the history
        mean /= np.maximum(np.linalg.norm(mean, axis=1, keepdims=True), 1e-8)
        return (mean * self.photo[items]).sum(1)

    def history_tokens(self, user: int, hist_n: int) -> frozenset:
        """Words of the names and attribute values of the customer's first ``hist_n`` purchases."""
        key = (user, hist_n)
        if key not in self._hist_tokens:
            s = self.ctx.user_start[user] if user >= 0 else 0
            rows = self.ctx.i_item[s:s + hist_n] if user >= 0 else []
            self._hist_tokens[key] = frozenset().union(*(self.item_tokens[r] for r in rows))
        return self._hist_tokens[key]

    def text_dense(self, users, items, hist_n, reasons) -> np.ndarray:
        out = np.zeros((len(reasons), 5))
        for j, (u, i, n, text) in enumerate(zip(users, items, hist_n, reasons)):
            r = content_tokens(text)
            if not r:
                continue
            h, a = self.history_tokens(int(u), int(n)), self.item_tokens[i]
            out[j] = [np.log1p(len(r)), len(r & h) / len(r), np.log1p(len(r & h)), len(r & a) / len(r),
                      len(r & h & a) / len(r)]
        return out


@dataclass
class Blocks:
    """Feature blocks of a set of pairs, computed once and shared by the full model and its ablations."""

    user_item: np.ndarray  # (P, F) history overlap, popularity, photo
    text_dense: np.ndarray  # (P, 5) overlap of the reason's words with the history and the article
    text_hashed: sp.csr_matrix  # (P, H) hashed word counts of the reason
    hist_n: np.ndarray  # (P,) earlier purchases


KINDS = ("full", "no_text", "text_only")


class FeedbackModel:
    """Logistic regression over ``PairFeatures``. ``kind``: "full"; "no_text" (no reason features);
    "text_only" (reason features alone, an ablation)."""

    def __init__(self, ctx: Context, config: FeedbackConfig | None = None, photo=None, kind: str = "full",
                 feats: PairFeatures | None = None):
        assert kind in KINDS, kind
        self.ctx, self.config, self.kind = ctx, config or FeedbackConfig(), kind
        self.photo_key = photo_key(photo)
        self.feats = feats or PairFeatures(ctx, photo)
        self.hasher = HashingVectorizer(n_features=self.config.hash_features, alternate_sign=False, norm=None,
                                        token_pattern=r"(?u)\b[a-z][a-z]+\b")
        self.tfidf = TfidfTransformer(sublinear_tf=True)
        self.scaler = StandardScaler()
        self.clf = LogisticRegression(C=self.config.C, max_iter=3000)

    # -- features
    def blocks(self, users, items, days, reasons, pool: str) -> Blocks:
        users, items, days = (np.asarray(a, dtype=np.int64) for a in (users, items, days))
        ui, hist_n = self.feats.user_item(users, items, days, pool)
        return self.with_reasons(Blocks(ui, None, None, hist_n), users, items, reasons)

    def with_reasons(self, b: Blocks, users, items, reasons) -> Blocks:
        """The same pairs with other reason texts (any strings; None reads as empty)."""
        reasons = ["" if r is None else str(r) for r in reasons]
        return Blocks(b.user_item, self.feats.text_dense(users, items, b.hist_n, reasons),
                      self.hasher.transform([r.lower() for r in reasons]), b.hist_n)

    def design(self, b: Blocks, fit: bool = False) -> sp.csr_matrix:
        dense = {"full": [b.user_item, b.text_dense], "no_text": [b.user_item], "text_only": [b.text_dense]}[self.kind]
        dense = np.hstack(dense)
        dense = self.scaler.fit_transform(dense) if fit else self.scaler.transform(dense)
        if self.kind == "no_text":
            return sp.csr_matrix(dense)
        h = self.tfidf.fit_transform(b.text_hashed) if fit else self.tfidf.transform(b.text_hashed)
        return sp.hstack([sp.csr_matrix(dense), h]).tocsr()

    def fit_blocks(self, b: Blocks, labels) -> "FeedbackModel":
        self.clf.fit(self.design(b, fit=True), np.asarray(labels))
        return self

    def predict_blocks(self, b: Blocks) -> np.ndarray:
        return self.clf.predict_proba(self.design(b))[:, 1]

    def fit(self, pairs: pd.DataFrame) -> "FeedbackModel":
        """Train on pairs (columns user, item, day, reason, label: rows/day numbers as ``build_pairs`` writes)."""
        return self.fit_blocks(self.blocks(pairs["user"], pairs["item"], pairs["day"], pairs["reason"], "train"),
                               pairs["label"])

    def predict(self, pairs: pd.DataFrame, pool: str) -> np.ndarray:
        return self.predict_blocks(self.blocks(pairs["user"], pairs["item"], pairs["day"], pairs["reason"], pool))

    # -- the reward API
    def score_batch(self, user_ids, article_ids, reasons, days=None) -> np.ndarray:
        """P(buy) per (customer_id, article_id, reason text); ``days`` (dates) default to after the data ends.

        Features use every purchase strictly before the day. Unknown customer or article: ``KeyError``.
        """
        ctx = self.ctx
        user_ids, article_ids = list(user_ids), list(article_ids)
        bad_u = [u for u in user_ids if u not in ctx.user_row.index]
        if bad_u:
            raise UnknownUser(f"unknown customer_id {bad_u[0]!r}")
        bad_a = [a for a in article_ids if int(a) not in ctx.item_row.index]
        if bad_a:
            raise KeyError(f"unknown article_id {bad_a[0]!r}")
        users = ctx.user_row.loc[user_ids].to_numpy()
        items = ctx.item_row.loc[[int(a) for a in article_ids]].to_numpy()
        if days is None:
            d = np.full(len(users), ctx.i_day.max() + 1)
        else:
            d = day_number(pd.to_datetime(pd.Series(list(days))))
        reasons = [reasons] * len(users) if isinstance(reasons, str) else list(reasons)
        if len(reasons) != len(users):
            raise ValueError(f"{len(users)} pairs but {len(reasons)} reasons")
        return self.predict_blocks(self.blocks(users, items, d, reasons, pool="next"))

    def score(self, user_id: str, article_id: int, reason_text: str, day=None) -> float:
        return float(self.score_batch([user_id], [article_id], [reason_text], None if day is None else [day])[0])

    # -- persistence
    def state(self) -> dict:
        return {"config": asdict(self.config), "kind": self.kind, "scaler": self.scaler, "tfidf": self.tfidf,
                "clf": self.clf, "photo_key": self.photo_key, "data_fingerprint": self.ctx.fingerprint,
                "feature_names": self.feature_names()}

    def feature_names(self) -> list[str]:
        ui = self.feats.names(text=False)
        text = self.feats.names(text=True)[len(ui):]
        dense = {"full": ui + text, "no_text": ui, "text_only": text}[self.kind]
        return dense + ([] if self.kind == "no_text" else [f"hash_{i}" for i in range(self.config.hash_features)])

    def save(self, path: Path) -> None:
        buf = io.BytesIO()
        pickle.dump(self.state(), buf)
        atomic_write_bytes(path, buf.getvalue())

    @classmethod
    def load(cls, path=None, data_dir=None, photo_embeddings=None) -> "FeedbackModel":
        """Load ``artifacts/feedback/model.pkl`` against the prepared tables (and the same photo embeddings)."""
        path = Path(path or paths.artifacts_dir() / "feedback" / "model.pkl")
        data_dir = Path(data_dir or paths.artifacts_dir() / "data" / "hm")
        with open(path, "rb") as f:
            st = pickle.load(f)  # our own artifact
        ctx = load_context(data_dir)
        photo = photo_matrix(photo_embeddings, ctx.items["article_id"])
        if photo_key(photo) != st["photo_key"]:
            raise DataError(f"{path}: trained with other photo embeddings ({st['photo_key']}) "
                            f"than given ({photo_key(photo)})")
        m = cls(ctx, FeedbackConfig(**st["config"]), photo, st["kind"])
        m.scaler, m.tfidf, m.clf = st["scaler"], st["tfidf"], st["clf"]
        return m


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

def get_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m mmreason.feedback", description=__doc__.split("\n")[0])
    p.add_argument("--data", default=None, help="prepared tables (default artifacts/data/hm)")
    p.add_argument("--out", default=None, help="output folder (default artifacts/feedback)")
    p.add_argument("--embeddings", default="auto", help=EMBEDDINGS_HELP)
    p.add_argument("--negatives", type=int, default=FeedbackConfig.negatives)
    p.add_argument("--hash-features", type=int, default=FeedbackConfig.hash_features)
    p.add_argument("--C", type=float, default=FeedbackConfig.C)
    p.add_argument("--seed", type=int, default=FeedbackConfig.seed)
    p.add_argument("--no-progress", action="store_true")
    return p


def main(argv=None) -> int:
    args = get_parser().parse_args(argv)
    data_dir = Path(args.data or paths.artifacts_dir() / "data" / "hm")
    out = Path(args.out or paths.artifacts_dir() / "feedback")
    cfg = FeedbackConfig(args.negatives, args.hash_features, args.C, args.seed)
    args.embeddings = resolve_embeddings(args.embeddings, data_dir)
    t0 = time.time()
    try:
        ctx = load_context(data_dir)
        photo = photo_matrix(load_photo_embeddings(args.embeddings), ctx.items["article_id"]) if args.embeddings else None
    except DataError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    pairs = build_pairs(ctx, cfg.negatives, cfg.seed, progress=not args.no_progress)
    t_pairs = time.time() - t0
    print(f"[feedback] {len(pairs)} pairs ({int(pairs['label'].sum())} purchases, {cfg.negatives} sampled "
          f"non-purchases each) in {t_pairs:.1f}s; by split: {pairs['split'].value_counts().to_dict()}")
    if (pairs["split"] == "train").sum() == 0 or pairs.loc[pairs["split"] == "train", "label"].nunique() < 2:
        print("error: no training pairs of both classes", file=sys.stderr)
        return 2
    model, aucs, sens = evaluate(ctx, pairs, cfg, photo, progress=not args.no_progress)
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


if __name__ == "__main__":
    sys.exit(main())
