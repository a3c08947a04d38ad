"""Can the photo choose the copy (``features/photochoice.py``): candidates, re-ranking, photo retrieval, the ceiling."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from mmreason.features import photochoice as P
from mmreason.features.retrieval import Datastore, encode_texts
from mmreason.metrics import cider, cider_scores

TEXTS = ["Short dress, Black, Dress, Solid",                  # rows 0-3: dresses, from nearest to farthest by text
         "Short dress, Black, Dress, Solid, Jersey",
         "Short dress, Black, Dress, Solid, Jersey Fancy, Ladieswear",
         "Long dress, Red, Dress, Stripe, Jersey Fancy, Divided",
         "Swimsuit, Black, Swimsuit, Solid"]                  # row 4: another type
COPIES = ["Dress A.", "Dress B.", "Dress A.", "Dress C.", "Swimsuit."]  # row 2 repeats row 0's copy
# photo features of the store's rows: row 3 looks like the query photo Q, row 1 has none
PHOTOS = torch.tensor([[1.0, 0.0], [0.0, 0.0], [0.6, 0.8], [0.0, 1.0], [0.0, 1.0]])
Q = torch.tensor([0.0, 1.0])


@pytest.fixture
def store(sentence_encoder) -> Datastore:
    return Datastore(article_id=torch.arange(1, 6), product_code=torch.tensor([10, 20, 30, 40, 50]), copy=COPIES,
                     text=encode_texts(TEXTS, sentence_encoder, progress=False), photo=torch.zeros(5, 1),
                     product_type=["Dress"] * 4 + ["Swimsuit"])


def cache(with_query: bool = True) -> dict:
    ids, rows = [1, 3, 4, 5], [PHOTOS[0], PHOTOS[2], PHOTOS[3], PHOTOS[4]]  # article 2 has no photo
    if with_query:
        ids, rows = ids + [9], rows + [Q]
    return {"article_id": torch.tensor(ids), "embedding": torch.stack(rows)}


def query(code: int = 90) -> pd.DataFrame:
    return pd.DataFrame({"article_id": [9], "product_code": [code], "product_type_name": ["Dress"],
                         "product": [TEXTS[0]]})


def test_candidates_are_distinct_copies_of_the_nearest_type_best_text_first(store, sentence_encoder):
    cand = P.candidates(store, query(), k=8, encoder=sentence_encoder)
    assert cand.copies == [["Dress A.", "Dress B.", "Dress C."]]      # row 2's copy is row 0's; no swimsuit
    assert cand.rows == [[0, 1, 3]]                                   # each copy at its best row
    assert cand.text[0] == sorted(cand.text[0], reverse=True)
    assert P.candidates(store, query(), k=2, encoder=sentence_encoder).copies == [["Dress A.", "Dress B."]]
    # never a row of the article's own product: Dress A. is then found at row 2, further by text
    own = P.candidates(store, query(code=10), k=8, encoder=sentence_encoder)
    assert 0 not in own.rows[0] and own.rows[0][own.copies[0].index("Dress A.")] == 2


def test_reranking_weighs_the_photo_and_reads_no_photo_as_zero(store, sentence_encoder):
    cand = P.candidates(store, query(), k=8, encoder=sentence_encoder)
    cos = P.photo_cosines(store, query(), cand, cache())
    assert cos[0] == pytest.approx([0.0, 0.0, 1.0])   # Dress A's best row (0) is orthogonal, B's row has no photo
    assert P.reranked(cand, cos, 0.0) == ["Dress A."]                  # weight 0: the text's nearest
    assert P.reranked(cand, cos, 10.0) == ["Dress C."]                 # a heavy weight: the photo's
    order = P.reorder(cand, cos, 10.0)
    assert order.copies == [["Dress C.", "Dress A.", "Dress B."]] and order.rows == [[3, 0, 1]]
    # an article without a photo keeps the text's order whatever the weight
    bare = P.photo_cosines(store, query(), cand, cache(with_query=False))
    assert bare == [[0.0, 0.0, 0.0]] and P.reranked(cand, bare, 10.0) == ["Dress A."]


def test_photo_nearest_ranks_by_the_features_never_the_own_product(store):
    assert P.photo_nearest(store, query(), cache()) == ["Dress C."]    # row 3 ties row 4; the first wins
    assert P.photo_nearest(store, query(code=40), cache()) == ["Swimsuit."]
    # rows without a photo are not ranked, even where every photo is far (a zero row's cosine 0 would win)
    far = cache() | {"embedding": torch.cat([cache()["embedding"][:4], -torch.ones(1, 2)])}
    assert P.photo_nearest(store, query(), far) == ["Dress A."]        # rows 0, 3, 4 tie at -0.71; not row 1
    # no photo: the store's most common copy
    assert P.photo_nearest(store, query(), cache(with_query=False)) == ["Dress A."]


def test_best_of_picks_the_candidate_closest_to_the_reference():
    cand = P.Candidates(copies=[["a red dress with long sleeves", "a black jersey top with a round neck"],
                                ["a black jersey top with a round neck", "a red dress with long sleeves"],
                                ["short shorts in denim"]],
                        rows=[[0, 1], [1, 0], [2]], text=[[1.0, 0.9], [1.0, 0.9], [1.0]])
    refs = ["a black jersey top with a round neck and long sleeves", "a red dress with long sleeves and a belt",
            "denim shorts with a high waist"]
    assert P.best_of(cand, refs) == ["a black jersey top with a round neck", "a red dress with long sleeves",
                                     "short shorts in denim"]
    with pytest.raises(ValueError, match="references"):
        P.best_of(cand, refs[:2])


def test_cider_scores_are_per_hyp_and_average_to_the_corpus_cider():
    refs = ["a red dress with long sleeves", "a black top in jersey", "denim shorts with a high waist",
            "a white shirt in cotton"]
    hyps = ["a red dress with long sleeves", "a top", "denim shorts", "a red dress"]
    per = cider_scores(hyps, refs)
    assert per.shape == (4,) and per[0] == per.max() and per[0] > per[2] > per[3]
    assert float(np.mean(per)) == pytest.approx(cider(hyps, refs))
    assert cider_scores([], []).shape == (0,)


def test_candidates_break_equal_scores_in_store_order_whatever_topk_returns(store, monkeypatch):
    # rows 0 and 2 tie (identical attribute texts); a topk that returns the later one first must not make it nearest
    monkeypatch.setattr(P.R, "embed_articles", lambda articles, encoder, text: (torch.zeros(1, 384), None))
    monkeypatch.setattr(P.R, "nearest", lambda *a, **kw: (torch.tensor([[2, 0, 1, -1]]),
                                                           torch.tensor([[1.0, 1.0, 0.5, float("-inf")]])))
    store.copy = ["Dress A.", "Dress B.", "Dress C.", "Dress D.", "Swimsuit."]
    cand = P.candidates(store, query(), k=8)
    assert cand.copies == [["Dress A.", "Dress C.", "Dress B."]] and cand.rows == [[0, 2, 1]]
