"""Amazon Fashion 5-core reviews -> the same canonical tables as H&M (``python -m mmreason.data --dataset amazon``).

Here the target is real user-written text: the review (summary + review text), PETER/PEPLER style.
There are no photos (``has_photo`` is False everywhere, so the generator uses its no-photo embedding).
``reviewerName`` is personal data: it is dropped on read and never reaches a table or an output.
"""
from __future__ import annotations

import gzip
import json
import sys
import time
from collections import Counter
from pathlib import Path

import numpy as np
import pandas as pd

from mmreason.datasets.splits import temporal_split, unseen_product_split
from mmreason.io import DataError, Report, atomic_dir, fingerprint, sha256_file

VERSION = 1
FILE = "AMAZON_FASHION_5.json.gz"
REQUIRED = ["overall", "reviewerID", "asin", "unixReviewTime"]
KEEP = ["overall", "reviewerID", "asin", "unixReviewTime", "summary", "reviewText", "style"]  # never reviewerName


def _style_text(style) -> str:
    if not isinstance(style, dict):
        return ""
    return "; ".join(f"{k.strip(': ').lower()}: {str(v).strip()}" for k, v in sorted(style.items()))


def read_reviews(path: Path, report: Report) -> pd.DataFrame:
    path = Path(path)
    if not path.exists():
        raise DataError(f"{path}: file not found")
    rows = []
    try:
        with gzip.open(path, "rb") as f:
            for i, raw in enumerate(f, start=1):
                try:
                    rec = json.loads(raw.decode("utf-8"))
                except UnicodeDecodeError as e:
                    report.error("utf8", f"{path.name}:{i}: not valid UTF-8 ({e.reason})")
                    continue
                except json.JSONDecodeError as e:
                    report.error("malformed", f"{path.name}:{i}: not a JSON object ({e.msg})")
                    continue
                missing = [k for k in REQUIRED if rec.get(k) in (None, "")]
                if missing:
                    report.error("bad_value", f"{path.name}:{i}: missing {', '.join(missing)}")
                    continue
                row = {k: rec.get(k) for k in KEEP}
                row["style"] = _style_text(row["style"])
                row["_line"] = i
                rows.append(row)
    except (OSError, EOFError) as e:
        raise DataError(f"{path}: unreadable gzip ({type(e).__name__}: {e})") from None
    df = pd.DataFrame(rows)
    if df.empty:
        raise DataError(f"{path}: no valid reviews")
    for col in ("summary", "reviewText"):
        df[col] = df[col].fillna("").astype(str).str.strip()
    dup = df.duplicated(subset=[c for c in KEEP])
    if dup.any():
        report.note("duplicate", f"{path.name}: {int(dup.sum())} exact duplicate reviews dropped")
    return df.loc[~dup].reset_index(drop=True)


def review_target(summary: str, text: str) -> str:
    summary = summary.strip()
    if summary and not summary.endswith((".", "!", "?")):
        summary += "."
    return f"{summary} {text}".strip()


def build_tables(df: pd.DataFrame, *, n_behaviour=5, seed=0, test_frac=0.1, val_frac=0.05) -> dict[str, pd.DataFrame]:
    df = df.copy()
    df["t_dat"] = pd.to_datetime(df["unixReviewTime"], unit="s").dt.normalize()
    df = df.sort_values(["reviewerID", "t_dat", "asin", "_line"], kind="stable")
    # One review per (reviewer, product, day): the same text is often posted for several styles.
    inter = (df.groupby(["reviewerID", "asin", "t_dat"], as_index=False, sort=True)
             .agg(overall=("overall", "mean"), summary=("summary", "first"), reviewText=("reviewText", "first"),
                  style=("style", "first"), quantity=("overall", "size")))
    inter = inter.rename(columns={"reviewerID": "customer_id", "asin": "article_id"})
    items = (df.groupby("asin").agg(n_reviews=("overall", "size"), mean_rating=("overall", "mean"),
                                    styles=("style", lambda s: "; ".join(v for v, _ in Counter(x for x in s if x).most_common(3))))
             .reset_index().rename(columns={"asin": "article_id"}))
    items["product_code"] = items["article_id"]
    split = unseen_product_split(range(len(items)), seed, test_frac, val_frac)
    items["split_unseen"] = [split[i] for i in range(len(items))]
    items["product"] = [f"product {a}; {s}" if s else f"product {a}" for a, s in zip(items["article_id"], items["styles"])]
    items["photo_path"], items["has_photo"] = "", False
    by_id = items.set_index("article_id").to_dict("index")

    days = {c: temporal_split(g.unique()) for c, g in inter.groupby("customer_id")["t_dat"]}
    rows = []
    for cid, g in inter.groupby("customer_id", sort=True):
        past = []
        for day, day_rows in g.groupby("t_dat", sort=True):
            ratings = [r for _, _, r in past]
            profile = (f"{len(past)} earlier reviews; mean rating {np.mean(ratings):.1f}" if past else "no earlier reviews")
            behaviour = "; ".join(f"{a} rated {r:.0f} ({(day - d).days} days ago)" for d, a, r in reversed(past[-n_behaviour:])) \
                or "no earlier reviews"
            for r in day_rows.itertuples(index=False):
                reason = review_target(r.summary, r.reviewText)
                rows.append({
                    "customer_id": cid, "article_id": r.article_id, "product_code": r.article_id, "t_dat": day,
                    "quantity": r.quantity, "user_profile": profile, "behaviour": behaviour,
                    "product": by_id[r.article_id]["product"] + (f"; bought: {r.style}" if r.style else ""),
                    "photo_path": "", "has_photo": False, "hook": "", "item_copy": reason, "copy_source": "review",
                    "reason": reason, "rating": r.overall, "hook_kind": "review", "hook_fields": [], "hook_evidence": [],
                    "personalised": True, "n_history": len(past), "split_temporal": days[cid][day],
                    "split_unseen": by_id[r.article_id]["split_unseen"], "features": [],
                })
            past.extend((day, r.article_id, r.overall) for r in day_rows.itertuples(index=False))
    examples = pd.DataFrame(rows)
    examples.insert(0, "example_id", np.arange(len(examples), dtype=np.int64))
    examples = examples[examples["reason"] != ""].reset_index(drop=True)
    users = (inter.groupby("customer_id").agg(n_purchases=("quantity", "size"), n_days=("t_dat", "nunique"),
                                              first_day=("t_dat", "min"), last_day=("t_dat", "max")).reset_index())
    inter["split_temporal"] = [days[c][d] for c, d in zip(inter["customer_id"], inter["t_dat"])]
    inter = inter.drop(columns=["summary", "reviewText"])
    return {"users": users, "items": items, "interactions": inter, "examples": examples}


def prepare(args) -> tuple[dict, Path]:
    path, out = Path(args.amazon_dir) / FILE, Path(args.out)
    if not path.exists():
        raise DataError(f"{path}: file not found")
    fp = fingerprint(VERSION, sha256_file(path), args.n_behaviour, args.seed, args.on_error)
    if (out / "manifest.json").exists() and not args.force:
        m = json.loads((out / "manifest.json").read_text())
        if m.get("fingerprint") == fp:
            print(f"[data] inputs unchanged, reusing {out} (use --force to rebuild)")
            return m["summary"], out
    t0 = time.time()
    report = Report(on_error=args.on_error)
    tables = build_tables(read_reviews(path, report), n_behaviour=args.n_behaviour, seed=args.seed,
                          test_frac=args.unseen_test_frac, val_frac=args.unseen_val_frac)
    ex = tables["examples"]
    info = {"users": len(tables["users"]), "items": len(tables["items"]), "examples": len(ex),
            "temporal_split": ex["split_temporal"].value_counts().to_dict(),
            "unseen_split": ex["split_unseen"].value_counts().to_dict(),
            "mean_target_words": float(ex["reason"].str.split().str.len().mean()),
            "problems": report.counts(), "seconds": round(time.time() - t0, 1)}
    with atomic_dir(out) as tmp:
        for name, df in tables.items():
            df.to_parquet(tmp / f"{name}.parquet", index=False)
        report.to_frame().to_csv(tmp / "problems.csv", index=False)
        (tmp / "manifest.json").write_text(json.dumps({"fingerprint": fp, "summary": info, "version": VERSION}, indent=2,
                                                      default=str))
    for line in report.lines():
        print(f"[data] {line}", file=sys.stderr)
    return info, out
