"""Reasons for articles a recommender picked: the last step of profile -> candidates -> ranking -> reasons.

``Explainer`` loads a trained generator run and writes one reason per (customer, article) as of a day:
the prompt is built exactly as ``mmreason.data`` builds training examples (profile, evidence and
behaviour from the customer's purchases strictly before that day, the article's product text and photo
embedding), and the shown reason comes from the one path (``shown.shown_reasons``): decoded with a preset
(beam by default) under the decoding constraint, then post-filtered: the first candidate that passes
``filters.Filter`` is shown; if none passes, the best one is shown and flagged.

    from mmreason.serving.explainer import Explainer
    ex = Explainer("artifacts/runs/cpu")
    ex.explain(customer_id, [article_id, ...])        # -> list of Explanation
    ex.explain_new(customer_id, new_articles)         # articles not in the tables (an H&M-shaped frame)

New articles (not in the prepared tables) need no retraining: their product segment is written from their
attributes (``data.product_text``), their photo embedded with the run's own CLIP, and their retrieved copies
looked up in the current datastore (``retrieval.neighbour_texts``); the rest is the same one path.

    python -m mmreason.explain --articles new_articles.csv --images photos/ --customer <customer_id>
"""
from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd
import torch

from mmreason import paths
from mmreason.datasets.hm import load_tables
from mmreason.datasets.prompts import evidence_fields, price_cuts, product_text, user_context
from mmreason.decoding.filters import Filter, vocab_from_items
from mmreason.decoding.generate import DecodeConfig
from mmreason.decoding.shown import OFFER_RETRIEVED, decoding, history_sets, shown_reasons, uses_photo_offers
from mmreason.features import clip as clip_lib
from mmreason.features import embed as embed_lib
from mmreason.features import photodetails, photonet
from mmreason.features import retrieval
from mmreason.io import DataError
from mmreason.training.runs import load_run

# what a new article needs: its prompt's product segment (data.product_text), the filter's and the constraint's
# attributes, and its product code (retrieval never lends an article its own product's copy)
NEW_ARTICLE_COLUMNS = ["article_id", "product_code", "prod_name", "product_type_name", "product_group_name",
                       "graphical_appearance_name", "colour_group_name", "perceived_colour_value_name",
                       "perceived_colour_master_name", "department_name", "section_name", "garment_group_name",
                       "index_group_name"]


def read_new_articles(path, images=None) -> pd.DataFrame:
    """An articles file (.csv or .parquet, H&M's columns) -> the frame ``Explainer.explain_new`` takes, with
    ``photo_path`` / ``has_photo`` from ``images`` (``<images>/<article_id:010d>.jpg``, or H&M's
    ``<images>/<first 3 digits>/<id>.jpg``). A missing column or a bad id: DataError, in one line."""
    path = Path(path)
    if not path.exists():
        raise DataError(f"{path}: no such articles file")
    try:
        df = pd.read_parquet(path) if path.suffix == ".parquet" else pd.read_csv(path)
    except Exception as e:  # noqa: BLE001 - any parser error, said in one line
        raise DataError(f"{path}: not a readable articles table ({type(e).__name__}: {str(e).splitlines()[0]})") from None
    missing = [c for c in NEW_ARTICLE_COLUMNS if c not in df.columns]
    if missing:
        raise DataError(f"{path}: missing column(s) {', '.join(missing)} (H&M articles columns expected)")
    for c in ("article_id", "product_code"):
        ids = pd.to_numeric(df[c], errors="coerce")
        if ids.isna().any():
            raise DataError(f"{path}: {c} {df[c][ids.isna()].iloc[0]!r} is not a number")
        df[c] = ids.astype("int64")
    text = [c for c in NEW_ARTICLE_COLUMNS if c not in ("article_id", "product_code")]
    df[text] = df[text].astype(object).fillna("").astype(str)  # a blank column reads as float64: pandas 4 refuses ""
    photos = []
    for aid in df["article_id"]:
        name = f"{int(aid):010d}.jpg"
        cands = [Path(images) / name, Path(images) / name[:3] / name] if images else []
        photos.append(next((str(p) for p in cands if p.exists()), ""))
    df["photo_path"] = photos
    df["has_photo"] = df["photo_path"] != ""
    return df.reset_index(drop=True)


@dataclass
class Explanation:
    article_id: int
    reason: str
    passed_filter: bool                     # False: no candidate passed; the best one is shown
    rejected: list[tuple[str, list[str]]] = field(default_factory=list)  # candidates before it, with causes
    source: str = "generated"               # "retrieved": the generated hook + a retrieved copy (offer_retrieved)
    hook: str = "model"                     # "evidence": the model's hook failed the filter; the evidence's is shown


class Explainer:
    def __init__(self, run=None, decode: DecodeConfig | str = "beam", batch_size: int = 32, constrain: bool = True,
                 offer_retrieved: int | None = None):
        run = paths.resolve(run) if run is not None else paths.run_dir()  # the default `mmreason.train` run
        self.module, self.data = load_run(run)
        art = self.data.artifacts
        self.tables = load_tables(art.data_dir, names=("users", "items", "interactions"))
        self.items = self.tables["items"].set_index("article_id")
        self.cuts = price_cuts(self.tables["interactions"])
        self.filter = Filter(vocab_from_items(self.tables["items"]))
        # a name (shown.DECODINGS: a preset, or the cascade "greedy+beam") or a DecodeConfig (no fallback)
        self.decode_name = decode if isinstance(decode, str) else decode.strategy
        decode, self.fallback = decoding(decode) if isinstance(decode, str) else (decode, None)
        self.decode, self.batch_size, self.constrain = decode, batch_size, constrain
        # shown.shown_reasons: retrieved copies offered after the hook (None: as deployed, shown.OFFER_RETRIEVED,
        # the photo's choice for a catalogue article: shown.photo_offer)
        self.offer_retrieved = offer_retrieved
        if uses_photo_offers(self.module, self.data, offer_retrieved):
            art.photo_offers  # read (or, on a fresh checkout, built once) now, not on the first request
        self._imagenet = None  # (encoder, the catalogue's features, the table's probe): the photo's choice for new articles
        self._next_day = pd.Timestamp(self.tables["interactions"]["t_dat"].max()) + pd.Timedelta(days=1)
        self._contexts = OrderedDict()

    CONTEXTS = 4096  # (customer, day) prompt contexts kept (``context``)

    def next_day(self) -> pd.Timestamp:
        """The day after the data ends: every purchase is history."""
        return self._next_day

    def context(self, customer_id: str, day: pd.Timestamp) -> tuple[dict, dict]:
        """``data.user_context`` and its ``history_sets`` for (customer, day), the last ``CONTEXTS`` pairs kept:
        the tables do not change while the Explainer lives, and a customer browsing asks for many reasons on
        one day (the server's recommendations, then /explain). Unknown customer: KeyError."""
        key = (customer_id, day)
        hit = self._contexts.get(key)
        if hit is None:
            ctx = user_context(self.tables, customer_id, day, cuts=self.cuts)
            hit = self._contexts[key] = (ctx, history_sets(ctx["history"]))
            if len(self._contexts) > self.CONTEXTS:
                self._contexts.popitem(last=False)
        else:
            self._contexts.move_to_end(key)
        return hit

    def explain(self, customer_id: str, article_ids, day=None, progress: bool = False) -> list[Explanation]:
        """One reason per article for ``customer_id`` as of ``day`` (default: the day after the data ends).
        Unknown customer or article: KeyError."""
        return self.explain_many([(customer_id, article_ids, day)], progress=progress)[0]

    @torch.no_grad()
    def explain_many(self, requests, progress: bool = False) -> list[list[Explanation]]:
        """``explain`` for several (customer_id, article_ids, day) requests in one decoding call, so their
        articles share batches (the server's dynamic batching). Unknown customer or article: KeyError."""
        rows, articles, hists, sizes = [], [], [], []
        for customer_id, article_ids, day in requests:
            article_ids = [int(a) for a in article_ids]
            unknown = [a for a in article_ids if a not in self.items.index]
            if unknown:
                raise KeyError(f"unknown article_id {unknown[0]}")
            day = pd.Timestamp(day) if day is not None else self.next_day()
            ctx, hist = self.context(customer_id, day)
            arts = [self.items.loc[a].to_dict() | {"article_id": a} for a in article_ids]
            rows += [{"user_profile": ctx["user_profile"], "behaviour": ctx["behaviour"],
                      "product": self.items.at[a, "product"], "article_id": a,
                      **evidence_fields(art, ctx["history"])} for a, art in zip(article_ids, arts)]
            articles += arts
            hists += [hist] * len(arts)
            sizes.append(article_ids)
        shown = iter(shown_reasons(self.module, self.data, rows, articles, self.decode, self.filter, hists,
                                   constrain=self.constrain, batch_size=self.batch_size, progress=progress,
                                   offer_retrieved=self.offer_retrieved, fallback=self.fallback))
        return [[Explanation(a, s.reason, s.passed, s.rejected, s.source, s.hook) for a, s in zip(ids, shown)] for ids in sizes]

    def _retrieval(self) -> tuple[int, str]:
        pc = self.data.pipeline_config
        get = pc.get if isinstance(pc, dict) else (lambda k, d: getattr(pc, k, d))
        return int(get("retrieval_k", 0) or 0), str(get("retrieval_by", "text") or "text")

    def _new_offers(self, store, articles: pd.DataFrame) -> list[str]:
        """The copy each new article's photo chooses (``photodetails.new_offers``: as the offers table chooses
        for the catalogue's articles), its ImageNet features computed here (~0.1 s a photo on CPU)."""
        if self._imagenet is None:  # read once per Explainer, not per request
            cache = photonet.load_features(self.data.artifacts.items, progress=False)
            self._imagenet = (photonet.load_encoder(), cache, photodetails.ensure_probe(store, cache))
        encoder, cache, probe = self._imagenet
        ids, feats, _ = photonet.compute_features(encoder, articles, progress=False)
        return photodetails.new_offers(store, articles, {"article_id": ids, "embedding": feats}, cache, probe=probe)

    @torch.no_grad()
    def explain_new(self, customer_id: str, articles: pd.DataFrame, day=None, progress: bool = False) -> list[Explanation]:
        """One reason per row of ``articles`` (``read_new_articles``' frame: H&M's columns, photo_path, has_photo)
        for articles that were not in the prepared tables: product segment from their attributes, photo embedded
        by the run's CLIP (no photo: the model's no-photo vector), retrieved copies from the current datastore. As
        deployed, a run that sees the photo offers the copy the new article's photo chooses (``_new_offers``), as
        it does for the catalogue's (``shown.photo_offer``); a text-only run, or an explicit ``offer_retrieved``,
        the prompt's retrieved copies."""
        art = self.data.artifacts
        arts = articles.reset_index(drop=True)
        model, preprocess, _ = clip_lib.load_clip(art.clip_model, art.clip_pretrained)
        got_ids, got, _ = embed_lib.compute_embeddings(model, preprocess, arts, workers=0)
        photo, has_photo = embed_lib.lookup({"article_id": got_ids, "embedding": got}, arts["article_id"].to_numpy())
        retrieved = offers = None
        k, by = self._retrieval()
        if "retrieved" in self.data.prompt_fields and k:
            store = retrieval.ensure_store(art.items, art.cache, progress=progress)
            retrieved = retrieval.neighbour_texts(store, arts, k, by, photo_lookup=lambda ids: (photo, has_photo),
                                                  progress=progress)
            if uses_photo_offers(self.module, self.data, self.offer_retrieved):
                offers = self._new_offers(store, arts)
        day = pd.Timestamp(day) if day is not None else self.next_day()
        ctx, hist = self.context(customer_id, day)
        dicts = arts.to_dict("records")
        rows = [{"user_profile": ctx["user_profile"], "behaviour": ctx["behaviour"], "product": product_text(a),
                 "article_id": int(a["article_id"]), **evidence_fields(a, ctx["history"]),
                 **({"retrieved": retrieved[i]} if retrieved is not None else {})} for i, a in enumerate(dicts)]
        shown = shown_reasons(self.module, self.data, rows, dicts, self.decode, self.filter,
                              [hist] * len(rows), constrain=self.constrain, photo=photo,
                              has_photo=has_photo, batch_size=self.batch_size, progress=progress,
                              offer_retrieved=(self.offer_retrieved if self.offer_retrieved is not None or
                                               retrieved is None else OFFER_RETRIEVED), fallback=self.fallback,
                              offer_copies=offers)
        return [Explanation(int(a["article_id"]), s.reason, s.passed, s.rejected, s.source, s.hook)
                for a, s in zip(dicts, shown)]

    def __call__(self, customer_id: str, article_ids, day=None) -> list[str]:
        return [e.reason for e in self.explain(customer_id, article_ids, day)]
