"""Recommender: metrics by hand, baselines on a hand-made purchase set, no look-ahead, the two-tower
model, and the CLI end to end on the tiny H&M fixture."""
from __future__ import annotations

import json
import math
from collections import Counter

import numpy as np
import pandas as pd
import pytest
import torch

from mmreason import recommend as R
from mmreason.recsys import api, baselines, context, twotower
from mmreason.recsys import ranking as rk

from conftest import prepared_tables

# ----------------------------------------------------------------------------- metrics

def test_metrics_on_hand_computed_cases():
    ranked, targets = [5, 3, 9, 1], {3, 1}
    assert rk.hit_rate_at_k(ranked, targets, 1) == 0.0
    assert rk.hit_rate_at_k(ranked, targets, 2) == 1.0
    assert rk.recall_at_k(ranked, targets, 2) == 0.5
    assert rk.recall_at_k(ranked, targets, 4) == 1.0
    assert rk.ndcg_at_k(ranked, targets, 2) == pytest.approx((1 / math.log2(3)) / (1 + 1 / math.log2(3)))
    assert rk.ndcg_at_k(ranked, targets, 4) == pytest.approx((1 / math.log2(3) + 1 / math.log2(5)) / (1 + 1 / math.log2(3)))
    assert rk.ndcg_at_k([3, 1], targets, 2) == pytest.approx(1.0)
    assert rk.ndcg_at_k([7, 8], targets, 2) == 0.0
    # three targets, k=2: the ideal has only two hits
    assert rk.ndcg_at_k([3, 4], {3, 1, 2}, 2) == pytest.approx(1 / (1 + 1 / math.log2(3)))
    assert rk.recall_at_k([3, 4], {3, 1, 2}, 2) == pytest.approx(1 / 3)
    m = rk.ranking_metrics([[5, 3], [7, 8]], [{3}, {1}], ks=(1, 2))
    assert m["HR@1"] == 0.0 and m["HR@2"] == 0.5 and m["Recall@2"] == 0.5
    assert m["NDCG@2"] == pytest.approx(0.5 / math.log2(3))


def test_top_k_breaks_ties_by_row_and_excludes():
    s = np.array([[1.0, 3.0, 3.0, 0.0, 3.0]])
    assert rk.top_k(s, 2).tolist() == [[1, 2]]
    assert rk.top_k(s, 3, [np.array([1])]).tolist() == [[2, 4, 0]]
    assert rk.top_k(s, 6, [np.array([0, 1])]).tolist() == [[2, 4, 3, -1, -1, -1]]


# ----------------------------------------------------------------------------- a hand-made purchase set

A, B, C, D, E, F = 1, 2, 3, 4, 5, 6  # article ids; F is another colour of A (same product_code)
DAY0 = pd.Timestamp("2020-01-01")


def hand_tables(extra=()):
    items = pd.DataFrame({
        "article_id": [A, B, C, D, E, F], "product_code": [100, 200, 300, 400, 500, 100],
        "prod_name": ["a", "b", "c", "d", "e", "f"],
        "product_type_name": ["Trousers", "Top", "Top", "Dress", "Top", "Trousers"],
        "colour_group_name": ["Black", "White", "Black", "Red", "Blue", "Grey"],
        "graphical_appearance_name": ["Solid"] * 6, "section_name": ["S1", "S1", "S2", "S2", "S3", "S1"],
        "garment_group_name": ["G1", "G2", "G2", "G3", "G2", "G1"], "index_group_name": ["Ladieswear"] * 6,
        "detail_desc": ["x"] * 6,
    })
    rows = [  # (customer, article, day, split)
        ("x", A, 1, "train"), ("x", B, 2, "train"), ("x", C, 10, "val"),
        ("y", A, 1, "train"), ("y", C, 2, "train"),
        ("w", A, 3, "train"), ("w", C, 3, "train"),
        ("v", B, 4, "train"), ("v", D, 4, "train"),
        ("v2", B, 4, "train"), ("v2", D, 4, "train"),
        ("o1", D, -40, "train"), ("o2", D, -40, "train"),
        *[(f"z{i}", E, 20, "train") for i in range(4)],  # E is popular only *after* x's val day
        *extra,
    ]
    inter = pd.DataFrame(rows, columns=["customer_id", "article_id", "day", "split_temporal"])
    inter["t_dat"] = DAY0 + pd.to_timedelta(inter.pop("day"), unit="D")
    users = pd.DataFrame({"customer_id": sorted(inter["customer_id"].unique())})
    users["age_band"], users["club_member_status"], users["fashion_news_frequency"] = "age 25-34", "ACTIVE", "NONE"
    return {"items": items, "users": users, "interactions": inter}


def ranking(fn, ctx, task, who="x"):
    i = task.customers.index(who)
    rows = rk.top_k(fn(ctx, task, np.array([i])), ctx.n_items)[0]
    return ctx.items["article_id"].to_numpy()[rows].tolist()


def test_task_history_and_targets_stop_at_the_day():
    ctx = context.Context(hand_tables())
    task = ctx.task("val")
    assert task.customers == ["x"] and task.targets == [{ctx.item_row[C]}]
    assert sorted(ctx.items["article_id"].to_numpy()[task.history[0]].tolist()) == [A, B]
    assert (task.history_days[0] < task.cutoff[0]).all()
    assert set(ctx.i_split[np.isin(ctx.i_item, task.pool_item)]) >= {"train"}
    assert len(task.pool_item) == (ctx.i_split == "train").sum()  # val pool: train split only


def test_a_customer_whose_first_purchase_is_on_the_day_is_cold_and_not_evaluated():
    ctx = context.Context(hand_tables([("new", A, 10, "val")]))
    task = ctx.task("val")
    assert task.customers == ["x"] and task.n_cold == 1  # nothing before the day to rank from


def test_popularity_counts_only_purchases_before_the_day():
    ctx = context.Context(hand_tables())
    task = ctx.task("val")
    # As of day 10: D 4 (two of them 50 days earlier), A 3, B 3, C 2, E 0 (bought on day 20), F 0.
    assert ranking(baselines.score_popularity, ctx, task) == [D, A, B, C, E, F]
    # The global count over the train split sees the four later E purchases.
    assert ranking(baselines.score_popularity_global, ctx, task)[:2] == [D, E]
    # The last 4 weeks: D's two old purchases fall out (A 3, B 3, C 2, D 2); all-time count breaks ties.
    assert ranking(baselines.score_recent_popularity, ctx, task) == [A, B, D, C, E, F]


def test_itemknn_and_repurchase_on_hand_made_purchases():
    ctx = context.Context(hand_tables())
    task = ctx.task("val")
    # x bought A, B. cos(A, C) = 2/sqrt(3*2) = .82; cos(B, D) = 2/sqrt(3*4) = .58; cos(A, B) = 1/3.
    r = ranking(baselines.score_itemknn, ctx, task)
    assert r[:2] == [C, D] and set(r[2:4]) == {A, B} and r[4:] == [E, F]
    s = baselines.score_itemknn(ctx, task, np.array([0]))[0] / 1e3
    assert s[ctx.item_row[C]] == pytest.approx(2 / math.sqrt(6), abs=1e-3)
    assert s[ctx.item_row[D]] == pytest.approx(2 / math.sqrt(12), abs=1e-3)
    # Repurchase: the more recent B, then A, then F (another colour of A), then the rest by popularity.
    assert ranking(baselines.score_repurchase, ctx, task)[:4] == [B, A, F, D]


def test_baselines_at_their_edges():
    # a purchase exactly four weeks before x's val day (10) is recent; one a day earlier is not
    for day, recent in ((10 - 28, 1.0), (10 - 29, 0.0)):
        ctx = context.Context(hand_tables([("q", F, day, "train")]))
        task = ctx.task("val")
        s = baselines.score_recent_popularity(ctx, task, np.array([task.customers.index("x")]))[0]
        assert np.floor(s[ctx.item_row[F]]) == recent, day
    # repurchase: her own article is scored by its own weight alone, not also as another colour of itself
    ctx = context.Context(hand_tables())
    task = ctx.task("val")
    s = baselines.score_repurchase(ctx, task, np.array([0]))[0]
    assert s[ctx.item_row[A]] == pytest.approx(1e3 / (1 + 9 / 7) + 3 / 5)  # A: 9 days before, bought 3 times of 4 max
    # item-kNN reads who bought what, not how often: a repeated purchase changes no score
    def cosines(ctx):  # the scores less their popularity tie-break (which counts every purchase)
        task = ctx.task("val")
        pop = baselines._tiebreak(baselines._asof_counts(task, ctx.n_items)(task.cutoff[0]))
        return baselines.score_itemknn(ctx, task, np.array([0]))[0] - pop
    np.testing.assert_allclose(cosines(context.Context(hand_tables([("y", A, 1, "train")]))), cosines(ctx))


def test_no_scorer_sees_purchases_on_or_after_the_evaluation_day():
    ctx = context.Context(hand_tables())
    task = ctx.task("val")
    later = [("y", B, 10, "train"), ("w", D, 11, "train"), ("x", E, 12, "train"), ("q", C, 10, "train")]
    ctx2 = context.Context(hand_tables(later))
    task2 = ctx2.task("val")
    for name in ["popularity", "recent_popularity", "itemknn", "repurchase"]:
        fn = baselines.BASELINES[name]
        np.testing.assert_allclose(fn(ctx, task, np.array([0])), fn(ctx2, task2, np.array([0])), err_msg=name)
    # ... while the all-dates global count does move: that is why it is labelled as such.
    glob = baselines.score_popularity_global
    assert not np.allclose(glob(ctx, task, np.array([0])), glob(ctx2, task2, np.array([0])))


def test_test_split_history_includes_val_day_but_not_test_day():
    extra = [("x", D, 15, "test"), ("y", B, 12, "val")]
    ctx = context.Context(hand_tables(extra))
    task = ctx.task("test")
    i = task.customers.index("x")
    assert sorted(ctx.items["article_id"].to_numpy()[task.history[i]].tolist()) == [A, B, C]
    assert task.targets[i] == {ctx.item_row[D]}
    assert set(np.unique(task.pool_day)) <= set(ctx.i_day[np.isin(ctx.i_split, ["train", "val"])])
    # y's val day (12) comes before x's test day (15): as-of popularity for x may count it, for test.
    pop = baselines.score_popularity(ctx, task, np.array([i]))[0]
    assert pop[ctx.item_row[B]] == 4  # x, v, v2 (train) + y (val)


# ----------------------------------------------------------------------------- two-tower

def test_two_tower_trains_on_train_pairs_only_and_uses_photos(tmp_path):
    extra = [("y", B, 12, "val"), ("y", D, 30, "test"), ("x", D, 15, "test")]
    ctx = context.Context(hand_tables(extra), fingerprint="hand")
    rng = np.random.default_rng(0)
    photos = {a: rng.normal(size=8).astype(np.float32) for a in [A, B, C, D, E]}  # F has no photo
    photo = twotower.photo_matrix(photos, ctx.items["article_id"])
    assert photo[0].shape == (6, 8) and photo[1].tolist() == [True] * 5 + [False]
    assert np.allclose(np.linalg.norm(photo[0][:5], axis=1), 1.0)
    cfg = twotower.TwoTowerConfig(dim=8, epochs=2, batch_size=4, max_history=3)
    rec = twotower.TwoTowerRecommender(ctx, cfg, photo)
    users, hists, targets = rec.training_pairs()
    train = {(u, i, d) for u, i, d, s in zip(ctx.i_user, ctx.i_item, ctx.i_day, ctx.i_split) if s == "train"}
    train_targets = {(u, i) for u, i, _ in train}
    assert len(users) and all((u, t) in train_targets for u, t in zip(users, targets))
    assert ctx.item_row[D] not in targets[users == ctx.user_row["x"]]  # x's test purchase is no target
    assert hists.shape[1] == 3 and (hists[:, -1] >= 0).all()  # right-aligned, newest last
    once = Counter((u, i) for u, i, _ in train)
    # a history is what came before the target's day: never the target's own basket (its day is no history)
    assert all(t not in h for u, h, t in zip(users, hists, targets) if once[(u, t)] == 1)
    # For the test split it may also learn from val days, never from test days.
    users_t, _, targets_t = twotower.TwoTowerRecommender(ctx, cfg, photo, splits=context.ALLOWED["test"]).training_pairs()
    allowed = {(u, i) for u, i, s in zip(ctx.i_user, ctx.i_item, ctx.i_split) if s != "test"}
    assert all((u, t) in allowed for u, t in zip(users_t, targets_t))
    assert (ctx.user_row["y"], ctx.item_row[B]) in set(zip(users_t, targets_t))  # y's val day
    rec2 = twotower.two_tower(ctx, cfg, photo, tmp_path, progress=False)
    task = ctx.task("test")
    s = rec2.scores(ctx, task, np.arange(len(task.customers)))
    assert s.shape == (len(task.customers), 6) and np.isfinite(s).all() and (np.abs(s) <= 1 + 1e-5).all()
    # Saved and reused: same data, config and photos -> same scores without training.
    again = twotower.two_tower(ctx, cfg, photo, tmp_path, progress=False)
    np.testing.assert_allclose(again.scores(ctx, task, np.arange(len(task.customers))), s, rtol=1e-5)
    # The (ids, matrix) form of the embeddings is the same thing.
    ids = np.array(list(photos)), np.stack(list(photos.values()))
    np.testing.assert_allclose(twotower.photo_matrix(ids, ctx.items["article_id"])[0], photo[0])


def test_two_tower_retrains_when_photos_change(tmp_path, capsys):
    ctx = context.Context(hand_tables(), fingerprint="hand")
    cfg = twotower.TwoTowerConfig(dim=8, epochs=1, batch_size=4)
    twotower.two_tower(ctx, cfg, None, tmp_path, progress=False)
    photo = twotower.photo_matrix({A: np.ones(4)}, ctx.items["article_id"])
    capsys.readouterr()
    twotower.two_tower(ctx, cfg, photo, tmp_path, progress=False)
    assert "retraining" in capsys.readouterr().out
    # the splits it learns from are part of what it is: trained on train pairs only, then asked for "allowed"
    only = twotower.two_tower(ctx, cfg, photo, tmp_path, split="test", fit_on="train", progress=False)
    assert only.splits == ("train",)
    capsys.readouterr()
    both = twotower.two_tower(ctx, cfg, photo, tmp_path, split="test", fit_on="allowed", progress=False)
    assert both.splits == tuple(context.ALLOWED["test"]) and "reusing" not in capsys.readouterr().out


def test_a_two_tower_history_is_the_last_purchases():
    cfg = twotower.TwoTowerConfig(dim=8, epochs=1, batch_size=4, max_history=3)
    rec = twotower.TwoTowerRecommender(context.Context(hand_tables(), fingerprint="hand"), cfg, None)
    assert rec._histories([np.arange(5), np.array([7])]).tolist() == [[2, 3, 4], [-1, -1, 7]]


# ----------------------------------------------------------------------------- CLI on the tiny H&M fixture

def _gain(rank):  # NDCG of a single target found at 0-based ``rank``: the ideal is 1 / log2(2)
    return 1 / math.log2(rank + 2)


# By hand from conftest's fixture. Item rows follow articles.parquet: jeans black (A1), jeans blue (A2, same
# product), strap top (S), tee (T), dress (D), trousers (W), sweater (K), bikini top (B); ties go to the lower row.
# val: customer a on 03-01 (before: A1, S; W) buys A2; b on 05-07 (before: T) buys K; pool = train purchases.
# test: a on 04-01 buys T; b on 06-07 buys S; c on 02-03 (before: D) buys B; pool = train + val purchases.
FIXTURE_NDCG10 = {
    "val": {
        # as of each day every purchased article counts 1 (K for b only: d bought it on 03-03)
        "popularity|kept": (_gain(5) + _gain(5)) / 2,             # a: A1 S T D W A2; b: A1 S T D W K
        "popularity|excluded": (_gain(2) + _gain(4)) / 2,         # a: T D A2 (A1 S W dropped); b: A1 S D W K
        # own articles first (W is a's most recent), then A2 as another colour of A1, then popularity
        "repurchase|kept": (_gain(3) + _gain(5)) / 2,             # a: W A1 S A2; b: T A1 S D W K
        "repurchase|excluded": (_gain(0) + _gain(4)) / 2,         # a: A2; b: A1 S D W K
    },
    "test": {
        # a (04-01): all but B count 1; b (06-07): K counts 2 (d, b's val day); c (02-03): A1 S T D count 1
        "popularity|kept": (_gain(3) + _gain(3) + _gain(7)) / 3,  # a: A1 A2 S T; b: K A1 A2 S; c: A1 S T D A2 W K B
    },
}


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    return prepared_tables(tmp_path_factory.mktemp("rec"))


def test_cli_writes_the_table_for_every_model(prepared, tmp_path, capsys):
    out = tmp_path / "rec"
    items = pd.read_parquet(prepared / "data" / "items.parquet")
    emb = tmp_path / "emb.pt"
    torch.save({"article_id": torch.tensor(items["article_id"].to_numpy()[:-1]),
                "embedding": torch.randn(len(items) - 1, 16)}, emb)
    args = ["--data", str(prepared / "data"), "--out", str(out), "--epochs", "1", "--dim", "8", "--no-progress"]
    for split in ("val", "test"):
        assert R.main(args + ["--split", split, "--embeddings", str(emb)]) == 0
        m = json.loads((out / split / "metrics.json").read_text())
        assert {r["model"] for r in m["results"].values()} == set(api.MODELS)
        assert m["customers"] == (2 if split == "val" else 3)
        # All 8 articles fit in a top 10 and no target was bought before its day: every ranking holds every target.
        for r in m["results"].values():
            assert r["HR@10"] == r["Recall@10"] == r["Recall@50"] == 1.0, r["model"]
        for key, ndcg in FIXTURE_NDCG10[split].items():
            assert m["results"][key]["NDCG@10"] == pytest.approx(ndcg, rel=1e-9), key  # float sums in another order
        md = (out / split / "metrics.md").read_text()
        assert "| two_tower | kept |" in md and "| itemknn | excluded |" in md
    assert (out / "two_tower_val.pt").exists() and (out / "two_tower_test.pt").exists()
    assert "| popularity | kept |" in capsys.readouterr().out


def test_cli_user_mode_and_unknown_user(prepared, tmp_path, capsys, monkeypatch):
    args = ["--data", str(prepared / "data"), "--out", str(tmp_path / "rec"), "--no-progress"]
    assert R.main(args + ["--user", "nobody"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: unknown customer_id") and "\n" not in err
    # a generator the user names must exist: one line, exit 2, before any ranking (before: the ranking, a note, exit 0)
    assert R.main(args + ["--user", "aaaaaaaa", "--model", "popularity", "-k", "3", "--explain",
                          "--generator", str(tmp_path / "none.ckpt")]) == 2
    cap = capsys.readouterr()
    err = cap.err.strip()
    assert err.startswith("error: --generator ") and "none.ckpt: no checkpoint there" in err and "\n" not in err, err
    assert "| " not in cap.out and not (tmp_path / "rec").exists()
    # the default run not trained yet: the ranking still shows, with a note on how to get reasons
    monkeypatch.setenv("MMREASON_ARTIFACTS", str(tmp_path / "artifacts"))
    assert R.main(args + ["--user", "aaaaaaaa", "--model", "popularity", "-k", "3", "--explain"]) == 0
    out = capsys.readouterr().out
    assert "reasons need a trained reason generator (no checkpoint at artifacts/runs/" in out
    assert out.count("\n| ") >= 4
    seen = []

    def explain(cid, article_ids, day):
        seen.append((cid, article_ids, day))
        return [f"because {a}" for a in article_ids]

    assert R.main(args + ["--user", "a" * 64, "--model", "repurchase", "-k", "2", "--explain", "--split", "test"],
                  explain_fn=explain) == 0
    out = capsys.readouterr().out
    assert seen and seen[0][0] == "a" * 64 and f"because {seen[0][1][0]}" in out


def test_recommend_for_user_returns_named_articles(prepared, tmp_path):
    df = api.recommend_for_user("itemknn", "b" * 64, 4, split="test", data_dir=prepared / "data", out_dir=tmp_path)
    assert list(df["rank"]) == [1, 2, 3, 4]
    assert {"article_id", "prod_name", "product_type_name", "colour_group_name", "score", "bought"} <= set(df.columns)
    with pytest.raises(context.UnknownUser):
        api.recommend_for_user("popularity", "zzz", 3, data_dir=prepared / "data", out_dir=tmp_path)
    with pytest.raises(context.UnknownUser):  # d has one purchase day: no test day
        api.recommend_for_user("popularity", "d" * 64, 3, split="test", data_dir=prepared / "data", out_dir=tmp_path)


def test_embeddings_default_to_the_cache_beside_the_tables(tmp_path):
    data = tmp_path / "artifacts" / "data" / "hm"
    data.mkdir(parents=True)
    assert twotower.resolve_embeddings("auto", data) is None  # no cache yet: the models run without photos
    cache = tmp_path / "artifacts" / "embeddings" / twotower.DEFAULT_EMBEDDINGS
    cache.parent.mkdir()
    cache.touch()
    assert twotower.resolve_embeddings("auto", data) == str(cache.resolve())
    assert twotower.resolve_embeddings(None, data) == str(cache.resolve())
    assert twotower.resolve_embeddings("none", data) is None
    assert twotower.resolve_embeddings("x.pt", data) == "x.pt"
    assert R.main(["--data", str(data), "--embeddings", str(tmp_path / "missing.pt")]) == 2  # one-line error


def test_repurchase_then_ranks_own_articles_first_then_the_other_model():
    ctx = context.Context(hand_tables())
    task = ctx.task("val")
    order = [E, D, C, B, A, F]  # a stand-in for the two-tower: its own preference, best first
    pref = np.zeros(ctx.n_items)
    pref[[ctx.item_row[a] for a in order]] = np.arange(len(order), 0, -1)
    other = lambda ctx, task, idx: np.tile(pref, (len(idx), 1))  # noqa: E731
    # x bought A and B (and F is another colour of A): repurchase's order for those, the stand-in's for the rest
    assert ranking(baselines.repurchase_then(other), ctx, task) == [B, A, F, E, D, C]


def test_excluding_bought_articles_and_the_flag_follow_the_history(prepared, tmp_path):
    kw = dict(split="next", data_dir=prepared / "data", out_dir=tmp_path)
    kept = api.recommend_for_user("popularity", "a" * 64, 8, exclude_bought=False, **kw)
    task = context.load_context(prepared / "data").task("next", ["a" * 64])
    items = context.load_context(prepared / "data").items["article_id"].to_numpy()
    bought = set(items[task.history[0]].tolist())
    assert kept["already_bought"].tolist() == [a in bought for a in kept["article_id"]] and kept["already_bought"].any()
    excluded = api.recommend_for_user("popularity", "a" * 64, 8, exclude_bought=True, **kw)
    assert not excluded["already_bought"].any() and not set(excluded["article_id"]) & bought
    assert excluded["excluded_bought"].all() and not kept["excluded_bought"].any()
    # "next": as of the day after the data ends, so her last day's purchases are history too
    assert task.cutoff[0] == context.load_context(prepared / "data").i_day.max() + 1


def test_exclusion_defaults_to_what_scored_higher_on_validation(tmp_path):
    assert api.default_exclusion("itemknn", tmp_path) is False  # nothing measured: keep them
    (tmp_path / "val").mkdir()
    def write(kept, excluded):
        (tmp_path / "val" / "metrics.json").write_text(json.dumps({"results": {
            "itemknn|kept": {"NDCG@10": kept}, "itemknn|excluded": {"NDCG@10": excluded}}}))
    write(0.2, 0.3)
    assert api.default_exclusion("itemknn", tmp_path) is True
    write(0.3, 0.2)
    assert api.default_exclusion("itemknn", tmp_path) is False


def test_a_customer_is_named_by_a_unique_prefix_of_six_characters_or_more():
    tables = hand_tables()
    tables["users"] = pd.DataFrame({"customer_id": ["abcdef01", "abcdef02", "x"]}).assign(
        age_band="age 25-34", club_member_status="ACTIVE", fashion_news_frequency="NONE")
    tables["interactions"] = tables["interactions"].assign(customer_id="x")
    ctx = context.Context(tables)
    assert ctx.resolve_user("x") == "x" and ctx.resolve_user("abcdef01") == "abcdef01"
    with pytest.raises(context.UnknownUser, match="share that prefix"):
        ctx.resolve_user("abcdef")
    with pytest.raises(context.UnknownUser):
        ctx.resolve_user("abcde")  # a short prefix names nobody, even a unique one
    tables["users"] = tables["users"].iloc[[0, 2]]
    with pytest.raises(context.UnknownUser):
        context.Context(tables).resolve_user("a")
    assert context.Context(tables).resolve_user("abcdef") == "abcdef01"


def test_two_tower_loss_corrects_for_popularity_and_masks_repeated_targets(monkeypatch):
    """The first batch's logits, captured where the loss reads them: logQ subtracts each target's log training
    frequency (column-wise), and another row with the same target is no negative (-inf)."""
    extra = [("p", A, 1, "train"), ("p", C, 3, "train"), ("q", B, 1, "train"), ("q", C, 3, "train"),  # C again
             ("r", C, 5, "train")]  # (one more C bought: its frequency is no longer B's)
    ctx = context.Context(hand_tables(extra), fingerprint="hand")
    seen = {}
    real = twotower.F.cross_entropy

    def capture(logits, labels):
        seen.setdefault("logits", []).append(logits.detach().clone())
        return real(logits, labels)
    monkeypatch.setattr(twotower.F, "cross_entropy", capture)
    first = {}
    for logq in (True, False):
        seen.clear()
        cfg = twotower.TwoTowerConfig(dim=8, epochs=1, batch_size=64, logq=logq)
        rec = twotower.TwoTowerRecommender(ctx, cfg, None)
        rec.fit(progress=False)
        first[logq] = seen["logits"][0]
    _, _, targets = rec.training_pairs()
    tgt = torch.from_numpy(targets[np.random.default_rng(cfg.seed).permutation(len(targets))])
    same = (tgt[None] == tgt[:, None]) & ~torch.eye(len(tgt), dtype=torch.bool)
    assert same.any() and torch.isinf(first[True][same]).all() and torch.isinf(first[False][same]).all()
    assert torch.isfinite(first[True][~same]).all()
    assert len(set(rec.log_freq[tgt].tolist())) > 1
    diff = (first[False] - first[True])[~same]
    expected = rec.log_freq[tgt][None].expand(len(tgt), -1)[~same]
    torch.testing.assert_close(diff, expected)


def test_the_user_tower_averages_only_the_real_history():
    cfg = twotower.TwoTowerConfig(dim=4, max_history=3)
    rec = twotower.TwoTowerRecommender(context.Context(hand_tables(), fingerprint="hand"), cfg, None)
    seen = []
    rec.model.user_mlp.register_forward_pre_hook(lambda m, args: seen.append(args[0]))
    hist = torch.randn(1, 3, 4)
    mask = torch.tensor([[False, True, True]])
    rec.model.user_vectors(hist, mask, torch.zeros(1, len(rec.model.user_emb), dtype=torch.long))
    torch.testing.assert_close(seen[0][0, 4:8], hist[0, 1:].mean(0))  # [pooled, mean, profile]
