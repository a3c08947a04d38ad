"""Feedback model: as-of counting, symmetric pairs, no look-ahead, training and scoring arbitrary text."""
from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import torch

from conftest import prepared_tables
from mmreason import feedback as FB
from mmreason import recommend as R


def test_asof_counts_a_day_window():
    asof = FB.AsOf(np.array([1, 1, 1, 2, 1]), np.array([5, 7, 9, 6, 7]))
    assert asof.count([1, 1, 1, 2, 3], [7, 8, 100, 7, 100]).tolist() == [1, 3, 4, 1, 0]
    assert asof.count([1], [9], since=[6]).tolist() == [2]  # days 7 and 7, not 5, not 9


def test_content_tokens_drop_stopwords():
    assert FB.content_tokens("You bought the Black jeans, in denim!") == {"bought", "black", "jeans", "denim"}
    assert FB.content_tokens("") == set() and FB.content_tokens(None) == set()


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    return prepared_tables(tmp_path_factory.mktemp("fb"))


def test_pairs_are_symmetric_and_negatives_not_bought(prepared):
    ctx = R.load_context(prepared / "data")
    pairs = FB.build_pairs(ctx, negatives=3, seed=0, progress=False)
    pos = pairs[pairs["label"] == 1]
    assert len(pos) == len(ctx.i_item) and (pairs["label"] == 0).sum() == 3 * len(pos)
    bought = set(zip(ctx.i_user, ctx.i_item, ctx.i_day))
    neg = pairs[pairs["label"] == 0]
    assert not any((u, i, d) in bought for u, i, d in zip(neg["user"], neg["item"], neg["day"]))
    # A positive's reason is exactly the silver target of mmreason.data, built the same way as a negative's.
    ex = pd.read_parquet(prepared / "data" / "examples.parquet")
    ex["user"] = ctx.user_row.loc[ex["customer_id"]].to_numpy()
    ex["item"] = ctx.item_row.loc[ex["article_id"]].to_numpy()
    ex["day"] = R.day_number(ex["t_dat"])
    merged = pos.merge(ex, on=["user", "item", "day"])
    assert len(merged) == len(pos) and (merged["reason_x"] == merged["reason_y"]).all()
    assert set(pairs["split"]) == {"train", "val", "test"}


def test_features_use_only_earlier_purchases(prepared):
    ctx = R.load_context(prepared / "data")
    f = FB.PairFeatures(ctx)
    users = np.array([ctx.user_row["a" * 64]] * 2)
    items = np.array([ctx.item_row[100000001], ctx.item_row[500000001]])
    day = R.day_number([pd.Timestamp("2019-02-10")] * 2)
    x, hist_n = f.user_item(users, items, day, "next")
    names = f.names(text=False)
    assert hist_n.tolist() == [2, 2]  # the two 2019-01-05 purchases, not that day's own
    row = dict(zip(names, x[0]))
    assert row["same_article"] == pytest.approx(np.log1p(1))  # 100000001 on 2019-01-05
    assert row["product_type_name_count"] == pytest.approx(np.log1p(1))  # trousers once
    # Adding purchases on and after the day changes nothing.
    tables = {n: pd.read_parquet(prepared / "data" / f"{n}.parquet") for n in ("users", "items", "interactions")}
    later = tables["interactions"].iloc[:2].copy()
    later["t_dat"] = [pd.Timestamp("2019-02-10"), pd.Timestamp("2019-12-01")]
    later["customer_id"] = ["a" * 64, "b" * 64]
    tables["interactions"] = pd.concat([tables["interactions"], later]).drop_duplicates(
        ["customer_id", "article_id", "t_dat"])
    ctx2 = R.Context(tables)
    x2, _ = FB.PairFeatures(ctx2).user_item(users, items, day, "next")
    np.testing.assert_allclose(x, x2)
    # History words for the text overlap: only the first hist_n purchases.
    assert "jeans" in f.history_tokens(users[0], 1) and "strap" not in f.history_tokens(users[0], 1)
    assert "strap" in f.history_tokens(users[0], 2) and "wide" not in f.history_tokens(users[0], 2)


def test_cli_trains_and_scores_arbitrary_text(prepared, tmp_path, capsys):
    items = pd.read_parquet(prepared / "data" / "items.parquet")
    emb = tmp_path / "emb.pt"
    torch.save({"article_id": torch.tensor(items["article_id"].to_numpy()),
                "embedding": torch.randn(len(items), 16)}, emb)
    out = tmp_path / "fb"
    assert FB.main(["--data", str(prepared / "data"), "--out", str(out), "--negatives", "3", "--hash-features", "64",
                    "--embeddings", str(emb), "--no-progress"]) == 0
    printed = capsys.readouterr().out
    assert "| val |" in printed and "mean_abs_real_minus_empty" in printed
    m = json.loads((out / "metrics.json").read_text())
    for split in ("train", "val", "test"):
        assert {"with_text", "no_text_features", "empty_reasons", "text_only"} <= set(m["auc"][split])
        assert m["text_sensitivity"][split]["mean_abs_real_minus_empty"] >= 0
    assert "photo_sim" in m["dense_coefficients"]
    with pytest.raises(Exception, match="photo"):  # trained with photos: loading without them is refused
        FB.FeedbackModel.load(out / "model.pkl", prepared / "data")
    model = FB.FeedbackModel.load(out / "model.pkl", prepared / "data", R.load_photo_embeddings(emb))
    texts = ["", "Matches your taste for black trousers: you bought the Skinny jeans last week.",
             "🙂 totally unrelated words " * 50, "trousers trousers trousers", None]
    p = model.score_batch(["a" * 64] * len(texts), [500000001] * len(texts), texts)
    assert p.shape == (5,) and ((p > 0) & (p < 1)).all()
    one = model.score("b" * 64, 600000001, "A soft knit sweater", day="2019-06-07")
    assert isinstance(one, float) and 0 < one < 1
    assert model.score("a" * 64, 500000001, texts[1]) == pytest.approx(p[1])
    with pytest.raises(KeyError):
        model.score("nobody", 500000001, "x")
    with pytest.raises(KeyError):
        model.score("a" * 64, 123, "x")


def test_feedback_model_without_photos_or_text(prepared):
    ctx = R.load_context(prepared / "data")
    pairs = FB.build_pairs(ctx, negatives=2, seed=1, progress=False)
    cfg = FB.FeedbackConfig(negatives=2, hash_features=32)
    for kind in FB.KINDS:
        m = FB.FeedbackModel(ctx, cfg, None, kind).fit(pairs[pairs["split"] == "train"])
        p = m.predict(pairs[pairs["split"] == "test"], "test")
        assert ((p > 0) & (p < 1)).all()
        assert len(m.feature_names()) == m.clf.coef_.shape[1]
