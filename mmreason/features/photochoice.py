"""Can the photo choose a better copy than the attribute text? The measurements behind that question.

The shown copy is the nearest training product's by attribute text, own type first (``retrieval.py``).
A system that sees the photo could only write a copy closer to the article's own by choosing another one:
among the text's nearest candidates, or by the photo alone. This module holds the candidate lists and
the choices that ``python -m mmreason.retrieval`` scores on validation and test:

- ``candidates``: per article the ``k`` nearest distinct copies (``retrieval.nearest``, ``by``) of the
  nearest one's product type, best first, with their text scores and store rows (``vetted_copies``'
  alternatives too).
- ``reorder`` / ``reranked``: the candidates by text score + ``weight`` x the photos' cosine (ImageNet
  features, ``photonet.py``), and the first of them; ``weight`` 0 keeps the text's order.
- ``photo_nearest``: the copy of the nearest store row by those features alone (the photo retriever
  with a network that sees sleeves; ``nearest(by="photo")`` uses the domain CLIP).
- ``best_of``: the candidate whose CIDEr against the article's own copy is best: a ceiling that reads
  the reference, no system.
"""
from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np
import pandas as pd
import torch

from mmreason.features import retrieval as R
from mmreason.features.embed import lookup
from mmreason.metrics import cider_scores

# the photo cosine's weight in ``reorder``, chosen on validation among retrieval.WEIGHTS by ``python -m
# mmreason.retrieval`` (results/cpu/retrieval.md: mean validation copy CIDEr 2.330 against 2.236 for weight 0)
WEIGHT = 0.1


@dataclass
class Candidates:
    copies: list[list[str]]         # per article its distinct candidate copies, best text first
    rows: list[list[int]]           # the store row each copy was found at (its best)
    text: list[list[float]]         # the text score of that row (``nearest``'s, own-type bonus included)


def candidates(store: R.Datastore, articles: pd.DataFrame, k: int, by: str = "text_type",
               encoder=None, text: torch.Tensor | None = None) -> Candidates:
    """Per article its ``k`` nearest distinct copies of the nearest one's product type (fewer where the store
    has fewer; the fallback copy where nothing can be ranked). ``text``: the articles' attribute-text embeddings,
    else ``retrieval.store_text_embeddings`` (the store's rows reused, the rest encoded)."""
    if text is None and by != "photo":
        text = R.store_text_embeddings(store, articles, encoder)
    idx, score = R.nearest(store, text, None, articles["product_code"].to_numpy(), k=k + 8, by=by,
                           query_types=articles["product_type_name"].fillna("").astype(str).tolist())
    out = Candidates([], [], [])
    for ids, scores in zip(idx.tolist(), score.tolist()):
        # equal scores (identical attribute texts) in store order, as ``nearest``'s k=1 breaks them: topk's order of
        # ties is its own, and would make the text's nearest here differ from ``retrieve_copies``'
        ranked = sorted(((s, i) for i, s in zip(ids, scores) if i >= 0), key=lambda p: (-p[0], p[1]))
        seen: dict[str, tuple[int, float]] = {}
        for s, i in ranked:
            # the alternatives are of the nearest copy's product type: never a swimsuit's copy for a dress
            if store.product_type[i] == store.product_type[ranked[0][1]] and store.copy[i] not in seen:
                seen[store.copy[i]] = (i, s)
        if not seen:
            seen = {R.fallback_copy(store, by): (-1, float("-inf"))}
        top = list(seen.items())[:k]
        out.copies.append([c for c, _ in top])
        out.rows.append([r for _, (r, _) in top])
        out.text.append([s for _, (_, s) in top])
    return out


def photo_cosines(store: R.Datastore, articles: pd.DataFrame, cand: Candidates, cache: dict) -> list[list[float]]:
    """The cosine of each candidate's photo features with the article's; 0 where either has no photo."""
    q = torch.nn.functional.normalize(lookup(cache, articles["article_id"].tolist())[0].float(), dim=1)
    rows = sorted({r for rs in cand.rows for r in rs if r >= 0})
    s = torch.nn.functional.normalize(lookup(cache, store.article_id[rows].tolist())[0].float(), dim=1)
    at = {r: j for j, r in enumerate(rows)}
    # a missing photo is a zero row, which stays zero: its cosine is 0
    return [[float(q[n] @ s[at[r]]) if r >= 0 else 0.0 for r in rs] for n, rs in enumerate(cand.rows)]


def reorder(cand: Candidates, cosines: list[list[float]], weight: float) -> Candidates:
    """The candidates ordered by text score + ``weight`` x photo cosine, best first (equals keep the text's order)."""
    out = Candidates([], [], [])
    for copies, rows, text, cos in zip(cand.copies, cand.rows, cand.text, cosines):
        order = sorted(range(len(copies)), key=lambda j: -(text[j] + weight * cos[j]))
        out.copies.append([copies[j] for j in order])
        out.rows.append([rows[j] for j in order])
        out.text.append([text[j] for j in order])
    return out


def reranked(cand: Candidates, cosines: list[list[float]], weight: float) -> list[str]:
    """Per article the candidate with the best text score + ``weight`` x photo cosine."""
    return [copies[0] for copies in reorder(cand, cosines, weight).copies]


def photo_nearest(store: R.Datastore, articles: pd.DataFrame, cache: dict) -> list[str]:
    """The copy of each article's nearest store row by its photo features (``retrieval.nearest(by="photo")`` on the
    store with these features as its photo column: never its own product_code, never a row without a photo); the
    most common copy among rows with a photo for an article without one."""
    unit = lambda ids: torch.nn.functional.normalize(lookup(cache, ids)[0].float(), dim=1)  # noqa: E731
    imagenet = replace(store, photo=unit(store.article_id.tolist()))
    idx, _ = R.nearest(imagenet, None, unit(articles["article_id"].tolist()), articles["product_code"].to_numpy(),
                       k=1, by="photo")
    fallback = R.fallback_copy(imagenet, "photo")
    return [store.copy[i] if i >= 0 else fallback for i in idx[:, 0].tolist()]


def best_of(cand: Candidates, references: list[str]) -> list[str]:
    """Per article the candidate with the best CIDEr against its own copy: a ceiling, since it reads the reference.
    Each candidate position is scored against all references at once (``metrics.cider_scores``: the IDF is the
    references' in every call), so the per-article scores compare across positions."""
    if len(references) != len(cand.copies):
        raise ValueError(f"{len(references)} references for {len(cand.copies)} articles")
    k = max(len(c) for c in cand.copies)
    scores = np.stack([cider_scores([c[min(j, len(c) - 1)] for c in cand.copies], references) for j in range(k)], 1)
    return [c[int(np.argmax(s[:len(c)]))] for c, s in zip(cand.copies, scores)]
