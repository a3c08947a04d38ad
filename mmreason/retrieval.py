"""Retrieval: a datastore of training products and nearest-neighbour lookup; ``python -m mmreason.retrieval``.

The command; the library is ``mmreason.features.retrieval``, whose docstring says what it does and why.
"""
from __future__ import annotations

import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from mmreason import cli, paths
from mmreason import metrics as M
from mmreason.decoding.filters import vocab_from_items
from mmreason.evaluation import systems as E
from mmreason.features import photonet
from mmreason.features.photochoice import best_of, candidates, photo_cosines, photo_nearest, reorder, reranked
from mmreason.features.photodetails import K, TAU, DetailProbe, store_probe, vetted_copies
from mmreason.features.retrieval import Datastore, ensure_store
from mmreason.io import DataError, check_ranges, write_report
from mmreason.training.runs import find_checkpoint, load_run

# ----------------------------------------------------------------------------- the comparison (CLI)

FRAMES = (("validation", "temporal", "val"), ("validation", "unseen", "val"),
          ("test", "temporal", "test"), ("test", "unseen", "test"))
COLUMNS = (("copy CIDEr", "copy_cider"), ("copy BLEU-4", "copy_bleu4"), ("copy ROUGE-L", "copy_rougeL"),
           ("colour named", "grounding_colour_mention_rate"), ("colour prec.", "grounding_colour_precision"),
           ("type named", "grounding_type_mention_rate"), ("type prec.", "grounding_type_precision"),
           ("copy = reference", "identical_copy"), ("contradicts its copy", "detail_contradiction"),
           ("changed by the photo", "vetoed"))
VETTED = "retrieval_vetted"  # text, own type first, vetted by the photo's details (photodetails.py)
# can the photo choose a better copy than the text? (features/photochoice.py; reported, never chosen)
PHOTO_NET, RERANKED, RERANKED_VETTED, BEST_OF = ("retrieval_photo_imagenet", "retrieval_reranked",
                                                 "retrieval_reranked_vetted", "best_of_k")
BASE = "retrieval_text_type"  # what each row's copy CIDEr is set against (the prompt's retriever; text_only offers it)
WEIGHTS = (0.05, 0.1, 0.25, 0.5, 1.0)  # the photo cosine's weight in the re-ranking, chosen on validation


def compare(store: Datastore, items, examples, interactions, photo_lookup, n: int = 300, seed: int = 0,
            photo_features: dict | None = None, probe: DetailProbe | None = None) -> dict:
    """Each retrieval baseline scored by ``evaluate.score`` on validation and test frames (``evaluate.test_frame``);
    with ``photo_features`` (``photonet.load_features``) and ``probe`` also ``VETTED`` and the photo's choices
    (``photochoice.py``): retrieval by the ImageNet features, the text's ``K`` candidates re-ranked by them (the
    weight chosen among ``WEIGHTS`` on the validation sets' mean copy CIDEr), that order vetted, and the best
    candidate by CIDEr against the article's own copy (a ceiling)."""
    # evaluate's frames and score are the one implementation of the metrics; the library above imports no command

    vocab = vocab_from_items(items)
    sets = []
    for stage, split, frame_stage in FRAMES:
        frame = E.test_frame(examples, split, n, seed, stage=frame_stage)
        sets.append((stage, split, frame, E.histories(frame, interactions, items)))

    def scored(copies, frame, hist, per_example=None) -> dict:
        parts = [("", c) for c in copies]
        m = E.score([c.strip() for c in copies], frame, items, hist, vocab, with_embedding=False, parts=parts,
                    per_example=per_example)
        return m | {"identical_copy": float(np.mean([c == r for c, r in zip(copies, frame["item_copy"])]))}

    photo = probe is not None
    cands, grid, weight = {}, {}, None
    if photo:
        for stage, split, frame, hist in sets:
            arts = E.frame_articles(frame, items)
            cand = candidates(store, arts, K)
            cands[stage, split] = arts, cand, photo_cosines(store, arts, cand, photo_features)
        for w in WEIGHTS:  # the weight is chosen on validation only
            grid[w] = float(np.mean([scored(reranked(c, cos, w), frame, hist)["copy_cider"]
                                     for stage, split, frame, hist in sets if stage == "validation"
                                     for _, c, cos in [cands[stage, split]]]))
        weight = max(grid, key=grid.get)
    retrievers = dict(E.RETRIEVERS) | ({VETTED: "text_type, photo veto", PHOTO_NET: "photo (ImageNet)",
                                        RERANKED: f"text_type, + {weight} x photo cosine",
                                        RERANKED_VETTED: "the same, photo veto",
                                        BEST_OF: f"ceiling: best of {K} by CIDEr"} if photo else {})
    results, per = [], {}
    for stage, split, frame, hist in sets:
        for system, by in retrievers.items():
            if system in E.RETRIEVERS:
                copies = [c for _, c in E.baseline_parts(system, frame, items, photo_lookup, store)]
            else:
                arts, cand, cos = cands[stage, split]
                if system == VETTED:
                    copies, _ = vetted_copies(store, arts, probe, photo_features, cand=cand)
                elif system == PHOTO_NET:
                    copies = photo_nearest(store, arts, photo_features)
                elif system == RERANKED:
                    copies = reranked(cand, cos, weight)
                elif system == RERANKED_VETTED:
                    copies, _ = vetted_copies(store, arts, probe, photo_features, cand=reorder(cand, cos, weight))
                else:
                    copies = best_of(cand, frame["item_copy"].tolist())
            each = {}
            m = scored(copies, frame, hist, each)
            per[stage, split, system] = each["copy_cider"]
            # the share the photo moved off the text's nearest copy (own type first)
            m["vetoed"] = (float(np.mean([c != cs[0] for c, cs in zip(copies, cands[stage, split][1].copies)]))
                           if system in (VETTED, RERANKED, RERANKED_VETTED) else float("nan"))
            results.append({"stage": stage, "split": split, "system": system, "by": by, "n": len(frame),
                            **{k: m[k] for _, k in COLUMNS}})
            print(f"[retrieval] {stage} {split} {system}: copy CIDEr {m['copy_cider']:.3f}, "
                  f"copy BLEU-4 {m['copy_bleu4']:.1f}")
    for r in results:  # each row's copy CIDEr against the text's nearest (own type first) on the same examples
        ratio, low, high = M.paired_ratio(per[r["stage"], r["split"], r["system"]],
                                          per[r["stage"], r["split"], BASE])
        r |= {"vs_text_type": ratio, "vs_text_type_low": low, "vs_text_type_high": high}
    val = pd.DataFrame([r for r in results if r["stage"] == "validation"])
    mean_val = val.groupby("system", sort=False)["copy_cider"].mean()
    out = {"results": results, "validation_mean_copy_cider": mean_val.round(4).to_dict(), "chosen": choose(mean_val)}
    if photo:
        out["rerank"] = {"k": K, "weights": {str(w): round(v, 4) for w, v in grid.items()}, "chosen": weight}
    return out


def choose(mean_val: pd.Series) -> str:
    """The retriever with the best validation copy CIDEr among ``nearest``'s rankings: the choice is the prompt's
    ``retrieval_by``; the vetted copies (``VETTED``) are reported beside it, not chosen."""
    return str(mean_val[[s for s in mean_val.index if s in E.RETRIEVERS]].idxmax())


def markdown(report: dict) -> str:
    meta = report["meta"]
    lines = ["# Retrieval baselines (issue 14)", "",
             f"The copy of the nearest training product, never one of the article's own product_code, scored on "
             f"what it wrote (all of it copy; references: the article's own copy). {meta['n']} examples per set "
             f"(seed {meta['seed']}, `evaluate.test_frame`; validation: `split_temporal == 'val'` on training "
             f"products, `split_unseen == 'val'`). Store: {meta['store_rows']:,} articles of training products "
             f"(`{meta['store']}`), text encoder {meta['text_encoder']}, photo embeddings `{meta['photo_embeddings']}`. "
             "BLEU/ROUGE 0-100, CIDEr raw; `named`: share naming any colour (type); `prec.`: among those, share "
             "naming the article's own; `copy = reference`: share of retrieved copies identical to the reference; "
             "`contradicts its copy`: share stating a sleeve length, neckline or fabric that the article's own copy "
             "states otherwise (`metrics.detail_agreement`)."]
    if "photo_details" in meta:
        veto = meta["photo_details"]
        lines[-1] += (f" `{VETTED}`: the first of the {veto['k']} nearest distinct copies by text, own type first, "
                      f"whose every stated sleeve length, neckline and fabric the photo gives at least {veto['tau']} "
                      f"(`photodetails.py`: a softmax per facet on {veto['encoder']} ImageNet features, trained on "
                      f"the store's copies: " + ", ".join(f"{f} {c:,}" for f, c in veto["trained_on"].items()) +
                      "); `changed by the photo`: the share where that is not the nearest copy.")
    if "rerank" in report:
        rr = report["rerank"]
        grid = ", ".join(f"{w} {v:.3f}" for w, v in rr["weights"].items())
        lines[-1] += (f" Can the photo choose a better copy than the text (`photochoice.py`)? `{PHOTO_NET}`: the copy "
                      f"of the nearest store row by those ImageNet features alone. `{RERANKED}`: of the same "
                      f"{rr['k']} distinct copies, the best by text score + w x photo cosine, w = {rr['chosen']} chosen "
                      f"on the validation sets' mean copy CIDEr ({grid}); `{RERANKED_VETTED}`: the first of that order "
                      f"the photo does not veto. `{BEST_OF}`: the one of the {rr['k']} with the best CIDEr against "
                      "the article's own copy, which it reads: a ceiling, no system. `changed by the photo` counts, for "
                      "these rows too, the copies that are not the text's nearest.")
    lines[-1] += (f" `copy CIDEr vs {BASE}`: the row's mean copy CIDEr over `{BASE}`'s on the same examples, - 1, "
                  "with its 95% paired bootstrap interval (2,000 resamples of the examples, `metrics.paired_ratio`).")
    lines += ["",
             "| set | split | retriever | by | " + " | ".join(c for c, _ in COLUMNS) + f" | copy CIDEr vs {BASE} |",
             "|---|---|---|---|" + "---|" * (len(COLUMNS) + 1)]
    for r in report["results"]:
        cells = ["–" if np.isnan(r[k]) else f"{r[k]:.3f}" if abs(r[k]) < 10 else f"{r[k]:.1f}" for _, k in COLUMNS]
        cells.append(f"{r['vs_text_type']:+.1%} [{r['vs_text_type_low']:+.1%}, {r['vs_text_type_high']:+.1%}]"
                     if "vs_text_type" in r else "–")
        lines.append(f"| {r['stage']} | {r['split']} | {r['system']} | {r['by']} | " + " | ".join(cells) + " |")
    means = ", ".join(f"{s} {v:.3f}" for s, v in report["validation_mean_copy_cider"].items())
    lines += ["", f"Chosen on validation among `nearest`'s rankings (mean copy CIDEr of the two validation sets: "
              f"{means}): **{report['chosen']}**.", ""]
    return "\n".join(lines)


@dataclass
class RetrievalOptions:
    """Compare the retrievers on validation and test: ``python -m mmreason.retrieval``.

    Args:
        run: the run whose recorded tables and photo embeddings to use
        n: examples per validation / test set (0 = all)
        seed: seed of the sets
        out: results folder (default results/cpu)
        rebuild: recompute the datastore even if its keyed file exists
        compare: score the retrievers (--no-compare: only build or reuse the store)
        photo_veto: also score the copies vetted by the photo's details and the photo's other choices
            (photochoice.py; ImageNet photo features of every article, computed once: 28 min on 2 cores beside a
            training run)
    """
    run: str = "artifacts/runs/cpu"
    n: int = 300
    seed: int = 0
    out: str | None = None
    rebuild: bool = False
    compare: bool = True
    photo_veto: bool = True

    def __post_init__(self):
        check_ranges(self, n=">=0", seed=">=0")


def get_parser() -> cli.ArgumentParser:
    return cli.parser(RetrievalOptions, prog="python -m mmreason.retrieval", description=__doc__.split("\n")[0])


def main(argv=None) -> int:
    args, = get_parser().parse(argv)
    paths.offline()

    t0 = time.time()
    try:
        if find_checkpoint(args.run) is None:
            print(f"error: no checkpoint in {args.run} (python -m mmreason.train makes the default run)", file=sys.stderr)
            return 2
        _, data = load_run(args.run)
        art = data.artifacts  # exactly the tables and photo embeddings the run recorded
        interactions = pd.read_parquet(art.data_dir / "interactions.parquet")
    except DataError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    store = ensure_store(art.items, art.cache, rebuild=args.rebuild)
    if not args.compare:
        return 0
    features = probe = None
    if args.photo_veto:
        features = photonet.load_features(art.items)
        probe = store_probe(store, features)
    report = compare(store, art.items, art.examples, interactions, art.photo_lookup, args.n, args.seed,
                     photo_features=features, probe=probe)
    report["meta"] = {"run": args.run, "n": args.n, "seed": args.seed, "store_rows": len(store),
                      "store": paths.shown(store.path),  # a path readable on any machine
                      "text_encoder": store.meta["text_encoder"], "photo_embeddings": Path(art.cache["path"]).name,
                      "tables": Path(art.data_dir).name, "seconds": round(time.time() - t0)}
    if probe is not None:
        report["meta"]["photo_details"] = {"encoder": photonet.MODEL, "features": Path(features["path"]).name,
                                           "k": K, "tau": TAU, "trained_on": probe.trained_on}
    out = Path(args.out) if args.out else paths.results_dir("cpu")
    table = markdown(report)
    write_report(out, "retrieval", report, table)
    print(table)
    print(f"[retrieval] wrote {out / 'retrieval.json'} and retrieval.md ({report['meta']['seconds']} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
