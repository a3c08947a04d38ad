"""Prepare canonical tables from the raw H&M sample: ``python -m mmreason.data``.

Reads ``transactions.csv``, ``customers.csv``, ``articles.parquet`` and the photos (read-only), validates
them, and writes four parquet tables into ``artifacts/data/hm-<key>/`` (or ``--out``), where the key is a
fingerprint of the input files' content and the settings; ``artifacts/data/hm`` points to the newest:

* ``users``        one row per customer: profile fields, purchase counts.
* ``items``        one row per article: attributes, copy, photo path, serialised ``product`` text, and the
                   unseen-products split (whole ``product_code`` groups held out).
* ``interactions`` one row per (customer, article, day) with the quantity bought.
* ``examples``     one row per interaction with the model inputs (``user_profile``, ``evidence``,
                   ``behaviour``, ``product``), the silver ``reason`` target and its provenance (``hook_facts``:
                   every fact the hook states; ``cited_name``: the purchase it names), and both splits.

The summary carries the audit (``audit``): every fact each target states is readable in the prompt the
model receives, after truncation.

Profiles and behaviour use only purchases strictly *before* the example's day. See ``reasons.py`` for
how silver targets are built. A rerun over unchanged input reuses the tables (``manifest.json``).
"""
from __future__ import annotations

import csv
import hashlib
import json
import os
import sys
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image
from tqdm.auto import tqdm

from mmreason import paths
from mmreason.datasets.prompts import (
    PROFILE_FIELDS,
    age_band,
    audit,
    behaviour_text,
    price_cuts,
    product_text,
    profile_text,
    target_features,
)
from mmreason.datasets.reasons import Purchase, build_hook, product_copy
from mmreason.datasets.splits import temporal_split, unseen_product_split
from mmreason.io import DataError, Report, atomic_dir, fingerprint, sha256_file

VERSION = 7  # bump when the tables' content changes, so stale tables are rebuilt (7: hooks say "an", skip "Unknown")

TEXT_COLUMNS = [
    "prod_name", "product_type_name", "product_group_name", "graphical_appearance_name",
    "colour_group_name", "perceived_colour_value_name", "perceived_colour_master_name",
    "department_name", "index_name", "index_group_name", "section_name", "garment_group_name",
]
ARTICLE_COLUMNS = ["article_id", "product_code", *TEXT_COLUMNS, "detail_desc"]
TRANSACTION_COLUMNS = ["t_dat", "customer_id", "article_id", "price", "sales_channel_id"]
CUSTOMER_COLUMNS = ["customer_id", "FN", "Active", "club_member_status", "fashion_news_frequency", "age"]


# --------------------------------------------------------------------------- reading and validation

def photo_path(hm_dir: Path, article_id: int) -> Path:
    aid = f"{int(article_id):010d}"
    return Path(hm_dir) / "images" / aid[:3] / f"{aid}.jpg"


def read_csv_checked(path: Path, required: list[str], report: Report) -> pd.DataFrame:
    """Read a CSV line by line so that bad bytes, short or long rows are reported by line number.

    Every cell comes back as a string (``""`` for empty); the caller converts types. A ``_line``
    column keeps the 1-based line number for later messages.
    """
    path = Path(path)
    if not path.exists():
        raise DataError(f"{path}: file not found")
    raw = path.read_bytes()
    lines = raw.split(b"\n")
    if lines and lines[-1] == b"":
        lines.pop()
    elif lines:
        report.error("truncated", f"{path.name}:{len(lines)}: file does not end with a newline (truncated?)")
    if not lines:
        raise DataError(f"{path}: empty file")
    header = next(csv.reader([lines[0].decode("utf-8", "replace").rstrip("\r")]))
    missing = [c for c in required if c not in header]
    if missing:
        raise DataError(f"{path.name}: missing column(s) {', '.join(missing)} (has {', '.join(header)})")
    rows, numbers = [], []
    last = len(lines)
    for i, line in enumerate(lines[1:], start=2):
        if i == last and not raw.endswith(b"\n") and report.errors and report.errors[-1][0] == "truncated":
            continue  # the truncated last line was reported above
        try:
            text = line.decode("utf-8").rstrip("\r")
        except UnicodeDecodeError as e:
            report.error("utf8", f"{path.name}:{i}: not valid UTF-8 ({e.reason} at byte {e.start})")
            continue
        if not text.strip():
            continue
        cells = next(csv.reader([text]))
        if len(cells) != len(header):
            report.error("malformed", f"{path.name}:{i}: expected {len(header)} fields, found {len(cells)}")
            continue
        rows.append(cells)
        numbers.append(i)
    df = pd.DataFrame(rows, columns=header, dtype=str)
    df["_line"] = numbers
    return df


def _to_number(df: pd.DataFrame, col: str, name: str, report: Report, integer=False) -> pd.DataFrame:
    """Convert a string column; rows whose value is empty or not a number are reported and dropped."""
    values = pd.to_numeric(df[col].where(df[col] != ""), errors="coerce")
    bad = values.isna() | (values.notna() & integer & (values != values.round()))
    for line, v in zip(df.loc[bad, "_line"], df.loc[bad, col]):
        report.error("bad_value", f"{name}:{line}: {col} is {'empty' if v == '' else repr(v)}, expected a number")
    df = df.loc[~bad].copy()
    df[col] = values[~bad].astype("int64" if integer else "float64")
    return df


def load_articles(hm_dir: Path, report: Report) -> pd.DataFrame:
    path = Path(hm_dir) / "articles.parquet"
    if not path.exists():
        raise DataError(f"{path}: file not found")
    try:
        df = pd.read_parquet(path)
    except Exception as e:  # pyarrow raises several types for truncated/corrupt files
        raise DataError(f"{path}: unreadable parquet ({type(e).__name__}: {str(e).splitlines()[0]})") from None
    missing = [c for c in ARTICLE_COLUMNS if c not in df.columns]
    if missing:
        raise DataError(f"{path.name}: missing column(s) {', '.join(missing)}")
    df = df[ARTICLE_COLUMNS].copy()
    bad_id = df["article_id"].isna() | df["product_code"].isna()
    for i in np.flatnonzero(bad_id.to_numpy()):
        report.error("bad_value", f"articles.parquet: row {i}: article_id or product_code is NaN")
    df = df.loc[~bad_id]
    dup = df["article_id"].duplicated()
    for aid in df.loc[dup, "article_id"]:
        report.error("duplicate", f"articles.parquet: article_id {aid} appears more than once (kept the first)")
    df = df.loc[~dup].astype({"article_id": "int64", "product_code": "int64"})
    for col in TEXT_COLUMNS + ["detail_desc"]:
        nan = df[col].isna()
        if col == "detail_desc":
            for aid in df.loc[nan, "article_id"]:
                report.note("no_copy", f"articles.parquet: article_id {aid} has no detail_desc (attribute copy used)")
        elif nan.any():
            for aid in df.loc[nan, "article_id"]:
                report.note("nan", f"articles.parquet: article_id {aid} has no {col}")
        df[col] = df[col].fillna("").astype(str).str.strip()
    return df.reset_index(drop=True)


def load_customers(hm_dir: Path, report: Report) -> pd.DataFrame:
    name = "customers.csv"
    df = read_csv_checked(Path(hm_dir) / name, CUSTOMER_COLUMNS, report)
    empty = df["customer_id"] == ""
    for line in df.loc[empty, "_line"]:
        report.error("bad_value", f"{name}:{line}: customer_id is empty")
    df = df.loc[~empty]
    dup = df["customer_id"].duplicated()
    for line, cid in zip(df.loc[dup, "_line"], df.loc[dup, "customer_id"]):
        report.error("duplicate", f"{name}:{line}: customer_id {cid[:10]}… appears more than once (kept the first)")
    df = df.loc[~dup].copy()
    # NaNs in these fields are real (the customer did not say); keep them as missing, not as errors.
    df["age"] = pd.to_numeric(df["age"].where(df["age"] != ""), errors="coerce")
    for col in ["FN", "Active"]:
        df[col] = pd.to_numeric(df[col].where(df[col] != ""), errors="coerce")
    for col in ["club_member_status", "fashion_news_frequency"]:
        df[col] = df[col].replace("", "unknown")
    return df[CUSTOMER_COLUMNS + ["_line"]].reset_index(drop=True)


def load_transactions(hm_dir: Path, report: Report, articles: pd.DataFrame, customers: pd.DataFrame) -> pd.DataFrame:
    name = "transactions.csv"
    df = read_csv_checked(Path(hm_dir) / name, TRANSACTION_COLUMNS, report)
    day = pd.to_datetime(df["t_dat"], format="%Y-%m-%d", errors="coerce")
    for line, v in zip(df.loc[day.isna(), "_line"], df.loc[day.isna(), "t_dat"]):
        report.error("bad_value", f"{name}:{line}: t_dat {v!r} is not a YYYY-MM-DD date")
    df = df.loc[day.notna()].copy()
    df["t_dat"] = day[day.notna()]
    df = _to_number(df, "article_id", name, report, integer=True)
    df = _to_number(df, "price", name, report)
    # A price feeds the price terciles and the profile's price level: it must be a positive amount.
    bad_price = ~(np.isfinite(df["price"]) & (df["price"] > 0))
    for line, v in zip(df.loc[bad_price, "_line"], df.loc[bad_price, "price"]):
        report.error("bad_value", f"{name}:{line}: price is {v!r}, expected a positive amount")
    df = df.loc[~bad_price]
    df = _to_number(df, "sales_channel_id", name, report, integer=True)
    unknown_a = ~df["article_id"].isin(articles["article_id"])
    for line, aid in zip(df.loc[unknown_a, "_line"], df.loc[unknown_a, "article_id"]):
        report.error("unknown_id", f"{name}:{line}: unknown article_id {aid}")
    unknown_c = ~df["customer_id"].isin(customers["customer_id"])
    for line, cid in zip(df.loc[unknown_c & ~unknown_a, "_line"], df.loc[unknown_c & ~unknown_a, "customer_id"]):
        report.error("unknown_id", f"{name}:{line}: unknown customer_id {cid[:10]}…")
    return df.loc[~unknown_a & ~unknown_c].reset_index(drop=True)


def _photo_ok(path: Path) -> str | None:
    """None if the photo decodes fully, else a short reason."""
    if not path.exists():
        return "missing photo"
    try:
        with Image.open(path) as im:
            im.load()  # a full decode: verify() alone misses truncated JPEGs
        return None
    except Exception as e:
        return f"unreadable photo ({type(e).__name__})"


def check_photos(hm_dir: Path, article_ids, report: Report, workers: int = 4) -> dict[int, str]:
    """article_id -> photo path for every photo that decodes; the others are reported."""
    pairs = [(int(a), photo_path(hm_dir, a)) for a in article_ids]
    with ThreadPoolExecutor(workers) as pool:  # PIL releases the GIL while decoding
        results = list(tqdm(pool.map(lambda p: _photo_ok(p[1]), pairs), total=len(pairs), desc="photos", unit="img",
                            mininterval=1.0, disable=None))
    ok = {}
    for (aid, path), problem in zip(pairs, results):
        if problem is None:
            ok[aid] = str(path)
        else:
            report.error("photo", f"{path}: {problem} for article_id {aid} (item kept without photo)")
    return ok


def build_tables(articles, customers, transactions, photos: dict[int, str], *, n_behaviour=5, seed=0,
                 test_frac=0.10, val_frac=0.05) -> dict[str, pd.DataFrame]:
    unseen = unseen_product_split(articles["product_code"], seed, test_frac, val_frac)
    items = articles.copy()
    items["photo_path"] = items["article_id"].map(photos).fillna("").astype(str)
    items["has_photo"] = items["photo_path"] != ""
    items["product"] = [product_text(a) for a in items.to_dict("records")]
    records = items.to_dict("records")
    items["split_unseen"] = items["product_code"].map(unseen)
    by_id = {a["article_id"]: a for a in records}

    # One row per (customer, article, day); repeated rows are quantity.
    inter = (transactions.groupby(["customer_id", "article_id", "t_dat"], as_index=False)
             .agg(quantity=("price", "size"), price=("price", "mean"), sales_channel_id=("sales_channel_id", "max"))
             .sort_values(["customer_id", "t_dat", "article_id"], kind="stable").reset_index(drop=True))
    cust = customers.set_index("customer_id").to_dict("index")

    # Price level cut points from training-period purchases only (each user's days before their val/test).
    day_splits = {cid: temporal_split(g.unique()) for cid, g in inter.groupby("customer_id")["t_dat"]}
    inter["split_temporal"] = [day_splits[c][d] for c, d in zip(inter["customer_id"], inter["t_dat"])]
    cuts = price_cuts(inter)

    rows = []
    groups = inter.groupby("customer_id", sort=True)
    for cid, g in tqdm(groups, total=groups.ngroups, desc="users", unit="user", mininterval=1.0, disable=None):
        counts = {col: Counter() for col in PROFILE_FIELDS}
        channels, price_sum, past = Counter(), 0.0, []  # past: (day, article) of earlier purchases
        for day, day_rows in g.groupby("t_dat", sort=True):
            # History as of the start of `day`: most recent first.
            history = [Purchase(aid, (day - d).days, *(by_id[aid][f] for f in (
                "prod_name", "product_type_name", "colour_group_name", "graphical_appearance_name",
                "garment_group_name", "section_name"))) for d, aid in reversed(past)]
            profile = profile_text(cust[cid], counts, len(past), channels, price_sum, cuts)
            behaviour = behaviour_text(history, n_behaviour)
            for r in day_rows.itertuples(index=False):
                a = by_id[r.article_id]
                hook = build_hook(a, history)
                copy, copy_source = product_copy(a)
                rows.append({
                    "customer_id": cid, "article_id": r.article_id, "product_code": a["product_code"],
                    "t_dat": day, "quantity": r.quantity, "user_profile": profile, "behaviour": behaviour,
                    "product": a["product"], "photo_path": a["photo_path"], "has_photo": a["has_photo"],
                    "evidence": hook.evidence_text, "hook_facts": list(hook.facts), "cited_name": hook.cited_name,
                    "hook": hook.text, "item_copy": copy, "copy_source": copy_source,
                    "reason": f"{hook.text} {copy}".strip(), "hook_kind": hook.kind,
                    "hook_fields": list(hook.fields), "hook_evidence": list(hook.evidence),
                    "personalised": hook.personalised, "n_history": len(past),
                    "split_temporal": r.split_temporal, "split_unseen": unseen[a["product_code"]],
                })
            # Only now does this day's basket join the history (no same-day leakage).
            for r in day_rows.itertuples(index=False):
                a = by_id[r.article_id]
                past.append((day, r.article_id))
                for col in PROFILE_FIELDS:
                    counts[col][a[col]] += 1
                channels[r.sales_channel_id] += 1
                price_sum += r.price
    examples = pd.DataFrame(rows)
    examples.insert(0, "example_id", np.arange(len(examples), dtype=np.int64))
    examples["features"] = [target_features(r, by_id[a]) for r, a in zip(examples["reason"], examples["article_id"])]

    stats = inter.groupby("customer_id").agg(n_purchases=("quantity", "sum"), n_days=("t_dat", "nunique"),
                                             first_day=("t_dat", "min"), last_day=("t_dat", "max"))
    users = customers.drop(columns="_line").merge(stats, left_on="customer_id", right_index=True, how="left")
    users["n_purchases"] = users["n_purchases"].fillna(0).astype("int64")
    users["n_days"] = users["n_days"].fillna(0).astype("int64")
    users["age_band"] = users["age"].map(age_band)
    return {"users": users, "items": items, "interactions": inter, "examples": examples}


def summary(tables: dict[str, pd.DataFrame], report: Report) -> dict:
    ex = tables["examples"]
    out = {
        "users": len(tables["users"]), "items": len(tables["items"]),
        "items_with_photo": int(tables["items"]["has_photo"].sum()),
        "interactions": len(tables["interactions"]), "examples": len(ex),
        "purchases(pieces)": int(tables["interactions"]["quantity"].sum()),
        "temporal_split": ex["split_temporal"].value_counts().to_dict(),
        "unseen_split": ex["split_unseen"].value_counts().to_dict(),
        "held_out_product_codes": int((tables["items"].drop_duplicates("product_code")["split_unseen"] != "train").sum()),
        "users_with_history": int(ex.loc[ex["n_history"] > 0, "customer_id"].nunique()),
        "examples_with_history": float((ex["n_history"] > 0).mean()) if len(ex) else 0.0,
        "mean_target_words": float(ex["reason"].str.split().str.len().mean()) if len(ex) else 0.0,
        "personalised_hook_share": float(ex["personalised"].mean()) if len(ex) else 0.0,
        "hook_kinds": ex["hook_kind"].value_counts().to_dict(),
        "problems": report.counts(),
    }
    if len(ex):
        a = audit(ex)
        # counts, not a rounded share: 0.9996 must not print as 1.000
        out["audit_targets_all_facts_visible"] = f"{a['targets_all_visible_n']:,} of {a['targets']:,}"
        out["audit_facts_visible"] = f"{a['facts_visible_n']:,} of {a['facts']:,} ({a['mode']}, caps {a['caps']})"
        out["audit_invisible_examples"] = a["invisible"]
        out["evidence_max_bytes"] = int(ex["evidence"].str.encode("utf-8").str.len().max())
    return out


# --------------------------------------------------------------------------- CLI

def input_fingerprint(hm_dir: Path, args) -> str:
    """The tables' key: the content of the input files and photos (not their times: the same data laid out
    again, as CI and every new machine do, keeps its key), the folder they lie in (the items table names each
    photo by its absolute path: data moved elsewhere is prepared again, not reused with paths that are gone),
    VERSION and the settings."""
    hm_dir = Path(os.path.abspath(hm_dir))
    names = ("articles.parquet", "customers.csv", "transactions.csv")
    for f in names:  # read here first: a missing one is bad input, said in one line
        if not (hm_dir / f).is_file():
            raise DataError(f"{hm_dir / f}: file not found (--hm-dir: the H&M sample's folder)")
    files = [(f, sha256_file(hm_dir / f)) for f in names]
    images, photos = hm_dir / "images", hashlib.sha256()
    for p in sorted(images.rglob("*.jpg")) if images.exists() else []:  # ~1 s for the sample's 181 MB
        photos.update(p.relative_to(images).as_posix().encode() + b"\0" + p.read_bytes())
    params = {k: getattr(args, k) for k in ("n_behaviour", "seed", "unseen_test_frac", "unseen_val_frac", "on_error", "limit_users")}
    return fingerprint(VERSION, files, photos.hexdigest(), str(hm_dir), params)


def prepare(args) -> tuple[dict, Path]:
    """The tables in ``args.out``, or by default in ``artifacts/data/hm-<key>`` (key: inputs and settings, so
    tables of other inputs or settings never overwrite these; ``artifacts/data/hm`` links to the newest)."""
    hm_dir = Path(os.path.abspath(args.hm_dir))  # photo paths in the tables hold from any working folder
    fp = input_fingerprint(hm_dir, args)
    if args.out is None:
        out = paths.keyed(paths.artifacts_dir() / "data", "hm", fp[:10])
        info, out = _prepare(args, hm_dir, out, fp)
        paths.point_latest(paths.artifacts_dir() / "data" / "hm", out)
        return info, out
    return _prepare(args, hm_dir, Path(args.out), fp)


def _prepare(args, hm_dir: Path, out: Path, fp: str) -> tuple[dict, Path]:
    manifest = out / "manifest.json"
    if manifest.exists() and not args.force:
        m = json.loads(manifest.read_text())
        if m.get("fingerprint") == fp:
            print(f"[data] inputs unchanged, reusing {out} (use --force to rebuild)")
            return m["summary"], out
    t0 = time.time()
    report = Report(on_error=args.on_error)
    articles = load_articles(hm_dir, report)
    customers = load_customers(hm_dir, report)
    transactions = load_transactions(hm_dir, report, articles, customers)
    if args.limit_users:
        keep = sorted(transactions["customer_id"].unique())[: args.limit_users]
        transactions = transactions[transactions["customer_id"].isin(keep)]
        customers = customers[customers["customer_id"].isin(keep)]
        articles = articles[articles["article_id"].isin(transactions["article_id"])]
    if transactions.empty:
        raise DataError(f"{hm_dir / 'transactions.csv'}: no valid purchases left after validation")
    photos = check_photos(hm_dir, articles["article_id"], report, workers=args.workers)
    tables = build_tables(articles, customers, transactions, photos, n_behaviour=args.n_behaviour, seed=args.seed,
                          test_frac=args.unseen_test_frac, val_frac=args.unseen_val_frac)
    info = summary(tables, report)
    info["seconds"] = round(time.time() - t0, 1)
    with atomic_dir(out) as tmp:
        for name, df in tables.items():
            df.to_parquet(tmp / f"{name}.parquet", index=False)
        report.to_frame().to_csv(tmp / "problems.csv", index=False)
        (tmp / "manifest.json").write_text(json.dumps(
            {"fingerprint": fp, "hm_dir": str(hm_dir), "summary": info, "version": VERSION}, indent=2, default=str))
    for line in report.lines():
        print(f"[data] {line}", file=sys.stderr)
    return info, out


def load_tables(out: Path | None = None, names=("users", "items", "interactions", "examples")) -> dict[str, pd.DataFrame]:
    out = Path(out or paths.artifacts_dir() / "data" / "hm")
    if not (out / "manifest.json").exists():
        raise DataError(f"{out}: no prepared tables; run `python -m mmreason.data` first")
    return {n: pd.read_parquet(out / f"{n}.parquet") for n in names}
