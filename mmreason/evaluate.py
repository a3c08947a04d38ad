"""Evaluate reason generators and baselines: ``python -m mmreason.evaluate [--train] [--run NAME]``.

Systems, on two test sets (``temporal``: each user's last purchase day, products seen in training;
``unseen``: whole product codes held out of training):

* ``template``   a fixed sentence filled with the article's attributes (no history, no photo);
* ``retrieval``  the copy of the nearest training article by photo embedding (no hook);
* ``retrieval_text`` the same by the MiniLM embedding of the article's attribute text (``retrieval.py``);
* ``retrieval_both`` the same by the sum of both cosines;
* ``retrieval_text_type`` the same by attribute text among the articles of its own product type first;
* ``no_retrieval`` the generator without the retrieved copies and the copy head (the default before them);
* ``text_only``  the generator without the photo prefix (with retrieval);
* ``photo_only`` the generator without the product-attribute segment and what is retrieved by it
  (photo, profile, behaviour);
* ``full``       the generator with everything: photo prefix, profile, evidence, behaviour, product, the
  2 nearest other products' copies (``retrieval.py``) and the copy head (``model.CopyHead``), decoded as
  deployed: one retrieved copy offered after its hook (``shown.OFFER_RETRIEVED``), the one the photo chose
  among the text's 8 nearest (``shown.photo_offer``: re-ranked by the photo, then vetted by it);
* ``full_generated`` the same run's generated copy alone (nothing offered);
* ``full_nearest`` the same run offering its prompt's first retrieved copy, the text's nearest, as ``text_only``
  does (the deployed offer before the photo chose it): what the photo's choice of copy changes;
* ``full_vetted`` (ablation, not in the default list) the copy the photo vetted in the text's order, without
  re-ranking (``features.photodetails.vetted_copies``, weight 0).
* ``retrieval_k1``, ``retrieval_k1_generated`` (ablation) one retrieved copy in the prompt instead of 2, as
  deployed and its generated copy alone (with ``--versus full_generated`` each row is paired with the default
  run's generated copy).

Reasons from the generators come from the one shown-reason path (``shown.py``): beam search with the
decoding constraint (``constraints.py``; ``--no-constrain`` turns it off for the ablation), then the
post-filter (``filters.py``): the first candidate that passes is shown. Metrics are computed on the whole reason and separately on the
hook and the product copy, each system's as it wrote them: the template's two parts, retrieval's text
as copy alone (it has no hook), the generators' first sentence as hook (they learn the silver layout,
a one-sentence hook before the copy). Targets are *silver* (``reasons.py``).

Also: an attribute-dropout test (colour and pattern removed from the product text at test time: does
the photo prefix recover them?) and a personalisation probe (the same articles shown to several users).
Writes ``results/<run>/metrics.json`` and ``results/<run>/metrics.md`` and prints the tables.
"""
from __future__ import annotations

import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np
import pandas as pd
import torch

from mmreason import cli, paths
from mmreason import metrics as M
from mmreason.decoding.filters import Filter, vocab_from_items
from mmreason.decoding.generate import preset
from mmreason.decoding.shown import Decoding, decoding
from mmreason.features import photonet
from mmreason.features.photodetails import store_probe, vetted_copies
from mmreason.evaluation.systems import (
    ABLATION,
    OFFERED,
    RETRIEVERS,
    SYSTEMS,
    VARIANTS,
    VETTED,
    baseline_parts,
    drop_attributes,
    dropout_scores,
    frame_articles,
    histories,
    load_variant,
    model_reasons,
    personalisation_probe,
    score,
    test_frame,
)
from mmreason.features import retrieval
from mmreason.io import DataError, check_ranges, write_report
from mmreason.training.cli import fit
from mmreason.training.datamodule import ReasonDataModule

CONFIG = paths.REPO_ROOT / "configs" / "cpu.yaml"


# ----------------------------------------------------------------------------- tables

TABLES = {
    "Overlap with the silver reason (whole / hook / copy)": [
        ("BLEU-1", "bleu1"), ("BLEU-4", "bleu4"), ("ROUGE-L", "rougeL"), ("CIDEr", "cider"),
        ("hook BLEU-4", "hook_bleu4"), ("hook CIDEr", "hook_cider"),
        ("copy BLEU-4", "copy_bleu4"), ("copy ROUGE-L", "copy_rougeL"), ("copy CIDEr", "copy_cider"),
        ("emb. sim", "embedding_similarity")],
    "Diversity, features, grounding, personalisation, filter": [
        ("USR", "usr"), ("Dist-2", "distinct2"), ("Self-BLEU-4", "self_bleu4"), ("FMR", "fmr"), ("FCR", "fcr"),
        ("DIV", "div"), ("colour prec.", "grounding_colour_precision"), ("type prec.", "grounding_type_precision"),
        ("pattern prec.", "grounding_pattern_precision"), ("history-claim prec.", "history_claim_precision"),
        ("named-purchase prec.", "name_citation_precision"), ("hook = evidence", "hook_evidence_rate"),
        ("personalised share", "probe_personalised_share"), ("cross-user dist.", "probe_cross_user_distance"),
        ("top candidate rejected", "filter_rejection_rate"), ("shown passes", "shown_pass_rate"),
        ("hook repaired", "evidence_hook_share"),
        ("retrieved copy shown", "retrieved_copy_share")],
    # metrics.detail_agreement: a retrieved copy is another product's and can state another product's details
    "Details the copy states, against the article's own copy (sleeves, neckline, fabric)": [
        ("copies scored", "detail_scored"), ("sleeves prec.", "detail_sleeves_precision"),
        ("neckline prec.", "detail_neckline_precision"), ("fabric prec.", "detail_fabric_precision"),
        ("detail prec.", "detail_precision"), ("contradicts its copy", "detail_contradiction")],
}


# issue 13 asks full's copy CIDEr to be 15% above text_only's: each system's ratio, with its 95% paired interval
# (--versus names another system to compare with, e.g. an ablation's own reference row)
BASE = "text_only"


def vs_keys(base: str = BASE) -> tuple[str, str, str]:
    """The results' keys of the copy CIDEr ratio against ``base`` and its interval's ends."""
    return f"copy_cider_vs_{base}", f"copy_cider_vs_{base}_low", f"copy_cider_vs_{base}_high"


def fmt(v) -> str:
    if v is None or (isinstance(v, float) and np.isnan(v)):
        return "–"
    return f"{v:.3f}" if abs(v) < 10 else f"{v:.1f}"


def markdown(results: dict, dropout: dict, meta: dict) -> str:
    lines = [f"# Evaluation ({meta['run']}, silver targets)", "",
             f"{meta['n']} examples per {'validation' if meta.get('stage') == 'val' else 'test'} set "
             f"(seed {meta['seed']}), decoding `{meta['decode']}`"
             f"{' + constraint' if meta.get('constrain', True) else ' (unconstrained)'} + filter. "
             "BLEU/ROUGE on a 0-100 scale, CIDEr raw (0-10), the rest 0-1.", ""]
    for title, cols in TABLES.items():
        lines += [f"## {title}", "", "| split | system | " + " | ".join(c for c, _ in cols) + " |",
                  "|---|---|" + "---|" * len(cols)]
        for split, systems in results.items():
            for system, m in systems.items():
                lines.append(f"| {split} | {system} | " + " | ".join(fmt(m.get(k)) for _, k in cols) + " |")
        lines.append("")
    base = meta.get("versus", BASE)
    keys = vs_keys(base)
    if any(keys[0] in m for systems in results.values() for m in systems.values()):
        lines += [f"## Copy CIDEr against {base}'s on the same examples", "",
                  f"mean(copy CIDEr) / mean({base}'s) - 1, with its 95% paired bootstrap interval (2,000 resamples "
                  "of the examples, `metrics.paired_ratio`).", "",
                  f"| split | system | copy CIDEr | vs {base} | 95% interval |", "|---|---|---|---|---|"]
        for split, systems in results.items():
            for system, m in systems.items():
                r, low, high = (m.get(k, np.nan) for k in keys)
                lines.append(f"| {split} | {system} | {fmt(m.get('copy_cider'))} | "
                             + ("– | – |" if np.isnan(r) else f"{r:+.1%} | [{low:+.1%}, {high:+.1%}] |"))
        lines.append("")
    if dropout:
        lines += ["## Attribute dropout (unseen products; colour and pattern removed from the product text)", "",
                  "| system | colour mentioned | colour correct | pattern mentioned | pattern correct |", "|---|---|---|---|---|"]
        for system, m in dropout.items():
            lines.append(f"| {system} | {fmt(m['colour_mention_rate'])} | {fmt(m['colour_correct_rate'])} | "
                         f"{fmt(m['pattern_mention_rate'])} | {fmt(m['pattern_correct_rate'])} |")
        lines.append("")
    return "\n".join(lines)


# ----------------------------------------------------------------------------- CLI

def train_missing(variants, extra: list[str]) -> bool:
    """Train each variant without a checkpoint; False at the first whose training refused (it said why)."""
    for name in variants:
        if load_variant(name) is None:
            root, overrides = VARIANTS[name]
            print(f"[evaluate] training {name} -> {paths.resolve(root)}")  # train resolves it the same way
            if fit(["--config", str(CONFIG), "--trainer.default_root_dir", root, *overrides, "--n_report", "0",
                    *extra]) != 0:
                return False
    return True


@dataclass
class EvaluateOptions:
    """Evaluate reason generators and baselines: ``python -m mmreason.evaluate``.

    Args:
        run: results/<run>/
        n: examples per test set (0 = all)
        seed: seed of the test sets and the decoding
        stage: the test sets, or the validation sets (for choices made before looking at the test sets)
        decode: decoding for the generators (default beam; greedy+beam: serving's cascade)
        systems: the systems to score (see the module docstring)
        versus: each system's copy CIDEr against this one's on the same examples, with a paired interval
            (when it is among the systems scored)
        constrain: decode with the constraint (constraints.py); --no-constrain: the ablation's unconstrained rows
        train: train the model variants that have no checkpoint yet
        train_args: extra flags for mmreason.train (every word after --train-args)
        embedding: the sentence-embedding similarity (--no-embedding skips it)
        out: results folder (default results/<run>)
    """
    run: str = "cpu"
    n: int = 600
    seed: int = 0
    stage: Literal["test", "val"] = "test"
    decode: Decoding = "beam"
    systems: list[str] = field(default_factory=lambda: list(SYSTEMS))
    versus: str = BASE
    constrain: bool = True
    train: bool = False
    train_args: list[str] = field(default_factory=list)
    embedding: bool = True
    out: str | None = None

    def __post_init__(self):
        bad = [s for s in [*self.systems, self.versus] if s not in SYSTEMS + ABLATION]
        if bad:
            raise ValueError(f"unknown system(s) {', '.join(bad)}; choose from {', '.join(SYSTEMS + ABLATION)}")
        check_ranges(self, n=">=0", seed=">=0")


def get_parser() -> cli.ArgumentParser:
    return cli.parser(EvaluateOptions, prog="python -m mmreason.evaluate", description=__doc__.split("\n")[0],
                      remainder={"train_args"})


def main(argv=None) -> int:
    args, = get_parser().parse(argv)
    paths.offline()
    torch.manual_seed(args.seed)
    variants = list(dict.fromkeys([s for s in args.systems if s in VARIANTS] +
                                  [OFFERED[s][0] for s in args.systems if s in OFFERED] +
                                  [VETTED[s][0] for s in args.systems if s in VETTED]))
    if args.train and not train_missing(variants, args.train_args):
        return 2
    loaded = {name: load_variant(name) for name in variants}
    missing = [n for n, v in loaded.items() if v is None]
    if missing:
        print(f"error: no checkpoint for {', '.join(missing)}; run with --train (or python -m mmreason.train)",
              file=sys.stderr)
        return 2
    # Tables and embeddings come from the first variant's artifacts (all variants share them).
    data = next(iter(loaded.values()))[1] if loaded else ReasonDataModule()
    try:  # each run reads the artifacts it recorded; a missing or changed one stops here, in one line
        art = data.artifacts
        for _, vdata in loaded.values():
            vdata.artifacts
    except DataError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    items, examples = art.items, art.examples
    interactions = pd.read_parquet(art.data_dir / "interactions.parquet")
    vocab = vocab_from_items(items)
    filt = Filter(vocab)
    decode, fallback = decoding(args.decode)
    results, dropout, samples = {}, {}, []
    # one datastore (keyed file) for the text retrievers; photo retrieval alone needs no sentence encoder
    text_retrievers = {s for s, by in RETRIEVERS.items() if by != "photo"}
    store = retrieval.ensure_store(items, art.cache) if set(args.systems) & (text_retrievers | set(VETTED)) else None
    features = probe = None
    if set(args.systems) & set(VETTED):  # the photo's veto: ImageNet features and the probe trained on the store
        features = photonet.load_features(items)
        probe = store_probe(store, features)
    t0 = time.time()
    for split in ("temporal", "unseen"):
        frame = test_frame(examples, split, args.n, args.seed, stage=args.stage)
        hist = histories(frame, interactions, items)
        per_copy = {}
        results[split] = {}
        for system in args.systems:
            print(f"[evaluate] {split} / {system} ({len(frame)} examples)")
            report, parts = {}, None  # parts None: a generator's hook is its first sentence
            if system in VETTED:
                run, weight = VETTED[system]
                module, vdata = loaded[run]
                arts = frame_articles(frame, items)
                copies, vetoed = vetted_copies(store, arts, probe, features, weight=weight)
                hyps, report = model_reasons(module, vdata, frame, items, hist, filt, decode, constrain=args.constrain,
                                             fallback=fallback, offer_copies=copies)
                report["vetoed"] = vetoed
            elif system in VARIANTS or system in OFFERED:
                run, k = OFFERED.get(system, (system, None))  # None: as deployed
                module, vdata = loaded[run]
                hyps, report = model_reasons(module, vdata, frame, items, hist, filt, decode, constrain=args.constrain,
                                             offer_retrieved=k, fallback=fallback)
            else:
                parts = baseline_parts(system, frame, items, art.photo_lookup, store)
                hyps = [f"{hook} {copy}".strip() for hook, copy in parts]
            each = {}
            m = score(hyps, frame, items, hist, vocab, with_embedding=args.embedding, parts=parts, per_example=each)
            per_copy[system] = each["copy_cider"]  # its copy CIDEr, per example
            if report:
                m["retrieved_copy_share"] = report.pop("retrieved_copy_share")
                m["evidence_hook_share"] = report.pop("evidence_hook_share")
                if "vetoed" in report:
                    m["vetoed"] = report.pop("vetoed")  # the share of offered copies the photo changed
                m["filter_rejection_rate"] = report["first_choice_rejected_rate"]  # the best candidate failed
                m["shown_pass_rate"] = 1 - report["no_candidate_passed_rate"]  # after the fallback, if any
                m["filter_report"] = report
            if system in VARIANTS and split == "temporal":
                m.update(personalisation_probe(*loaded[system], frame, interactions, items, filt, seed=args.seed,
                                               constrain=args.constrain))
            results[split][system] = m
            samples += [{"split": split, "system": system, "article_id": int(a), "generated": h, "silver": r}
                        for a, h, r in list(zip(frame["article_id"], hyps, frame["reason"]))[:5]]
        if args.versus in per_copy:  # each system's copy CIDEr against --versus's (text_only's), on the same examples
            for system, scores in per_copy.items():
                ratio = M.paired_ratio(scores, per_copy[args.versus])
                results[split][system].update(zip(vs_keys(args.versus), ratio))
        if split == "unseen":  # attribute dropout: does the photo prefix recover colour and pattern?
            dropped = frame["product"].map(drop_attributes).tolist()
            for system in ("text_only", "full"):
                if system in loaded:
                    module, vdata = loaded[system]
                    for label, product in (("with attributes", None), ("colour+pattern dropped", dropped)):
                        # unconstrained: the constraint knows the article's colour, which this test hides
                        hyps, _ = model_reasons(module, vdata, frame, items, hist, filt, preset("greedy"), product,
                                                constrain=False)
                        dropout[f"{system}, {label}"] = dropout_scores(hyps, frame, items, vocab)
    meta = {"run": args.run, "n": args.n, "seed": args.seed, "stage": args.stage, "decode": args.decode,
            "constrain": args.constrain, "versus": args.versus,
            "seconds": round(time.time() - t0)}
    out = Path(args.out or paths.results_dir(args.run))
    table = markdown(results, dropout, meta)
    write_report(out, "metrics", {"meta": meta, "results": results, "attribute_dropout": dropout, "samples": samples},
                 table)
    print(table)
    print(f"[evaluate] wrote {out / 'metrics.json'} and metrics.md ({meta['seconds']} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
