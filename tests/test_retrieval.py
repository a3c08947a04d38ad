"""The retrieval datastore and its nearest-neighbour lookup (``retrieval.py``) on tiny catalogues."""
from __future__ import annotations

import os

import numpy as np
import pandas as pd
import pytest
import torch
from test_evaluate import photo_lookup, tiny_items

from mmreason.evaluation import systems as evaluate
from mmreason.features import photochoice, retrieval
from mmreason.features.clip import DEFAULT_MODEL, load_clip
from mmreason.features.embed import compute_embeddings, lookup
from mmreason.model.collate import RETRIEVED_SEPARATOR

from conftest import COLOURS, work_in, write_photo

JEANS_BLACK, JEANS_BLUE, TOP, TEE, DRESS, TROUSERS, SWEATER, BIKINI = (
    100000001, 100000002, 200000001, 300000001, 400000001, 500000001, 600000001, 700000001)


def one_hot_lookup(items):
    return photo_lookup({a: [float(i == j) for j in range(8)] for i, a in enumerate(items["article_id"])})


def with_twin(items: pd.DataFrame, of: int, article_id: int, code: int, split: str, copy: str) -> pd.DataFrame:
    """``items`` plus an article of another product whose attribute text is ``of``'s, word for word."""
    twin = items[items["article_id"] == of].assign(article_id=article_id, product_code=code, split_unseen=split,
                                                   detail_desc=copy)
    return pd.concat([items, twin], ignore_index=True)


def test_nearest_never_returns_the_query_own_product_code(sentence_encoder):
    items = tiny_items()
    lookup_fn = one_hot_lookup(items)
    store = retrieval.build_store(items, lookup_fn, sentence_encoder, progress=False)
    assert DRESS not in store.article_id.tolist()  # no copy of its own: nothing to lend
    # Each store row queried with its own embeddings: its own row is the best match of every kind.
    text, photo = store.text, store.photo
    codes = store.product_code.numpy()
    for by in retrieval.BY:
        idx, score = retrieval.nearest(store, text, photo, codes, k=len(store), by=by, query_types=store.product_type)
        for q in range(len(store)):
            got = [i for i in idx[q].tolist() if i >= 0]
            assert all(store.product_code[i] != codes[q] for i in got), (by, q)
            assert len(got) == int((store.product_code != codes[q]).sum()), (by, q)  # everything else, in order
            assert score[q, : len(got)].diff().le(0).all()
    # The black jeans' nearest text is the blue jeans' (same words but one colour), which it must skip.
    idx, _ = retrieval.nearest(store, text[:1], None, [100000], by="text")
    assert store.article_id[idx[0, 0]] not in (JEANS_BLACK, JEANS_BLUE)
    # A query whose product is every row of the store has nothing left: -1.
    idx, score = retrieval.nearest(retrieval.build_store(items[items["product_code"] == 100000], lookup_fn, sentence_encoder,
                                         progress=False), text[:1], None, [100000], by="text")
    assert idx.tolist() == [[-1]] and score.isinf().all()


def test_text_retriever_returns_the_copy_of_identical_attribute_text(sentence_encoder):
    items = with_twin(tiny_items(), TROUSERS, 910000001, 910000, "test", "Held-out copy of the twin.")
    items = with_twin(items, SWEATER, 920000001, 920000, "test", "Another held-out copy.")
    lookup_fn = one_hot_lookup(items)
    store = retrieval.build_store(items, lookup_fn, sentence_encoder, progress=False)
    assert not {910000001, 920000001} & set(store.article_id.tolist())  # held-out products are never in the store
    frame = pd.DataFrame({"article_id": [910000001, 920000001]})
    got = evaluate.retrieval_reasons(frame, items, lookup_fn, "text", store)
    assert got == ["Wide trousers in woven fabric.", "Soft knit sweater with dropped shoulders. Ribbed hems."]
    text, _ = retrieval.embed_articles(items.set_index("article_id").loc[frame["article_id"]].reset_index(), sentence_encoder)
    _, score = retrieval.nearest(store, text, None, [910000, 920000], by="text")
    assert score[:, 0].tolist() == pytest.approx([1.0, 1.0], abs=1e-5)  # the same text, the same vector
    # A training query whose twin is in the store but of its own product_code is not given its own copy.
    twin_code = with_twin(tiny_items(), TROUSERS, 500000002, 500000, "train", "Wide trousers in woven fabric.")
    own = retrieval.build_store(twin_code, one_hot_lookup(twin_code), sentence_encoder, progress=False)
    assert evaluate.retrieval_reasons(pd.DataFrame({"article_id": [TROUSERS]}), twin_code, one_hot_lookup(twin_code),
                                      "text", own) != ["Wide trousers in woven fabric."]


@pytest.fixture(scope="module")
def photo_items(tmp_path_factory):
    """The tiny catalogue with a photo per article (the fixture's colours) and a random-weight domain CLIP."""
    d = tmp_path_factory.mktemp("photos")
    items = tiny_items()
    for aid, colour in zip(items["article_id"], items["colour_group_name"]):
        write_photo(d / f"{aid}.jpg", COLOURS[colour])
    items["photo_path"] = [str(d / f"{a}.jpg") for a in items["article_id"]]
    torch.manual_seed(0)
    clip = load_clip(DEFAULT_MODEL)  # random weights: the plumbing, not the quality
    ids, emb, skipped = compute_embeddings(clip[0], clip[1], items, workers=0)
    assert not skipped
    return items, clip, {"article_id": ids, "embedding": emb, "path": str(d / "cache.pt")}, d


def test_a_new_article_is_queried_against_a_store_built_before_it(photo_items, sentence_encoder):
    items, clip, cache, d = photo_items
    store = retrieval.build_store(items, lambda ids: lookup(cache, ids), sentence_encoder, progress=False)
    # A new product straight from articles.parquet's columns (no `product` column), never in the tables:
    # the trousers' attributes and colour, photographed alike. No generator is involved.
    new = items[items["article_id"] == TROUSERS].drop(columns=["product", "split_unseen"])
    new = new.assign(article_id=990000001, product_code=990000, detail_desc="", photo_path=str(d / "new.jpg"))
    write_photo(d / "new.jpg", COLOURS["Black"])
    text, photo = retrieval.embed_articles(new, sentence_encoder, clip=clip)
    # its photo embedding is the one the store's CLIP gives that photo (the trousers' photo is the same image)
    assert torch.allclose(photo[0], store.photo[store.article_id.tolist().index(TROUSERS)], atol=1e-5)
    for by in ("text", "both"):
        assert retrieval.retrieve_copies(store, new, by, sentence_encoder, clip=clip) == ["Wide trousers in woven fabric."], by
    # the photo alone ties all the black garments (one flat colour each)
    idx, _ = retrieval.nearest(store, text, photo, new["product_code"], k=1, by="photo")
    assert store.article_id[idx[0, 0]] in (JEANS_BLACK, TOP, TROUSERS, BIKINI)
    # A new article without a photo: by photo it gets the fallback copy, by both it is ranked on text.
    bare = new.assign(has_photo=False, photo_path="")
    assert retrieval.retrieve_copies(store, bare, "photo", sentence_encoder, clip=clip) == [retrieval.fallback_copy(store, "photo")]
    assert retrieval.retrieve_copies(store, bare, "both", sentence_encoder, clip=clip) == ["Wide trousers in woven fabric."]


def test_store_file_round_trips_and_is_keyed_by_what_made_it(photo_items, sentence_encoder, tmp_path, monkeypatch,
                                                               capsys):
    items, _, cache, _ = photo_items
    work_in(monkeypatch, tmp_path)
    store = retrieval.ensure_store(items, cache, sentence_encoder, progress=False)
    f = tmp_path / "artifacts" / "retrieval" / f"{retrieval.store_dir(store.meta).name}" / retrieval.STORE_FILE
    assert store.path == str(f) and f.exists() and (f.parent / "meta.json").exists()
    assert os.readlink(tmp_path / "artifacts" / "retrieval" / retrieval.NAME) == f.parent.name
    back = retrieval.load_store(f)
    for name in ("article_id", "product_code", "text", "photo"):
        assert torch.equal(getattr(back, name), getattr(store, name)), name
    assert back.copy == store.copy and back.meta == store.meta
    assert back.meta["text_encoder"].startswith("all-MiniLM-L6-v2") and back.meta["n"] == len(store)
    # A second call reads the file back rather than embedding again.
    capsys.readouterr()
    again = retrieval.ensure_store(items, cache, sentence_encoder, progress=False)
    assert "reusing" in capsys.readouterr().out and torch.equal(again.text, store.text)
    # Other photo embeddings, or another copy, make another key; the older store stays where it was.
    other_cache = cache | {"embedding": cache["embedding"].flip(0)}
    other = retrieval.ensure_store(items, other_cache, sentence_encoder, progress=False)
    edited = items.assign(detail_desc=items["detail_desc"].replace("Padded bikini top.", "Padded bikini top, lined."))
    third = retrieval.ensure_store(edited, cache, sentence_encoder, progress=False)
    assert len({store.path, other.path, third.path}) == 3 and f.exists()
    assert os.readlink(tmp_path / "artifacts" / "retrieval" / retrieval.NAME) == retrieval.store_dir(third.meta).name


def test_nearest_refuses_what_it_cannot_rank():
    items = tiny_items()
    store = retrieval.build_store(items, one_hot_lookup(items), text=False, progress=False)
    with pytest.raises(ValueError, match="by must be"):
        retrieval.nearest(store, None, store.photo, store.product_code, by="colour")
    with pytest.raises(ValueError, match="text embeddings"):
        retrieval.nearest(store, None, store.photo, store.product_code, by="text")
    with pytest.raises(ValueError, match="store's CLIP"):
        retrieval.nearest(store, None, torch.zeros(len(store), 3), store.product_code, by="photo")


class CountingEncoder:
    """The sentence encoder, counting the texts it is asked to encode."""

    def __init__(self, encoder):
        self.encoder, self.texts = encoder, []

    def encode(self, texts, **kw):
        self.texts += list(texts)
        return self.encoder.encode(texts, **kw)

    def __getattr__(self, name):
        return getattr(self.encoder, name)


def test_store_text_embeddings_encode_only_what_the_store_lacks(sentence_encoder):
    """The photo's copy choice (``photochoice.candidates``) and the prompt's retrieved segment embed the articles'
    attribute texts: a training product the store holds reuses its row's vector, an unseen one is encoded, and
    both agree with a fresh encoding of every article (to float rounding: batches differ)."""
    items = tiny_items()
    store = retrieval.build_store(items, one_hot_lookup(items), sentence_encoder, progress=False)
    counting = CountingEncoder(sentence_encoder)
    got = retrieval.store_text_embeddings(store, items, counting)
    in_store = items["article_id"].isin(store.article_id.tolist())
    assert in_store.any() and (~in_store).any()
    assert sorted(counting.texts) == sorted(retrieval.article_texts(items[~in_store]))  # the store's rows: none
    fresh, _ = retrieval.embed_articles(items, sentence_encoder)
    torch.testing.assert_close(got, fresh, atol=1e-5, rtol=0)
    # and the candidates the photo chooses among are those of a fresh encoding
    counting.texts = []
    cand = photochoice.candidates(store, items, 4, encoder=counting)
    assert len(counting.texts) == int((~in_store).sum())
    idx, _ = retrieval.nearest(store, fresh, None, items["product_code"].to_numpy(), k=1, by="text_type",
                               query_types=items["product_type_name"].fillna("").astype(str).tolist())
    assert [c[0] for c in cand.copies] == [store.copy[i] if i >= 0 else retrieval.fallback_copy(store, "text_type")
                                           for i in idx[:, 0].tolist()]
    # a new articles file that reuses a stored id for another product: its own text is encoded
    other = items[in_store].iloc[[0]].assign(product_code=999999, product="Long skirt, Red, Skirt, Stripe")
    counting.texts = []
    retrieval.store_text_embeddings(store, other, counting)
    assert counting.texts == ["Long skirt, Red, Skirt, Stripe"]


def test_neighbour_texts_are_distinct_copies_of_other_training_products(sentence_encoder, tmp_path, monkeypatch):
    """The prompt's retrieved segment: k distinct copies, each of a store row (a training product) of another
    product code; a held-out product's copy is never lent, not even to its twin. Keyed file round-trips."""
    items = with_twin(tiny_items(), TROUSERS, 910000001, 910000, "test", "Held-out copy of the twin.")
    items = with_twin(items, TROUSERS, 930000001, 930000, "train", "Wide trousers in woven fabric.")  # same copy
    lookup_fn = one_hot_lookup(items)
    store = retrieval.build_store(items, lookup_fn, sentence_encoder, progress=False)
    texts = retrieval.neighbour_texts(store, items, k=2, encoder=sentence_encoder, progress=False)
    code_of = {}
    for c, code in zip(store.copy, store.product_code.tolist()):
        code_of.setdefault(c, set()).add(code)
    for (code, text) in zip(items["product_code"], texts):
        parts = text.split(RETRIEVED_SEPARATOR)
        assert len(parts) == 2 and len(set(parts)) == 2, text
        assert all(code_of.get(p, set()) - {code} for p in parts), (code, text)  # another product's copy
        assert "Held-out copy of the twin." not in parts
    # the trousers' textual twin (another product, same copy) is its nearest: its copy comes first, once
    assert texts[items.index[items["article_id"] == TROUSERS][0]].startswith("Wide trousers in woven fabric.")
    work_in(monkeypatch, tmp_path)
    got, f = retrieval.ensure_neighbours(store, items, k=2, encoder=sentence_encoder)
    assert f.exists() and got == dict(zip(items["article_id"].astype(int), texts))
    again, f2 = retrieval.ensure_neighbours(store, items, k=2, encoder=sentence_encoder)
    assert f2 == f and again == got
    assert retrieval.ensure_neighbours(store, items, k=1, encoder=sentence_encoder)[1] != f  # keyed by k


def test_text_type_ranks_the_query_own_product_type_first(sentence_encoder):
    items = tiny_items()
    store = retrieval.build_store(items, one_hot_lookup(items), sentence_encoder, progress=False)
    row = {a: i for i, a in enumerate(store.article_id.tolist())}
    tee_text = store.text[row[TEE]][None]
    by_text, _ = retrieval.nearest(store, tee_text, None, [0], by="text")
    assert store.article_id[by_text[0, 0]] == TEE                    # the text alone finds the tee itself
    for qtype, expected in (("Sweater", SWEATER), ("Kaftan", TEE)):  # a type the store lacks: text decides
        idx, _ = retrieval.nearest(store, tee_text, None, [0], by="text_type", query_types=[qtype])
        assert store.article_id[idx[0, 0]] == expected, qtype
    with pytest.raises(ValueError, match="product types"):
        retrieval.nearest(store, tee_text, None, [0], by="text_type")


def test_encode_texts_keeps_the_given_order_whatever_the_length_order(sentence_encoder):
    # encode_texts encodes longest first in chunks; each row must come back to its text's place
    texts = ["Jeans", "A long soft knitted sweater in a wool blend with dropped shoulders and ribbed cuffs",
             "Top", "Trousers in woven fabric with a high waist", "Dress in jersey", "Bikini top"]
    got = retrieval.encode_texts(texts, sentence_encoder, batch_size=2, progress=False)
    alone = torch.cat([retrieval.encode_texts([t], sentence_encoder, progress=False) for t in texts])
    assert got.shape == (len(texts), alone.size(1))
    # same text, other padding: equal up to float rounding of the padded matmuls
    torch.testing.assert_close(got, alone, atol=1e-5, rtol=0)


def test_by_photo_only_rows_with_a_photo_and_by_type_every_own_type_row_first():
    """A hand-made store of four rows: 0 and 3 have no photo and share the most common copy."""
    text = torch.nn.functional.normalize(torch.tensor([[1.0, 0.0], [-0.9, 0.436], [0.0, 1.0], [0.6, 0.8]]), dim=1)
    photo = torch.tensor([[0.0, 0.0], [-1.0, 0.0], [0.0, -1.0], [0.0, 0.0]])
    store = retrieval.Datastore(article_id=torch.tensor([1, 2, 3, 4]), product_code=torch.tensor([10, 20, 30, 40]),
                                copy=["x", "b", "c", "x"], text=text, photo=photo,
                                product_type=["Dress", "Top", "Top", "Dress"], meta={})
    assert store.has_photo.tolist() == [False, True, True, False]
    idx, _ = retrieval.nearest(store, None, torch.tensor([[1.0, 0.0]]), [0], by="photo")
    assert idx.tolist() == [[2]]  # cosines 0, -1, 0, 0: the rows without a photo are not candidates
    idx, _ = retrieval.nearest(store, text[:1], None, [0], k=4, by="text_type", query_types=["Top"])
    assert idx.tolist() == [[2, 1, 0, 3]]  # a Top at cosine -0.9 still ranks above a Dress at 1.0
    assert retrieval.fallback_copy(store, "photo") == "b" and retrieval.fallback_copy(store, "text") == "x"


def test_the_retrieval_report_has_a_column_per_metric_and_names_the_choice():
    import math

    from mmreason import retrieval as command

    row = {"stage": "validation", "split": "unseen", "system": "retrieval_text", "by": "text", "n": 3}
    values = {k: 0.25 * i for i, (_, k) in enumerate(command.COLUMNS)} | {"grounding_colour_precision": math.nan}
    meta = {"n": 3, "seed": 0, "store_rows": 10, "store": "artifacts/retrieval/x/datastore.pt", "text_encoder": "t",
            "photo_embeddings": "p.pt"}
    table = command.markdown({"meta": meta, "results": [row | values], "validation_mean_copy_cider": {"retrieval_text": 0.0},
                              "chosen": "retrieval_text"})
    header = next(line for line in table.splitlines() if line.startswith("| set |"))
    assert "| contradicts its copy |" in header and "| copy CIDEr |" in header
    cells = next(line for line in table.splitlines() if line.startswith("| validation |")).strip("| ").split(" | ")
    assert cells[4:-1] == ["–" if math.isnan(v) else f"{v:.3f}" for v in values.values()]  # in COLUMNS' order
    assert cells[-1] == "–" and header.endswith("| copy CIDEr vs retrieval_text_type |")
    ratio = {"vs_text_type": -0.027, "vs_text_type_low": -0.081, "vs_text_type_high": 0.03}
    table = command.markdown({"meta": meta, "results": [row | values | ratio], "chosen": "retrieval_text",
                              "validation_mean_copy_cider": {"retrieval_text": 0.0}})
    assert next(line for line in table.splitlines() if line.startswith("| validation |")).endswith(
        "| -2.7% [-8.1%, +3.0%] |")
    assert "**retrieval_text**" in table
    assert "retrieval_vetted" not in table and "| changed by the photo |" in header

    vetted = row | values | {"system": command.VETTED, "by": "text_type, photo veto", "vetoed": 0.125}
    meta["photo_details"] = {"encoder": "efficientnet-lite0", "features": "f.pt", "k": 8, "tau": 0.05,
                             "trained_on": {"sleeves": 6852, "fabric": 10615}}
    table = command.markdown({"meta": meta, "results": [row | values, vetted], "chosen": "retrieval_text",
                              "validation_mean_copy_cider": {"retrieval_text": 0.0, command.VETTED: 1.0}})
    assert "`retrieval_vetted`: the first of the 8 nearest distinct copies" in table and "sleeves 6,852" in table
    assert "| validation | unseen | retrieval_vetted | text_type, photo veto |" in table
    assert next(line for line in table.splitlines() if "| retrieval_vetted |" in line).endswith("| 0.125 | – |")
    # the choice is among nearest's rankings: the prompt's retrieval_by cannot be the vetted copies, nor the photo's
    # choices, nor the ceiling
    assert command.choose(pd.Series({"retrieval_text": 2.0, command.VETTED: 3.0, "retrieval": 1.0})) == "retrieval_text"
    assert command.choose(pd.Series({"retrieval_text": 2.0, command.RERANKED: 3.0, command.BEST_OF: 4.0,
                                     command.PHOTO_NET: 5.0, command.RERANKED_VETTED: 6.0})) == "retrieval_text"
    # the re-ranking's weight and the grid it was chosen from are named
    table = command.markdown({"meta": meta, "results": [row | values], "chosen": "retrieval_text",
                              "validation_mean_copy_cider": {"retrieval_text": 0.0},
                              "rerank": {"k": 8, "weights": {"0.05": 2.2, "0.1": 2.33}, "chosen": 0.1}})
    assert "w = 0.1 chosen on the validation sets' mean copy CIDEr (0.05 2.200, 0.1 2.330)" in table
    assert "`best_of_k`: the one of the 8 with the best CIDEr" in table


def test_the_report_chooses_the_photo_weight_on_validation_and_scores_every_set_with_it(monkeypatch):
    """The wiring of ``compare``'s photo rows, with the frames and the metric stubbed: on validation the photo's copy
    B beats the text's A, on test A beats B by more; the weight must be the first that validation favours (0.1: B
    first, 0.93 + 0.1 against 1.0; 0.05 keeps A), and every set's photo rows must use it."""
    from mmreason import retrieval as command
    from mmreason.features.photochoice import Candidates

    def frame(examples, split, n, seed, stage):
        return pd.DataFrame({"article_id": [1, 2], "item_copy": ["r", "r"], "stage": stage})

    def score(hyps, frame, items, hist, vocab, with_embedding, parts, per_example):
        good, worth = ("B", 1.0) if frame["stage"].iloc[0] == "val" else ("A", 2.0)
        # per-example copy CIDEr: 1 for a copy "A", 2 for "B" (the real one needs a corpus); the ratio is M.paired_ratio's
        if per_example is not None:
            per_example["copy_cider"] = np.array([1.0 if h == "A" else 2.0 for h in hyps])
        return {k: 0.0 for _, k in command.COLUMNS} | {"copy_cider": worth * float(np.mean([h == good for h in hyps]))}

    cand = Candidates(copies=[["A", "B"], ["A", "B"]], rows=[[0, 1], [0, 1]], text=[[1.0, 0.93], [1.0, 0.93]])
    monkeypatch.setattr(command, "vocab_from_items", lambda items: {})
    monkeypatch.setattr(command.E, "test_frame", frame)
    monkeypatch.setattr(command.E, "histories", lambda frame, interactions, items: None)
    monkeypatch.setattr(command.E, "frame_articles", lambda frame, items: frame)
    monkeypatch.setattr(command.E, "baseline_parts", lambda *a: [("", "A"), ("", "A")])
    monkeypatch.setattr(command.E, "score", score)
    monkeypatch.setattr(command, "candidates", lambda store, arts, k: cand)
    monkeypatch.setattr(command, "photo_cosines", lambda store, arts, c, features: [[0.0, 1.0], [0.0, 1.0]])
    monkeypatch.setattr(command, "photo_nearest", lambda store, arts, features: ["B", "B"])
    monkeypatch.setattr(command, "best_of", lambda c, refs: ["A", "A"])
    seen = []

    def vetted(store, arts, probe, features, cand):
        seen.append(cand.copies[0][0])
        return [cs[0] for cs in cand.copies], 0.0

    monkeypatch.setattr(command, "vetted_copies", vetted)
    report = command.compare(None, None, None, None, None, photo_features={}, probe=object())
    assert report["rerank"]["chosen"] == 0.1
    assert report["rerank"]["weights"] == {"0.05": 0.0, "0.1": 1.0, "0.25": 1.0, "0.5": 1.0, "1.0": 1.0}
    rows = {(r["stage"], r["split"], r["system"]): r for r in report["results"]}
    for split in ("temporal", "unseen"):
        assert rows["test", split, command.RERANKED]["copy_cider"] == 0.0      # B, with validation's weight
        assert rows["validation", split, command.RERANKED]["copy_cider"] == 1.0
        assert rows["test", split, command.RERANKED]["vetoed"] == 1.0          # moved off the text's nearest
        assert rows["test", split, command.VETTED]["vetoed"] == 0.0
        assert rows["test", split, command.BEST_OF]["copy_cider"] == 2.0
    # per set: the vetted row on the text's order, then the re-ranked-then-vetted one on the photo's
    assert seen == ["A", "B"] * 4
    assert report["chosen"] == "retrieval"  # the stubbed retrievers tie; never a photo row
    # each row's copy CIDEr against the text's nearest (own type first), per example on the same examples
    photo_b = {command.RERANKED, command.RERANKED_VETTED, command.PHOTO_NET}  # the rows that show B
    assert all(r["vs_text_type"] == (1.0 if r["system"] in photo_b else 0.0) for r in report["results"])
    assert all(r["vs_text_type_low"] == r["vs_text_type_high"] == r["vs_text_type"] for r in report["results"])
