"""Candidates and ranking for a customer's next purchase day: ``python -m mmreason.recommend``.

Protocol (the per-customer temporal split of ``mmreason.data``). To evaluate on split S (val or test),
every customer with an S day and at least one earlier purchase is asked for that day: the *history* is
every purchase strictly before it (for test it includes the customer's val day), the *targets* are the
articles bought on it. Every model ranks the whole catalogue for the same customers.

What a model may know besides the customer's own history -- never the S day itself:
* ``popularity``, ``recent_popularity``, ``itemknn``: other customers' purchases from the allowed splits
  (val: train; test: train + val) made strictly *before the customer's own evaluation day* ("as of").
  ``recent_popularity`` counts the 4 weeks before each customer's own day (ties by as-of popularity).
* ``popularity_global``: counts over the allowed splits on all dates, the simple global baseline.
  Days are per customer, so it sees other customers' purchases made *after* some evaluation days; its
  gap to ``popularity`` shows what that cross-customer look-ahead is worth.
* ``repurchase``: the customer's own earlier articles (and other colours of them), recency-weighted.
* ``two_tower`` (photo + attributes + id; user: attention over recent purchases + profile): trained on
  the (history -> next day) pairs of the allowed splits, all dates (val: train pairs; test: train + val
  pairs; ``--two-tower-fit train`` for train only). Like ``popularity_global`` it has seen other
  customers' purchases made after some evaluation days.
* ``repurchase+two_tower``: repurchase's candidates first, in its order; the two-tower ranks the rest.

Every model is scored twice: with the customer's already-bought articles kept, and excluded.
``recommend_for_user`` then excludes them for a model only where that helped on val.

``--user ID`` shows one customer's top-K for their next day; ``--explain`` adds a reason per article
through ``explain_fn`` (see ``load_explainer``), once a trained reason generator exists.
"""
from __future__ import annotations

import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable, Literal

import pandas as pd

from mmreason import cli, paths
from mmreason.io import DataError, SettingError, atomic_write_bytes, atomic_write_json, check_ranges
from mmreason.recsys.api import LEARNED, MODELS, recommend_for_user
from mmreason.recsys.baselines import BASELINES, repurchase_then
from mmreason.recsys.context import ALLOWED, UnknownUser, load_context
from mmreason.recsys.ranking import KS, evaluate, markdown_table
from mmreason.recsys.twotower import (
    EMBEDDINGS_HELP,
    TwoTowerConfig,
    load_photo_embeddings,
    photo_matrix,
    resolve_embeddings,
    two_tower,
)

# (customer_id, article_ids, day) -> one reason per article; ``load_explainer`` wires the reason generator.
ExplainFn = Callable[[str, list[int], pd.Timestamp], list[str]]


# --------------------------------------------------------------------------- explanations

def load_explainer(generator) -> ExplainFn:
    """The reason generator in ``generator`` (a run folder or checkpoint) as ``explain_fn(customer_id,
    article_ids, day) -> reasons``; prompts are built as of ``day`` like the training examples."""
    from mmreason.serving.explainer import Explainer  # the generator stack (LAZY_IMPORTS in tests/test_layout.py)

    return Explainer(generator)


def _generator_run(generator: str | None) -> Path | None:
    """The run ``--explain`` loads, checked once before any ranking: the one named (``DataError`` when it holds no
    checkpoint), else the default ``mmreason.train`` run; None, with a note, while that one is not trained yet
    (the ranking is still worth showing)."""
    from mmreason.training.runs import find_checkpoint  # the generator stack (LAZY_IMPORTS in tests/test_layout.py)

    run = paths.resolve(generator) if generator else paths.run_dir()
    if find_checkpoint(run) is not None:
        return run
    if generator:
        raise DataError(f"--generator {generator}: no checkpoint there (train one with `python -m mmreason.train`)")
    print(f"[recommend] reasons need a trained reason generator (no checkpoint at {paths.shown(run)}; "
          "see `python -m mmreason.train`)")
    return None


def _explain(cid: str, frame: pd.DataFrame, explain_fn: ExplainFn | None, run: Path | None) -> pd.DataFrame:
    if explain_fn is None:
        if run is None:  # the default run, not trained yet (``_generator_run`` said so)
            return frame
        explain_fn = load_explainer(run)
    ids, day = frame["article_id"].tolist(), frame["day"].iloc[0]
    if hasattr(explain_fn, "explain"):  # an Explainer: also say when no candidate passed the filter
        ex = explain_fn.explain(cid, ids, day)
        return frame.assign(reason=[e.reason for e in ex],
                            filter=["passed" if e.passed_filter else "failed: " + ", ".join(e.rejected[0][1]) for e in ex])
    return frame.assign(reason=explain_fn(cid, ids, day))


# --------------------------------------------------------------------------- CLI

@dataclass
class RecommendOptions:
    """Candidates and ranking for a customer's next purchase day: ``python -m mmreason.recommend``.

    Args:
        data: prepared tables (default artifacts/data/hm)
        out: output folder (default artifacts/recommend)
        split: evaluation split (default val); with --user also 'next' (the default there)
        models: comma-separated names from ``recsys.api.MODELS``
        embeddings: the photo embedding cache (its help: ``recsys.twotower.EMBEDDINGS_HELP``)
        retrain: train the two-tower model even if a matching one is saved
        two_tower_fit: pairs the two-tower model learns from: the splits the evaluated split may know
            (val: train, test: train+val, next: all; default) or the train split only
        user: show one customer's top-K (full id or a unique prefix)
        model: the model used with --user
        k: articles shown with --user
        explain: with --user: a generated reason per article
        generator: reason-generator run folder or checkpoint (default artifacts/runs/cpu)
        progress: progress bars (--no-progress: none)
    """
    data: str | None = None
    out: str | None = None
    split: Literal["val", "test", "next"] | None = None
    models: str = ",".join(MODELS)
    embeddings: str | None = "auto"
    retrain: bool = False
    two_tower_fit: Literal["allowed", "train"] = "allowed"
    user: str | None = None
    model: str = "two_tower"
    k: int = 10
    explain: bool = False
    generator: str | None = None
    progress: bool = True

    def __post_init__(self):
        if self.model not in MODELS:
            raise ValueError(f"--model {self.model!r}: choose from {', '.join(MODELS)}")
        check_ranges(self, k=">=1")
        if self.generator is not None and not self.explain:
            raise SettingError("--generator names the model that writes reasons: use it with --explain")
        if self.explain and self.user is None:
            raise SettingError("--explain writes reasons for one customer's top-K: use it with --user")


def get_parser() -> cli.ArgumentParser:
    return cli.parser(RecommendOptions, TwoTowerConfig, prog="python -m mmreason.recommend",
                      description=__doc__.split("\n")[0], short={"k": "-k"},
                      helps={"models": f"comma-separated, from {','.join(MODELS)}", "embeddings": EMBEDDINGS_HELP})


def main(argv=None, explain_fn: ExplainFn | None = None) -> int:
    args, cfg = get_parser().parse(argv)
    data_dir = Path(args.data or paths.artifacts_dir() / "data" / "hm")
    out_dir = Path(args.out or paths.artifacts_dir() / "recommend")
    args.embeddings = resolve_embeddings(args.embeddings, data_dir)
    try:
        photos = load_photo_embeddings(args.embeddings) if args.embeddings else None
        ctx = load_context(data_dir)
        if args.user is not None:
            cid = ctx.resolve_user(args.user)
            split = args.split or "next"
            run = _generator_run(args.generator) if args.explain and explain_fn is None else None
            if args.model in LEARNED and args.retrain:
                two_tower(ctx, cfg, photo_matrix(photos, ctx.items["article_id"]), out_dir, split, retrain=True,
                          progress=args.progress, fit_on=args.two_tower_fit)
            frame = recommend_for_user(args.model, cid, args.k, split=split, data_dir=data_dir, out_dir=out_dir,
                                       photo_embeddings=photos, config=cfg, fit_on=args.two_tower_fit)
            if args.explain:
                frame = _explain(cid, frame, explain_fn, run)
            cols = [c for c in ["rank", "article_id", "prod_name", "product_type_name", "colour_group_name", "score",
                                "already_bought", "bought", "reason", "filter"] if c in frame]
            print(f"[recommend] {args.model} for customer {cid[:10]}… ({split} day; already-bought articles "
                  f"{'excluded' if frame['excluded_bought'].iloc[0] else 'kept'})")
            print(markdown_table(frame[cols].to_dict("records"), cols))
            return 0
        split = args.split or "val"
        if split == "next":
            raise DataError("--split next has no targets to evaluate; use it with --user")
        models = [m.strip() for m in args.models.split(",") if m.strip()]
        bad = [m for m in models if m not in MODELS]
        if bad:
            raise DataError(f"unknown model(s) {', '.join(bad)}; choose from {', '.join(MODELS)}")
    except (UnknownUser, DataError) as e:
        print(f"error: {e.args[0] if isinstance(e, UnknownUser) else e}", file=sys.stderr)
        return 2
    t0 = time.time()
    task = ctx.task(split)
    print(f"[recommend] {split}: {len(task.customers)} customers, {sum(map(len, task.targets))} target articles, "
          f"{ctx.n_items} candidates; {task.n_cold} customers without earlier purchases not evaluated")
    scorers = {m: BASELINES[m] for m in models if m in BASELINES}
    train_s = None
    if any(m in LEARNED for m in models):
        t1 = time.time()
        rec = two_tower(ctx, cfg, photo_matrix(photos, ctx.items["article_id"]), out_dir, split, retrain=args.retrain,
                        progress=args.progress, fit_on=args.two_tower_fit)
        train_s = round(time.time() - t1, 1)
        scorers |= {m: rec.scores if m == "two_tower" else repurchase_then(rec.scores) for m in models if m in LEARNED}
    results = evaluate(ctx, task, scorers)
    cols = ["model", "bought", "users"] + [f"{m}@{k}" for k in KS for m in ("HR", "Recall", "NDCG")]
    table = markdown_table(list(results.values()), cols)
    notes = (f"Split {split}: {len(task.customers)} customers with a {split} day and earlier purchases "
             f"({task.n_cold} without, not evaluated); candidates: all {ctx.n_items} articles. "
             f"'bought': the customer's already-bought articles kept in or excluded from the ranking. "
             f"Photo embeddings: {args.embeddings or 'none'}. Others' purchases usable: "
             f"{'+'.join(ALLOWED[split])} splits (as of each customer's day, except popularity_global and "
             f"two_tower, fitted on {'+'.join(ALLOWED[split]) if args.two_tower_fit == 'allowed' else 'train'} "
             f"pairs of all dates).")
    print(table)
    out = out_dir / split
    atomic_write_json(out / "metrics.json", {
        "split": split, "results": results, "customers": len(task.customers), "cold_customers": task.n_cold,
        "targets": int(sum(map(len, task.targets))), "candidates": ctx.n_items, "embeddings": args.embeddings,
        "two_tower": {"config": asdict(cfg), "fit_on": ALLOWED[split] if args.two_tower_fit == "allowed" else ["train"],
                      "train_or_load_seconds": train_s, "log": rec.log} if train_s is not None else None,
        "seconds": round(time.time() - t0, 1), "data_fingerprint": ctx.fingerprint})
    atomic_write_bytes(out / "metrics.md", f"# Recommendation, {split}\n\n{notes}\n\n{table}\n".encode())
    print(f"[recommend] wrote {out}/metrics.json and metrics.md ({time.time() - t0:.1f}s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
