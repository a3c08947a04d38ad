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

import io
import pickle
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import scipy.sparse as sp
from sklearn.feature_extraction.text import HashingVectorizer, TfidfTransformer
from sklearn.linear_model import LogisticRegression
from sklearn.preprocessing import StandardScaler

from mmreason import paths
from mmreason.io import DataError, atomic_write_bytes, check_ranges
from mmreason.metrics import tokenize
from mmreason.recsys.context import ALLOWED, ATTRIBUTES, Context, UnknownUser, day_number, load_context
from mmreason.recsys.twotower import photo_key, photo_matrix

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

    def __post_init__(self):
        check_ranges(self, negatives=">=1", hash_features=">=1", C=">0", seed=">=0")


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
