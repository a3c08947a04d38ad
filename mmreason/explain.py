"""Reasons for articles a recommender picked: the last step of profile -> candidates -> ranking -> reasons.

``Explainer`` loads a trained generator run and writes one reason per (customer, article) as of a day:
the prompt is built exactly as ``mmreason.data`` builds training examples (profile, evidence and
behaviour from the customer's purchases strictly before that day, the article's product text and photo
embedding), and the shown reason comes from the one path (``shown.shown_reasons``): decoded with a preset
(beam by default) under the decoding constraint, then post-filtered: the first candidate that passes
``filters.Filter`` is shown; if none passes, the best one is shown and flagged.

    from mmreason.explain import Explainer
    ex = Explainer("artifacts/runs/cpu")
    ex.explain(customer_id, [article_id, ...])        # -> list of Explanation
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd
import torch

from mmreason import paths
from mmreason.data import evidence_fields, load_tables, price_cuts, user_context
from mmreason.filters import Filter, vocab_from_items
from mmreason.generate import DecodeConfig, preset
from mmreason.shown import history_sets, shown_reasons

DEFAULT_RUN = Path("runs") / "cpu"  # under artifacts/: the default `python -m mmreason.train` run


@dataclass
class Explanation:
    article_id: int
    reason: str
    passed_filter: bool                     # False: no candidate passed; the best one is shown
    rejected: list[tuple[str, list[str]]] = field(default_factory=list)  # candidates before it, with causes


class Explainer:
    def __init__(self, run=None, decode: DecodeConfig | str = "beam", batch_size: int = 32, constrain: bool = True):
        from mmreason.lit import load_run  # lightning is only needed once a generator is used

        run = Path(run) if run is not None else paths.artifacts_dir() / DEFAULT_RUN
        self.module, self.data = load_run(run)
        art = self.data.artifacts
        self.tables = load_tables(art.data_dir, names=("users", "items", "interactions"))
        self.items = self.tables["items"].set_index("article_id")
        self.cuts = price_cuts(self.tables["interactions"])
        self.filter = Filter(vocab_from_items(self.tables["items"]))
        if isinstance(decode, str):
            decode = preset(decode, num_return_sequences=4) if decode != "greedy" else preset(decode)
        self.decode, self.batch_size, self.constrain = decode, batch_size, constrain

    def next_day(self) -> pd.Timestamp:
        """The day after the data ends: every purchase is history."""
        return pd.Timestamp(self.tables["interactions"]["t_dat"].max()) + pd.Timedelta(days=1)

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
            ctx = user_context(self.tables, customer_id, day, cuts=self.cuts)
            arts = [self.items.loc[a].to_dict() | {"article_id": a} for a in article_ids]
            rows += [{"user_profile": ctx["user_profile"], "behaviour": ctx["behaviour"],
                      "product": self.items.at[a, "product"], "article_id": a,
                      **evidence_fields(art, ctx["history"])} for a, art in zip(article_ids, arts)]
            articles += arts
            hists += [history_sets(ctx["history"])] * len(arts)
            sizes.append(article_ids)
        shown = iter(shown_reasons(self.module, self.data, rows, articles, self.decode, self.filter, hists,
                                   constrain=self.constrain, batch_size=self.batch_size, progress=progress))
        return [[Explanation(a, s.reason, s.passed, s.rejected) for a, s in zip(ids, shown)] for ids in sizes]

    def __call__(self, customer_id: str, article_ids, day=None) -> list[str]:
        return [e.reason for e in self.explain(customer_id, article_ids, day)]
