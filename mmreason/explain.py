"""Reasons for articles a recommender picked: the last step of profile -> candidates -> ranking -> reasons.

The command; the library is ``mmreason.serving.explainer``, whose docstring says what it does and why.
"""
from __future__ import annotations

import argparse
import sys
from dataclasses import asdict
from pathlib import Path

from mmreason.decoding.shown import DECODINGS
from mmreason.io import DataError, atomic_write_json
from mmreason.serving.explainer import Explainer, read_new_articles


def get_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m mmreason.explain",
                                description="Reasons for new articles (not in the prepared tables) for one customer.")
    p.add_argument("--articles", required=True, help="articles file (.csv or .parquet) with H&M's article columns")
    p.add_argument("--images", default=None, help="folder of <article_id:010d>.jpg photos (flat or H&M's layout)")
    p.add_argument("--customer", required=True, help="customer_id as in the tables")
    p.add_argument("--day", default=None, help="as of this day (default: the day after the data ends)")
    p.add_argument("--run", default=None, help="generator run folder or checkpoint (default artifacts/runs/cpu)")
    p.add_argument("--decode", default="beam", choices=DECODINGS,
                   help="decoding (default beam; greedy+beam: greedy, beam search where greedy's reason fails the filter)")
    p.add_argument("--offer-retrieved", type=int, default=0, metavar="K",
                   help="offer the first K retrieved copies after the generated hook, ahead of the generated copy")
    p.add_argument("--out", default=None, help="also write the reasons here as JSON")
    return p


def main(argv=None) -> int:
    args = get_parser().parse_args(argv)
    try:
        articles = read_new_articles(args.articles, args.images)
        explainer = Explainer(args.run, decode=args.decode, offer_retrieved=args.offer_retrieved)
        out = explainer.explain_new(args.customer, articles, args.day, progress=True)
    except (DataError, FileNotFoundError, KeyError) as e:
        msg = e.args[0] if isinstance(e, KeyError) and e.args else e
        print(f"error: {msg}", file=sys.stderr)
        return 2
    for e in out:
        print(f"{e.article_id}\t{'ok' if e.passed_filter else 'FLAGGED'}\t{e.reason}")
    if args.out:
        atomic_write_json(Path(args.out), [asdict(e) for e in out])
    return 0


if __name__ == "__main__":
    sys.exit(main())
