"""Data preparation: profiles, behaviour, silver targets, splits, bad input, the CLI end to end."""
from __future__ import annotations

import json
import os
import random
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from mmreason import data
from mmreason.datasets import prompts, splits
from mmreason.datasets.reasons import Purchase, build_hook, when

from conftest import tiny_tokenizer


def run(tmp_path, hm, *extra):
    out = tmp_path / "out"
    rc = data.main(["--hm-dir", str(hm), "--out", str(out), "--workers", "1", *extra])
    return rc, out


def tables(out):
    return {n: pd.read_parquet(out / f"{n}.parquet") for n in ("users", "items", "interactions", "examples")}


# ----------------------------------------------------------------------------- hooks

def _p(aid, days, **kw):
    base = dict(prod_name=f"item{aid}", product_type_name="Trousers", colour_group_name="Black",
                graphical_appearance_name="Solid", garment_group_name="Trousers", section_name="Womens Casual")
    return Purchase(aid, days, **(base | kw))


ARTICLE = dict(product_type_name="Trousers", colour_group_name="Black", graphical_appearance_name="Solid",
               garment_group_name="Trousers", section_name="Womens Casual", prod_name="New trousers")


def test_hook_follows_the_strongest_shared_evidence():
    h = build_hook(ARTICLE, [_p(1, 3), _p(2, 40, colour_group_name="White")])
    assert h.kind == "type+colour" and h.fields == ("type", "colour") and h.evidence == (1,)
    assert "black trousers" in h.text and "item1" in h.text and "3 days ago" in h.text
    h = build_hook(ARTICLE, [_p(2, 40, colour_group_name="White"), _p(3, 50, colour_group_name="Blue")])
    assert h.kind == "type" and h.evidence == (2, 3) and "twice" in h.text
    h = build_hook(ARTICLE, [_p(4, 9, product_type_name="Skirt", garment_group_name="Skirts")])
    assert h.kind == "colour" and h.fields == ("colour",) and "last week" in h.text
    # Same evidence -> same words, whatever the random generators' state (wording is not random).
    texts = set()
    for seed in range(8):
        random.seed(seed), np.random.seed(seed)
        texts.add(build_hook(ARTICLE, [_p(1, 3), _p(2, 40, colour_group_name="White")]).text)
    assert len(texts) == 1, texts


def test_hook_without_shared_history_or_without_history_is_impersonal():
    other = _p(5, 10, product_type_name="Hat", colour_group_name="Red", garment_group_name="Acc", section_name="Kids")
    h = build_hook(ARTICLE, [other])
    assert not h.personalised and h.kind == "new_section" and h.evidence == () and "Womens Casual" in h.text
    assert h.evidence_text.endswith(". nothing shared with earlier buys.")  # the prompt says which of the two
    h = build_hook(ARTICLE, [])
    assert not h.personalised and h.kind == "cold_section" and "you bought" not in h.text.lower()
    assert h.evidence_text.endswith(". first purchase.")


def test_hook_evidence_states_every_fact_the_hook_does():
    history = [_p(1, 65, prod_name="Luna skinny."), _p(2, 100), _p(3, 3, product_type_name="Dress")]
    hook = build_hook(ARTICLE, history)
    assert hook.cited_name == "Luna skinny" and hook.kind == "type+colour"
    assert set(hook.facts) == {"Luna skinny", "twice", "2 months ago", "black trousers", "Trousers", "Black"}
    for fact in hook.facts:
        assert fact.lower() in hook.text.lower() and fact.lower() in hook.evidence_text.lower()
    cold = build_hook(ARTICLE, [])
    assert cold.facts == ("Womens Casual",) and "Womens Casual" in cold.evidence_text and not cold.cited_name


def test_audit_counts_a_fact_only_where_the_model_can_read_it():
    row = {"example_id": 7, "user_profile": "age 25-34", "behaviour": "Luna skinny (Trousers, Black, 65 days ago)",
           "evidence": "Trousers, Black. black trousers bought twice, most recently the Luna skinny 2 months ago.",
           "product": "name: New trousers; type: Trousers", "hook_facts": ["Luna skinny", "twice", "2 months ago"],
           "features": ["trousers", "black"]}
    ex = pd.DataFrame([row])
    assert prompts.audit(ex)["targets_all_visible"] == 1.0
    no_evidence = prompts.audit(ex, fields=("user_profile", "behaviour", "product"))
    assert no_evidence["facts_visible_n"] == 3 and no_evidence["invisible"] == [(7, "twice"), (7, "2 months ago")]
    cut = prompts.audit(ex, caps=prompts.PROMPT_BUDGET | {"evidence": 30, "behaviour": 8})  # bytes: the name is gone
    assert cut["targets_all_visible"] == 0.0 and (7, "Luna skinny") in cut["invisible"]
    tok = tiny_tokenizer([row["evidence"], row["behaviour"]])
    assert prompts.audit(ex, tokenizer=tok)["targets_all_visible"] == 1.0
    assert prompts.audit(ex, caps=prompts.PROMPT_BUDGET | {"evidence": 5}, tokenizer=tok)["targets_all_visible"] == 0.0


def test_when_reads_naturally():
    assert [when(d) for d in (1, 3, 8, 30, 90, 400)] == [
        "yesterday", "3 days ago", "last week", "4 weeks ago", "3 months ago", "over a year ago"]
    # at each boundary the next wording takes over: no "7 days ago", "8 weeks ago" or "12 months ago"
    assert [when(d) for d in (6, 7, 13, 14, 59, 60, 364, 365)] == [
        "6 days ago", "last week", "last week", "2 weeks ago", "8 weeks ago", "2 months ago", "12 months ago",
        "over a year ago"]


def test_hook_rules_in_their_order_on_values_the_article_has():
    striped = ARTICLE | {"graphical_appearance_name": "Stripe"}
    # pattern before colour: one purchase shares the colour (more recent), another the pattern
    h = build_hook(striped, [_p(1, 3, product_type_name="Skirt"),
                             _p(2, 9, product_type_name="Top", colour_group_name="Red", graphical_appearance_name="Stripe")])
    assert h.kind == "pattern" and h.evidence == (2,)
    # an attribute the article lacks ("" for a new article) matches nothing, not every purchase that lacks it too
    blank = ARTICLE | {"colour_group_name": ""}
    h = build_hook(blank, [_p(1, 3, colour_group_name="")])
    assert h.kind == "type" and "taste for" not in h.text
    # the evidence names at most the 5 most recent matches
    h = build_hook(ARTICLE, [_p(i, i + 1) for i in range(1, 8)])
    assert h.evidence == (1, 2, 3, 4, 5) and "7 times" in h.text
    # a fact is stated on word boundaries: "once" inside the name "Ponce top" is not the count
    h = build_hook(ARTICLE | {"colour_group_name": "White"},
                   [_p(1, 3, prod_name="Ponce top", product_type_name="Skirt", garment_group_name="Skirts",
                       section_name="Womens Casual", colour_group_name="Red")])
    assert h.kind == "section" and "Ponce top" in h.facts and "once" not in h.facts


def test_hook_reads_grammatically_and_never_cites_an_unrecorded_value():
    # "an" before a vowel: "You went for a all over pattern design" was 213 targets of the H&M data
    allover = ARTICLE | {"graphical_appearance_name": "All over pattern"}
    h = build_hook(allover, [_p(1, 3, product_type_name="Top", colour_group_name="Red",
                                graphical_appearance_name="All over pattern")])
    assert h.kind == "pattern" and h.text.startswith("You went for an all over pattern design"), h.text
    stripe = build_hook(allover | {"graphical_appearance_name": "Stripe"},
                        [_p(1, 3, product_type_name="Top", colour_group_name="Red", graphical_appearance_name="Stripe")])
    assert stripe.text.startswith("You went for a stripe design"), stripe.text
    # the catalogue's "Unknown" records nothing: no "More Unknown" hook, no "another unknown"; the next rule that
    # rests on a recorded value holds, and the evidence does not list it
    unknown = ARTICLE | {"garment_group_name": "Unknown", "product_type_name": "Unknown", "colour_group_name": "Red"}
    h = build_hook(unknown, [_p(1, 3, product_type_name="Unknown", garment_group_name="Unknown")])
    assert h.kind == "section" and "unknown" not in h.text.lower(), h.text
    assert "Unknown" not in h.evidence_text and h.evidence_text.startswith("Red, Solid, Womens Casual"), h.evidence_text


def test_article_evidence_and_copy():
    from mmreason.datasets.reasons import article_evidence, product_copy
    a = ARTICLE | {"perceived_colour_master_name": "black"}  # the same value twice, in other cases: once
    assert article_evidence(a) == "Trousers, Black, Solid, Womens Casual"
    assert product_copy(a | {"detail_desc": "  "}) == ("New trousers: trousers in black.", "attributes")
    assert product_copy(a | {"detail_desc": " Wide trousers. "}) == ("Wide trousers.", "detail_desc")


def test_profile_and_behaviour_texts_at_their_boundaries():
    from collections import Counter
    assert [prompts.age_band(a) for a in (16, 24, 25, 34, 64, 65, None)] == [
        "age 16-24", "age 16-24", "age 25-34", "age 25-34", "age 55-64", "age 65+", "age unknown"]
    assert [prompts.price_level(p, (1.0, 2.0)) for p in (1.0, 1.5, 2.0, 2.5)] == [
        "budget", "mid-price", "mid-price", "premium"]
    customer = {"age": 30, "club_member_status": "ACTIVE", "fashion_news_frequency": "NONE"}
    counts = {col: Counter({"A": 4, "B": 3, "C": 2, "D": 1}) for col in prompts.PROFILE_FIELDS}
    def profile(channels):
        return prompts.profile_text(customer, counts, 10, Counter(channels), 15.0, (1.0, 2.0))
    assert "shops in store" in profile({1: 1, 2: 1}) and "shops online" in profile({2: 3, 1: 1})  # 2: online
    assert "shops in store" in profile({1: 3, 2: 1})
    assert "A 4, B 3, C 2" in profile({1: 1}) and "D 1" not in profile({1: 1})  # the top 3 values
    history = [_p(i, i) for i in range(1, 7)]
    assert prompts.behaviour_text(history, 5).count(";") == 4 and "item6" not in prompts.behaviour_text(history, 5)
    parts = dict(p.split(": ", 1) for p in prompts.product_text(ARTICLE | dict(
        product_group_name="Garment Lower body", perceived_colour_value_name="Dark", perceived_colour_master_name="Black",
        department_name="", index_group_name="Ladieswear")).split("; "))
    assert "department" not in parts and parts["index"] == "Ladieswear"  # an empty value is left out, not "department: "


def test_price_cuts_read_training_prices_only_and_history_is_read_in_time_order():
    inter = pd.DataFrame({"split_temporal": ["train"] * 3 + ["test"] * 3, "price": [1.0, 2.0, 3.0, 90.0, 95.0, 99.0]})
    assert prompts.price_cuts(inter) == pytest.approx((1 + 2 / 3, 2 + 1 / 3))
    day = pd.Timestamp("2020-01-10")
    items = pd.DataFrame({"article_id": [1, 2, 3]}).assign(**{f: ["x"] * 3 for f in prompts._PURCHASE_FIELDS})
    items = items.set_index("article_id", drop=False)
    rows = pd.DataFrame({"customer_id": "c", "article_id": [3, 1, 2],
                         "t_dat": pd.to_datetime(["2020-01-08", "2020-01-02", "2020-01-05"])})
    hist = prompts.history_before(rows, items, "c", day)
    assert [p.article_id for p in hist] == [3, 2, 1] and [p.days_ago for p in hist] == [2, 5, 8]  # most recent first
    assert prompts.history_before(rows.iloc[::-1], items, "c", day) == hist  # whatever order the rows come in


def test_target_features_name_each_value_once_and_visible_prompt_reads_only_capped_segments():
    a = ARTICLE | {"perceived_colour_master_name": "Black"}
    assert prompts.target_features("Black trousers for black days.", a) == ["trousers", "black"]
    ex = {"product": "0123456789", "user_profile": "abc"}
    assert prompts.visible_prompt(ex, caps={"product": 10}) == "012345678"  # cap - 1 bytes: any BPE keeps as much
    assert prompts.visible_prompt(ex, caps={"user_profile": 8}) == "abc"  # a segment without a cap is not read


# ----------------------------------------------------------------------------- splits

def test_temporal_split_rule():
    d = pd.to_datetime(["2019-01-01", "2019-02-01", "2019-03-01", "2019-04-01"])
    assert splits.temporal_split(list(d)) == {d[0]: "train", d[1]: "train", d[2]: "val", d[3]: "test"}
    assert splits.temporal_split(list(d[:2])) == {d[0]: "train", d[1]: "test"}
    assert splits.temporal_split(list(d[:1])) == {d[0]: "train"}


def test_unseen_split_holds_out_whole_product_codes():
    split = splits.unseen_product_split(range(1000), seed=0, test_frac=0.1, val_frac=0.05)
    assert sum(v == "test" for v in split.values()) == 100 and sum(v == "val" for v in split.values()) == 50
    # the seed decides it, not the order the codes come in
    assert split == splits.unseen_product_split(reversed(range(1000)), seed=0, test_frac=0.1, val_frac=0.05)
    assert split != splits.unseen_product_split(range(1000), seed=1, test_frac=0.1, val_frac=0.05)
    # a tiny catalogue, where the fractions round to none, still holds one product out for each
    tiny = sorted(splits.unseen_product_split([7, 8, 9, 7], seed=0, test_frac=0.1, val_frac=0.1).values())
    assert tiny == ["test", "train", "val"]
    assert set(splits.unseen_product_split(range(5), seed=0, test_frac=0.0, val_frac=0.0).values()) == {"train"}


# ----------------------------------------------------------------------------- the CLI on a tiny fixture

def test_cli_skips_and_reports_every_kind_of_bad_input(tmp_path, hm_dir, capsys):
    rc, out = run(tmp_path, hm_dir)
    assert rc == 0
    err = capsys.readouterr().err
    for expected in ["transactions.csv:14: expected 5 fields, found 4", "transactions.csv:15: unknown article_id 999999999",
                     "transactions.csv:16: unknown customer_id", "transactions.csv:17: article_id is empty",
                     "transactions.csv:18: not valid UTF-8", "0300000001.jpg: unreadable photo",
                     "0600000001.jpg: missing photo", "article_id 400000001 has no detail_desc"]:
        assert expected in err, expected
    problems = pd.read_csv(out / "problems.csv")
    assert problems.loc[problems.level == "error", "kind"].value_counts().to_dict() == {
        "malformed": 1, "unknown_id": 2, "bad_value": 1, "utf8": 1, "photo": 2}
    t = tables(out)
    items = t["items"].set_index("article_id")
    assert not items.loc[300000001, "has_photo"] and not items.loc[600000001, "has_photo"]
    assert items.loc[100000001, "has_photo"] and items.loc[100000001, "photo_path"].endswith("0100000001.jpg")
    # The duplicated (customer, article, day) row is one interaction of quantity 2.
    inter = t["interactions"]
    assert inter.loc[inter.article_id == 500000001, "quantity"].tolist() == [2]
    assert len(t["examples"]) == len(inter) == 11
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["summary"]["problems"]["photo"] == 2


def test_cli_fail_mode_stops_with_one_line_and_writes_nothing(tmp_path, hm_dir, capsys):
    rc, out = run(tmp_path, hm_dir, "--on-error", "fail")
    assert rc == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and err.startswith("error: transactions.csv:14:")
    assert not out.exists() and not list(tmp_path.glob(".out*"))


def test_non_positive_price_is_reported_or_fails(tmp_path, clean_hm_dir, capsys):
    tx = clean_hm_dir / "transactions.csv"
    cust = "a" * 64
    tx.write_text(tx.read_text() + f"2019-07-01,{cust},100000001,-0.03,1\n2019-07-02,{cust},200000001,0,1\n"
                  f"2019-07-03,{cust},300000001,inf,1\n")  # lines 14, 15, 16 of the file
    rc, out = run(tmp_path, clean_hm_dir)
    assert rc == 0
    captured = capsys.readouterr()
    for line, v in ((14, "-0.03"), (15, "0.0"), (16, "inf")):
        assert f"transactions.csv:{line}: price is {v}, expected a positive amount" in captured.err
    assert "'bad_value': 3" in captured.out  # the printed summary's problem counts
    problems = pd.read_csv(out / "problems.csv")
    assert problems["message"].str.contains("expected a positive amount").sum() == 3
    assert json.loads((out / "manifest.json").read_text())["summary"]["problems"]["bad_value"] == 3
    inter = tables(out)["interactions"]
    assert (inter["price"] > 0).all() and len(inter) == 11  # the fixture's 11 interactions, none added
    out2 = tmp_path / "out2"
    rc = data.main(["--hm-dir", str(clean_hm_dir), "--out", str(out2), "--workers", "1", "--on-error", "fail"])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and err == "error: transactions.csv:14: price is -0.03, expected a positive amount"
    assert not out2.exists()


def test_missing_column_and_corrupt_parquet_are_clear(tmp_path, clean_hm_dir, capsys):
    csv = clean_hm_dir / "customers.csv"
    csv.write_text(csv.read_text().replace("club_member_status,", "club,"))
    rc, out = run(tmp_path, clean_hm_dir)
    assert rc == 2 and "customers.csv: missing column(s) club_member_status" in capsys.readouterr().err
    assert not out.exists()
    pq = clean_hm_dir / "articles.parquet"
    pq.write_bytes(pq.read_bytes()[:100])
    rc, _ = run(tmp_path, clean_hm_dir)
    assert rc == 2 and "articles.parquet: unreadable parquet" in capsys.readouterr().err


def test_a_missing_input_file_or_folder_is_one_line_and_writes_nothing(tmp_path, clean_hm_dir, capsys):
    (clean_hm_dir / "customers.csv").unlink()
    rc, out = run(tmp_path, clean_hm_dir)
    err = capsys.readouterr().err.strip()
    assert rc == 2 and err == f"error: {clean_hm_dir / 'customers.csv'}: file not found (--hm-dir: the H&M sample's folder)"
    assert not out.exists()
    rc, out = run(tmp_path, tmp_path / "nothing")
    err = capsys.readouterr().err.strip()
    assert rc == 2 and err.startswith(f"error: {tmp_path / 'nothing' / 'articles.parquet'}: file not found")
    assert not out.exists() and not (tmp_path / "nothing").exists()


def test_failed_rebuild_keeps_previous_tables_whole(tmp_path, clean_hm_dir, monkeypatch):
    rc, out = run(tmp_path, clean_hm_dir)
    assert rc == 0
    before = (out / "examples.parquet").read_bytes()

    def boom(*a, **k):
        raise RuntimeError("disk full")

    monkeypatch.setattr(pd.DataFrame, "to_csv", boom)  # dies after some tables are written
    with pytest.raises(RuntimeError):
        run(tmp_path, clean_hm_dir, "--force")
    assert (out / "examples.parquet").read_bytes() == before
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".out")]


def test_rerun_reuses_unchanged_input_and_rebuilds_changed(tmp_path, clean_hm_dir, capsys):
    run(tmp_path, clean_hm_dir)
    capsys.readouterr()
    rc, out = run(tmp_path, clean_hm_dir)
    assert rc == 0 and "reusing" in capsys.readouterr().out
    with open(clean_hm_dir / "transactions.csv", "a") as f:
        f.write(f"2019-08-01,{'d' * 64},100000001,0.05,2\n")
    run(tmp_path, clean_hm_dir)
    assert "reusing" not in capsys.readouterr().out
    assert len(pd.read_parquet(out / "examples.parquet")) == 12


def test_profiles_behaviour_and_hooks_use_only_the_past(tmp_path, clean_hm_dir):
    _, out = run(tmp_path, clean_hm_dir)
    check_no_leakage(tables(out))
    ex = tables(out)["examples"].set_index(["customer_id", "article_id", "t_dat"])
    first = ex.loc[("a" * 64, 100000001, pd.Timestamp("2019-01-05"))]
    assert first.user_profile.endswith("no earlier purchases") and first.behaviour == "no earlier purchases"
    assert not first.personalised
    # Same-day basket is not history: the strap top bought with the jeans is not in the jeans' profile.
    later = ex.loc[("a" * 64, 100000002, pd.Timestamp("2019-03-01"))]
    assert "3 earlier purchases" in later.user_profile  # jeans, top, wide trousers (2 pieces, one purchase)
    assert later.behaviour.startswith("Wide trousers (Trousers, Black, 19 days ago)")
    # Denim trousers before: the pattern-and-type rule outranks plain type (wide trousers are solid).
    assert later.hook_kind == "type+pattern" and list(later.hook_evidence) == [100000001]
    assert later.reason.endswith("Skinny jeans in stretch denim.") and later.copy_source == "detail_desc"
    assert "trousers" in list(later.features)
    dress = ex.loc[("c" * 64, 400000001, pd.Timestamp("2019-02-02"))]
    assert dress.copy_source == "attributes" and dress.item_copy == "Wrap dress: dress in dark red."


def check_no_leakage(t):
    """No profile, behaviour or hook evidence uses a purchase from the example's day or later."""
    inter, ex, items = t["interactions"], t["examples"], t["items"]
    for r in ex.itertuples():
        before = inter[(inter.customer_id == r.customer_id) & (inter.t_dat < r.t_dat)]
        n = len(before)
        assert r.n_history == n
        if n:
            assert f"; {n} earlier purchases;" in r.user_profile
            days = [int(s.split(", ")[-1].split()[0]) for s in r.behaviour.split("; ")]
            assert min(days) >= 1
        else:
            assert r.behaviour == "no earlier purchases"
        assert set(r.hook_evidence) <= set(before.article_id)
    assert not inter.duplicated(["customer_id", "article_id", "t_dat"]).any()  # one row per (customer, article, day)
    # Unseen-products split: no held-out product code is ever a training example.
    held = set(items.loc[items.split_unseen != "train", "product_code"])
    assert not held & set(ex.loc[ex.split_unseen == "train", "product_code"])
    assert (ex.groupby("product_code")["split_unseen"].nunique() == 1).all()
    # Temporal split: per user, test is the last day and val the one before, train strictly earlier.
    for _, g in ex.groupby("customer_id"):
        days = g.groupby("split_temporal")["t_dat"]
        if "test" in days.groups:
            assert days.min()["test"] == g.t_dat.max()
            assert g.loc[g.split_temporal == "train", "t_dat"].max() < g.t_dat.max()
        if "val" in days.groups:
            assert g.loc[g.split_temporal == "train", "t_dat"].max() < days.min()["val"] < days.min()["test"]


@pytest.mark.slow
def test_real_slice_of_hm(tmp_path, real_hm, capsys):
    rc, out = run(tmp_path, real_hm, "--limit-users", "60")
    assert rc == 0
    t = tables(out)
    assert len(t["users"]) == 60 and t["items"]["has_photo"].all()
    check_no_leakage(t)
    ex = t["examples"]
    assert ex["reason"].str.len().min() > 20
    # Every personalised hook cites earlier purchases that really share the claimed attributes.
    items = t["items"].set_index("article_id")
    cols = {"type": "product_type_name", "colour": "colour_group_name", "pattern": "graphical_appearance_name",
            "garment_group": "garment_group_name", "section": "section_name"}
    # no hook names an unrecorded value or puts "a" before a vowel ("a all over pattern", "More Unknown")
    assert not ex["hook"].str.contains(r"\bunknown\b|\ba [aeiou]", case=False).any()
    for r in ex[ex.personalised].itertuples():
        for aid in r.hook_evidence:
            for f in r.hook_fields:
                assert items.loc[aid, cols[f]] == items.loc[r.article_id, cols[f]]
    out = capsys.readouterr().out
    assert "users_with_history" in out
    assert_context_rebuilds_examples(t, ex.sample(n=min(150, len(ex)), random_state=0))
    # The audit (issue 13): every fact every target states is in the prompt the model receives, after the
    # caps cut it: by the byte bound (any byte-level BPE) that the CLI prints, and exactly with a BPE
    # trained on the slice. The prompt before the audit (no evidence, old caps) fails it: the test can fail.
    assert f"audit_targets_all_facts_visible: {len(ex):,} of {len(ex):,}" in out
    assert prompts.audit(ex)["targets_all_visible"] == 1.0
    tok = tiny_tokenizer(pd.concat([ex[c] for c in ("user_profile", "behaviour", "product", "reason")]).unique().tolist())
    exact = prompts.audit(ex, tokenizer=tok)
    assert exact["targets_all_visible"] == 1.0 and exact["facts"] > 2 * len(ex), exact
    before = prompts.audit(ex, caps={"user_profile": 64, "behaviour": 48, "product": 48}, tokenizer=tok,
                        fields=("user_profile", "behaviour", "product"))
    assert before["targets_all_visible"] < 0.8
    # the evidence is what prompts.evidence_fields rebuilds for the same article and history (explain, probe)
    items = t["items"].set_index("article_id")
    for r in ex.sample(n=min(100, len(ex)), random_state=1).itertuples():
        past = prompts.history_before(t["interactions"], items, r.customer_id, r.t_dat)
        assert prompts.evidence_fields(items.loc[r.article_id].to_dict(), past) == {
            "evidence": r.evidence, "cited_name": r.cited_name, "hook": r.hook}


def assert_context_rebuilds_examples(t, examples):
    """user_context (used to explain recommendations on any day) writes the prompts the examples hold."""
    for r in examples.itertuples():
        c = prompts.user_context(t, r.customer_id, r.t_dat)
        assert (c["user_profile"], c["behaviour"]) == (r.user_profile, r.behaviour)
        assert len(c["history"]) == r.n_history


def test_user_context_rebuilds_every_fixture_prompt(tmp_path, clean_hm_dir):
    rc, out = run(tmp_path, clean_hm_dir)
    assert rc == 0
    t = tables(out)
    assert_context_rebuilds_examples(t, t["examples"])
    # after the data ends: everything is history, most recent first
    c = prompts.user_context(t, "a" * 64, "2019-12-31")
    assert len(c["history"]) == 5 and c["history"][0].prod_name == "Striped tee"
    with pytest.raises(KeyError):
        prompts.user_context(t, "nobody", "2019-12-31")


def test_amazon_adapter_drops_reviewer_names(tmp_path):
    import gzip

    src = tmp_path / "amz"
    src.mkdir()
    recs = [
        {"overall": 5.0, "reviewerID": "R1", "asin": "A1", "unixReviewTime": 1441324800, "reviewerName": "Jane Doe",
         "summary": "Great", "reviewText": "Fits well.", "style": {"Size:": " M"}},
        {"overall": 3.0, "reviewerID": "R1", "asin": "A2", "unixReviewTime": 1451324800, "reviewerName": "Jane Doe",
         "summary": "Okay", "reviewText": "Runs small."},
        {"overall": 4.0, "reviewerID": "R2", "asin": "A1", "unixReviewTime": 1461324800, "reviewerName": "Bob Roe",
         "summary": "Nice!", "reviewText": "Good colour."},
    ]
    lines = [json.dumps(r).encode() for r in recs] + [b"{not json", b'{"overall": 4.0, "asin": "A3"}']
    with gzip.open(src / "AMAZON_FASHION_5.json.gz", "wb") as f:
        f.write(b"\n".join(lines) + b"\n")
    out = tmp_path / "out"
    assert data.main(["--dataset", "amazon", "--amazon-dir", str(src), "--out", str(out)]) == 0
    t = tables(out)
    ex = t["examples"]
    assert ex["reason"].tolist() == ["Great. Fits well.", "Okay. Runs small.", "Nice! Good colour."]
    assert not ex["has_photo"].any()
    assert ex.loc[1, "user_profile"] == "1 earlier reviews; mean rating 5.0"
    for p in out.iterdir():
        assert b"Jane" not in p.read_bytes() and b"Bob Roe" not in p.read_bytes()
    problems = pd.read_csv(out / "problems.csv")
    assert set(problems["kind"]) == {"malformed", "bad_value"}


def test_the_same_data_laid_out_again_keeps_its_key_and_moved_or_other_photos_change_it(tmp_path, clean_hm_dir,
                                                                                        capsys, monkeypatch):
    # CI and every new machine lay ../shared/data out afresh: new times, the same bytes, the same place
    run(tmp_path, clean_hm_dir)
    kept = shutil.copytree(clean_hm_dir, tmp_path / "kept", copy_function=shutil.copyfile)
    shutil.rmtree(clean_hm_dir)
    shutil.copytree(kept, clean_hm_dir, copy_function=shutil.copyfile)
    for p in [clean_hm_dir, *clean_hm_dir.rglob("*")]:
        os.utime(p, (1e9, 1e9))
    capsys.readouterr()
    run(tmp_path, clean_hm_dir)
    assert "reusing" in capsys.readouterr().out
    # the same bytes in another place: the items name each photo by its path, so the tables are made again
    # (named relatively, from its parent: the paths the tables hold are absolute all the same)
    moved = shutil.copytree(clean_hm_dir, tmp_path / "moved", copy_function=shutil.copyfile)
    monkeypatch.chdir(tmp_path)
    _, out = run(tmp_path, Path("moved"))
    assert "reusing" not in capsys.readouterr().out
    photos = [Path(p) for p in tables(out)["items"]["photo_path"] if p]
    assert photos and all(p.is_absolute() and p.is_relative_to(moved) and p.is_file() for p in photos)
    run(tmp_path, moved)  # named absolutely: the same place, the same key
    assert "reusing" in capsys.readouterr().out
    photo = next(moved.rglob("*.jpg"))
    Image.new("RGB", (8, 8), (1, 2, 3)).save(photo)  # another photo under the same name
    run(tmp_path, moved)
    assert "reusing" not in capsys.readouterr().out
