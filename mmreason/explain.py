"""Reasons for articles a recommender picked: the last step of profile -> candidates -> ranking -> reasons.

The command; the library is ``mmreason.serving.explainer``, whose docstring says what it does and why.
"""
from __future__ import annotations

import datetime as dt
import sys
from dataclasses import asdict, dataclass
from pathlib import Path

from mmreason import cli
from mmreason.decoding.shown import Decoding
from mmreason.io import DataError, atomic_write_json, check_ranges
from mmreason.serving.explainer import Explainer, read_new_articles


@dataclass
class ExplainOptions:
    """Reasons for new articles (not in the prepared tables) for one customer: ``python -m mmreason.explain``.

    Args:
        articles: articles file (.csv or .parquet) with H&M's article columns
        customer: customer_id as in the tables
        images: folder of <article_id:010d>.jpg photos (flat or H&M's layout)
        day: as of this day (default: the day after the data ends)
        run: generator run folder or checkpoint (default artifacts/runs/cpu)
        decode: decoding (default beam; greedy+beam: greedy, beam search where greedy's reason fails the filter)
        offer_retrieved: offer the prompt's first K retrieved copies after the generated hook, ahead of the generated
            copy (default: as deployed, shown.OFFER_RETRIEVED where the run retrieves, the copy the photo chose
            for a catalogue article when the run sees the photo; 0: the generated copy alone)
        out: also write the reasons here as JSON
    """
    articles: str
    customer: str
    images: str | None = None
    day: str | None = None
    run: str | None = None
    decode: Decoding = "beam"
    offer_retrieved: int | None = None
    out: str | None = None

    def __post_init__(self):
        check_ranges(self, offer_retrieved=">=0")
        if self.day is not None:
            try:
                dt.date.fromisoformat(self.day)
            except ValueError:
                raise ValueError(f"--day {self.day}: not a day (YYYY-MM-DD)") from None


def get_parser() -> cli.ArgumentParser:
    return cli.parser(ExplainOptions, prog="python -m mmreason.explain", description=ExplainOptions.__doc__.split("\n")[0])


def main(argv=None) -> int:
    args, = get_parser().parse(argv)
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
