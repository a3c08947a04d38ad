"""New articles (not in the prepared tables) get reasons from a trained run without retraining:
``python -m mmreason.explain --articles FILE --images DIR --customer ID`` on a tiny run that retrieves."""
from __future__ import annotations

import json

import pandas as pd
import pytest
import torch
from test_serve import tiny_run

from mmreason import explain
from mmreason.features import photochoice, retrieval
from mmreason.features.embed import lookup
from mmreason.io import DataError
from mmreason.model.collate import RETRIEVED_SEPARATOR
from mmreason.serving import explainer

from conftest import CUSTOMERS, write_photo

NEW = [  # a new colour of an existing product (its own product's copy must not be lent to it), and a new product
    (100000009, 100000, "Skinny jeans", "Trousers", "Garment Lower body", "Denim", "Dark Red", "Womens Casual",
     "Trousers Denim"),
    (900000001, 900000, "Linen shirt", "Shirt", "Garment Upper body", "Solid", "White", "Womens Everyday Basics",
     "Blouses"),
]


@pytest.fixture(scope="module")
def work(tmp_path_factory):
    root = tiny_run(tmp_path_factory.mktemp("explain"))
    cols = ["article_id", "product_code", "prod_name", "product_type_name", "product_group_name",
            "graphical_appearance_name", "colour_group_name", "section_name", "garment_group_name"]
    df = pd.DataFrame(NEW, columns=cols)
    df["perceived_colour_value_name"], df["perceived_colour_master_name"] = "Dark", "Red"
    df["department_name"], df["index_group_name"] = "Dept", "Ladieswear"
    df.to_csv(root / "new.csv", index=False)
    write_photo(root / "photos" / "0100000009.jpg", (120, 10, 20))  # the shirt has no photo
    return root


def run(work, monkeypatch, *extra):
    monkeypatch.chdir(work)
    monkeypatch.setenv("MMREASON_ARTIFACTS", str(work / "artifacts"))
    return explain.main(["--articles", str(work / "new.csv"), "--images", str(work / "photos"), "--customer",
                         CUSTOMERS[0], "--run", str(work / "run"), "--decode", "greedy", *extra])


def test_new_articles_get_reasons(work, monkeypatch, capsys):
    out = work / "reasons.json"
    assert run(work, monkeypatch, "--out", str(out)) == 0
    got = json.loads(out.read_text())
    assert [g["article_id"] for g in got] == [a[0] for a in NEW]
    assert all(isinstance(g["reason"], str) for g in got)
    printed = [line.split("\t") for line in capsys.readouterr().out.splitlines() if "\t" in line]
    assert [(int(p[0]), p[2]) for p in printed] == [(g["article_id"], g["reason"]) for g in got]


def test_new_articles_prompt_parts(work, monkeypatch):
    """Photos are found (or marked missing), and the retrieved copies come from the run's datastore, never from
    the article's own product."""
    monkeypatch.chdir(work)
    monkeypatch.setenv("MMREASON_ARTIFACTS", str(work / "artifacts"))
    arts = explainer.read_new_articles(work / "new.csv", work / "photos")
    assert arts["has_photo"].tolist() == [True, False]
    ex = explainer.Explainer(work / "run", decode="greedy")
    assert "retrieved" in ex.data.prompt_fields and ex._retrieval()[0] > 0  # the default config retrieves
    # the photo's copies (shown.photo_offer) are read when the Explainer starts, not on its first request ...
    assert "photo_offers" in vars(ex.data.artifacts) and set(ex.data.artifacts.photo_offers) == set(ex.items.index)
    # ... and only where they will be offered
    assert "photo_offers" not in vars(explainer.Explainer(work / "run", offer_retrieved=1).data.artifacts)
    store = retrieval.ensure_store(ex.data.artifacts.items, ex.data.artifacts.cache, progress=False)
    texts = retrieval.neighbour_texts(store, arts, k=2, progress=False)
    own = "Skinny jeans in stretch denim."
    assert own in store.copy                       # the product's copy is in the store ...
    assert texts[0] and own not in texts[0]        # ... and never lent to another colour of it
    assert all(t for t in texts)


def test_bad_articles_file_is_one_line_and_writes_nothing(work, monkeypatch, capsys, tmp_path):
    bad = tmp_path / "bad.csv"
    pd.read_csv(work / "new.csv").drop(columns=["colour_group_name"]).to_csv(bad, index=False)
    out = tmp_path / "reasons.json"
    monkeypatch.chdir(work)
    rc = explain.main(["--articles", str(bad), "--customer", CUSTOMERS[0], "--run", str(work / "run"),
                       "--out", str(out)])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and len(err.splitlines()) == 1 and "colour_group_name" in err
    assert not out.exists()
    with pytest.raises(DataError, match="no such articles file"):
        explainer.read_new_articles(tmp_path / "none.csv")


def test_offer_retrieved_shows_the_retrieved_copy_after_the_hook(work, monkeypatch, capsys):
    """--offer-retrieved 1: a shown reason whose source is "retrieved" is its hook followed by the article's
    first retrieved copy (from the current datastore, never its own product's copy)."""
    out = work / "offered.json"
    assert run(work, monkeypatch, "--offer-retrieved", "1", "--out", str(out)) == 0
    got = json.loads(out.read_text())
    ex = explainer.Explainer(work / "run", decode="greedy")
    store = retrieval.ensure_store(ex.data.artifacts.items, ex.data.artifacts.cache, progress=False)
    firsts = [t.split(RETRIEVED_SEPARATOR)[0] for t in retrieval.neighbour_texts(
        store, explainer.read_new_articles(work / "new.csv", work / "photos"), k=1, progress=False)]
    assert any(g["source"] == "retrieved" for g in got)
    for g, first in zip(got, firsts):
        assert g["source"] in ("generated", "retrieved")
        assert (g["source"] == "retrieved") == (g["passed_filter"] and g["reason"].endswith(" " + first)), g


def test_contexts_are_kept_per_customer_and_day(work, monkeypatch):
    """A customer's prompt context is built once per (customer, day) and equals user_context's; the oldest is
    dropped past Explainer.CONTEXTS (the server asks for many reasons per customer and day)."""
    monkeypatch.chdir(work)
    monkeypatch.setenv("MMREASON_ARTIFACTS", str(work / "artifacts"))
    ex = explainer.Explainer(work / "run", decode="greedy")
    real, calls = explainer.user_context, []
    monkeypatch.setattr(explainer, "user_context", lambda t, c, d, **kw: calls.append((c, d)) or real(t, c, d, **kw))
    day = ex.next_day()
    first = ex.context(CUSTOMERS[0], day)
    assert ex.context(CUSTOMERS[0], day) is first and len(calls) == 1
    assert first[0] == real(ex.tables, CUSTOMERS[0], day, cuts=ex.cuts)
    ex.context(CUSTOMERS[0], day - pd.Timedelta(days=30))  # another day: another context
    assert len(calls) == 2
    ex.CONTEXTS = 2
    ex.context(CUSTOMERS[1], day)                          # the first one is now the oldest, and dropped
    ex.context(CUSTOMERS[0], day)
    assert len(calls) == 4


def test_new_articles_read_both_photo_layouts_blank_cells_and_refuse_a_bad_id(tmp_path):
    """No trained run needed: the articles file alone."""
    from PIL import Image
    row = {c: "x" for c in explainer.NEW_ARTICLE_COLUMNS} | {"article_id": 123456789, "product_code": 123456,
                                                               "colour_group_name": None}
    pd.DataFrame([row, row | {"article_id": 987654321}]).to_csv(tmp_path / "a.csv", index=False)
    (tmp_path / "img" / "012").mkdir(parents=True)
    Image.new("RGB", (4, 4)).save(tmp_path / "img" / "012" / "0123456789.jpg")  # H&M's <first 3 digits>/ layout
    Image.new("RGB", (4, 4)).save(tmp_path / "img" / "0987654321.jpg")           # a flat folder
    arts = explainer.read_new_articles(tmp_path / "a.csv", tmp_path / "img")
    assert arts["has_photo"].tolist() == [True, True]
    assert arts["colour_group_name"].tolist() == ["", ""]  # an empty cell is no colour, not "nan"
    pd.DataFrame([row | {"article_id": "abc"}]).to_csv(tmp_path / "b.csv", index=False)
    with pytest.raises(DataError, match="article_id 'abc' is not a number"):
        explainer.read_new_articles(tmp_path / "b.csv")


def test_new_articles_get_the_copy_their_photo_chooses(work, monkeypatch):
    """As deployed, a run that sees the photo offers a new article the copy its photo chooses
    (``photodetails.new_offers``: the offers table's choice, with the table's probe), not its prompt's first
    retrieved copy; an explicit offer_retrieved keeps the prompt's. The choice is the table's: a catalogue
    article passed as new, with its own photo features, gets the copy the table holds for it."""
    from mmreason.features import photodetails, photonet

    monkeypatch.chdir(work)
    monkeypatch.setenv("MMREASON_ARTIFACTS", str(work / "artifacts"))
    arts = explainer.read_new_articles(work / "new.csv", work / "photos")
    ex = explainer.Explainer(work / "run", decode="greedy")
    art = ex.data.artifacts
    store = retrieval.ensure_store(art.items, art.cache, progress=False)
    cache = photonet.load_features(art.items, progress=False)
    assert torch.equal(photodetails.ensure_probe(store, cache).weight["sleeves"],  # read back as trained
                       photodetails.store_probe(store, cache).weight["sleeves"])
    some = art.items[art.items["has_photo"].astype(bool)].head(6)
    feats, _ = lookup(cache, some["article_id"].tolist())
    mine = photodetails.new_offers(store, some, {"article_id": torch.as_tensor(some["article_id"].to_numpy()),
                                                 "embedding": feats}, cache)
    assert mine == [art.photo_offers[int(a)] for a in some["article_id"]]
    # the shirt has no photo: the text's nearest copy, as the table gives an article without one
    chosen = ex._new_offers(store, arts)
    assert chosen[1] == photochoice.candidates(store, arts.iloc[[1]], photodetails.K).copies[0][0]
    # what explain_new offers is that choice: a copy stood in for it is shown after the hook where it passes
    fits = ["Soft and comfortable for every day.", "Made to be worn for every day."]
    monkeypatch.setattr(photodetails, "new_offers", lambda *a, **kw: fits)
    got = ex.explain_new(CUSTOMERS[0], arts)
    assert [g.source for g in got] == ["retrieved"] * 2 and all(g.reason.endswith(" " + f) for g, f in zip(got, fits))
    explicit = explainer.Explainer(work / "run", decode="greedy", offer_retrieved=1).explain_new(CUSTOMERS[0], arts)
    assert not any(g.reason.endswith(" " + f) for g, f in zip(explicit, fits))
