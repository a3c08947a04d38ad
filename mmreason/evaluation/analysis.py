"""Numbers behind the notebooks' figures: training logs, CLIP evidence, decoding sweeps, case studies.

Each function returns plain tables or dicts; ``plots.py`` draws them. Nothing here trains a model:
the notebooks call ``mmreason.train`` / ``mmreason.embed`` for that and load the results.
"""
from __future__ import annotations

import json
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from mmreason import metrics as M
from mmreason.decoding.filters import Filter, vocab_from_items
from mmreason.decoding.generate import DecodeConfig, preset
from mmreason.decoding.shown import Shown, shown_reasons
from mmreason.features import clip, cliptrain
from mmreason.features import embed as embed_lib
from mmreason.io import atomic_write_json

# The decoders the diversity notebook compares: deterministic search, then sampling at rising temperature
# and with a nucleus. One candidate per example for sampling; beam searches keep 4 (for the filter).
DECODERS = {
    "greedy": preset("greedy"),
    "beam": preset("beam", num_return_sequences=4),
    "diverse beam": preset("diverse_beam"),
    "sample T=0.7": preset("sample", temperature=0.7, top_p=1.0, num_return_sequences=1),
    "sample T=1.0": preset("sample", temperature=1.0, top_p=1.0, num_return_sequences=1),
    "sample T=1.3": preset("sample", temperature=1.3, top_p=1.0, num_return_sequences=1),
    "top-p 0.9": preset("sample", temperature=1.0, top_p=0.9, num_return_sequences=1),
}


def describe(decode: DecodeConfig) -> str:
    """A decoder's settings in words, only those that apply to its strategy."""
    parts = {"greedy": ["greedy"], "beam": [f"beam search, {decode.num_beams} beams"],
             "diverse_beam": [f"diverse beam search, {decode.num_beams} beams in {decode.num_beam_groups} groups, "
                              f"diversity penalty {decode.diversity_penalty}"],
             "sample": [f"sampling, temperature {decode.temperature}"]}[decode.strategy]
    if decode.strategy == "sample" and decode.top_p < 1:
        parts.append(f"top-p {decode.top_p}")
    if decode.strategy == "sample" and decode.top_k:
        parts.append(f"top-k {decode.top_k}")
    if decode.no_repeat_ngram_size:
        parts.append(f"no repeated {decode.no_repeat_ngram_size}-grams")
    if decode.num_return_sequences > 1:
        parts.append(f"{decode.num_return_sequences} candidates")
    return ", ".join(parts)


# ----------------------------------------------------------------------------- training logs

def training_log(run_dir: str | Path) -> pd.DataFrame:
    """The CSV logs of a run (all ``logs/version_*``, later versions winning) as one row per step.

    Columns: step, train_loss, val_loss, lr, tokens_per_s (NaN where a step did not log it).
    """
    files = sorted(Path(run_dir).glob("logs/version_*/metrics.csv"), key=lambda p: int(p.parent.name.split("_")[-1]))
    if not files:
        raise FileNotFoundError(f"no logs/version_*/metrics.csv under {run_dir}")
    names = {"train/loss": "train_loss", "val/loss": "val_loss", "train/tokens_per_s": "tokens_per_s"}
    parts = []
    for i, f in enumerate(files):
        df = pd.read_csv(f)
        lr_cols = [c for c in df.columns if c.startswith("lr-")] or [c for c in df.columns if c == "lr"]
        long = df.rename(columns=names)
        long["lr"] = long[lr_cols[0]] if lr_cols else np.nan
        cols = ["step", *names.values(), "lr"]
        long = long.reindex(columns=cols).melt("step", var_name="metric").dropna()
        parts.append(long.assign(version=i))
    tidy = pd.concat(parts).sort_values("version").drop_duplicates(["step", "metric"], keep="last")
    wide = tidy.pivot(index="step", columns="metric", values="value").rename_axis(columns=None)
    return wide.reindex(columns=["train_loss", "val_loss", "lr", "tokens_per_s"]).reset_index().sort_values("step")


# ----------------------------------------------------------------------------- domain CLIP

def clip_evidence(artifacts, clip_model: str | None = None) -> dict:
    """Held-out retrieval recall and linear probes of the photo embeddings, plus the CLIP's training history.

    Reads ``<cache>.eval.json`` (what ``python -m mmreason.embed`` writes) when it belongs to this cache,
    else computes it (~20 s on the real data) and writes it there, with the CLIP the cache was made with.
    -> {"eval": embed's evaluation dict, "history": per-epoch CLIP training records (may be empty)}.
    """
    meta = artifacts.cache["meta"]
    clip_model = clip_model or meta["model"]
    ckpt = Path(artifacts.clip_pretrained or embed_lib.domain_checkpoint(clip_model))  # the CLIP this cache came from
    clip_meta_path = ckpt.parent / clip.META_NAME
    clip_meta = json.loads(clip_meta_path.read_text()) if clip_meta_path.exists() else {}
    path = Path(artifacts.cache["path"]).with_suffix(".eval.json")
    ev = json.loads(path.read_text()) if path.exists() else None
    if ev is None or ev.get("meta") != json.loads(json.dumps(meta)):
        print(f"clip evidence: computing {path.name}")
        model, _, tokenizer = clip.load_clip(clip_model, ckpt)
        desc_words = clip_meta.get("train_config", {}).get("desc_words", cliptrain.get_default_config().desc_words)
        ev = {"model_id": clip_model, "meta": meta,
              **embed_lib.evaluate(model, tokenizer, artifacts.cache, artifacts.items, desc_words)}
        atomic_write_json(path, ev)
    return {"eval": ev, "history": clip_meta.get("history", [])}


# ----------------------------------------------------------------------------- decoding

def generate(module, data, frame: pd.DataFrame, decode: DecodeConfig, batch_size: int = 160,
             items: pd.DataFrame | None = None, hist: list[dict] | None = None, filt: Filter | None = None,
             constrain: bool = True, offer_retrieved: int | None = None) -> list[Shown]:
    """The shown reason (``shown.shown_reasons``: ranked candidates, filter verdict) for every row of
    ``frame`` (examples, or probe rows with swapped users). items default: the run's items table;
    offer_retrieved: None as deployed, 0 for the generated candidates alone."""
    items = data.artifacts.items if items is None else items
    arts = items.set_index("article_id").loc[frame["article_id"]].reset_index().to_dict("records")
    filt = filt if filt is not None else Filter(vocab_from_items(items))
    return shown_reasons(module, data, frame.to_dict("records"), arts, decode, filt, hist, constrain=constrain,
                         batch_size=batch_size, offer_retrieved=offer_retrieved)


def _within_set_distinct2(candidates: list[list[str]]) -> float:
    """Mean over examples with >= 2 candidates of Distinct-2 pooled over that example's candidates."""
    values = [M.distinct(c, 2) for c in candidates if len(c) > 1]
    return float(np.mean(values)) if values else float("nan")


def decoding_sweep(module, data, frame: pd.DataFrame, items: pd.DataFrame, hist: list[dict], filt: Filter,
                   decoders: dict[str, DecodeConfig] | None = None, seed: int = 0) -> tuple[pd.DataFrame, dict]:
    """Score each decoder's top candidate against the silver reasons, and its diversity across examples.
    The decoders' own candidates: the deployed offer of the retrieved copy (and the evidence's hook where
    none of a decoder's passes) would show most examples the same reason whatever the decoder.

    -> (one row per decoder: bleu4, cider, distinct2, usr, self_bleu4, within_set_distinct2 (among an
    example's candidates), top_passes_filter, any_passes_filter, mean_words, seconds;
    {decoder: candidate lists}).
    """
    decoders = decoders or DECODERS
    refs = frame["reason"].tolist()
    arts = items.set_index("article_id").loc[frame["article_id"]].reset_index().to_dict("records")
    rows, outputs = [], {}
    for name, decode in decoders.items():
        torch.manual_seed(seed)
        t0 = time.perf_counter()
        shown = generate(module, data, frame, decode, items=items, hist=hist, filt=filt, offer_retrieved=0)
        seconds = time.perf_counter() - t0
        cands = [s.candidates for s in shown]
        hyps = [c[0] if c else "" for c in cands]  # no candidate (every beam ended under the constraint): empty
        selected = [s.selected for s in shown]
        rows.append({
            "decoder": name, "strategy": decode.strategy, "temperature": decode.temperature, "top_p": decode.top_p,
            "bleu4": M.bleu(hyps, refs, 4), "cider": M.cider(hyps, refs), "distinct2": M.distinct(hyps, 2),
            "usr": M.usr(hyps), "self_bleu4": M.self_bleu(hyps, 4, seed=seed),
            "within_set_distinct2": _within_set_distinct2(cands), "candidates": decode.num_return_sequences,
            "top_passes_filter": float(np.mean([not rej for _, rej in selected])),
            "any_passes_filter": float(np.mean([chosen is not None for chosen, _ in selected])),
            "mean_words": float(np.mean([len(h.split()) for h in hyps])), "seconds": round(seconds, 1)})
        outputs[name] = cands
        print(f"[sweep] {name:>14}: BLEU-4 {rows[-1]['bleu4']:5.2f}  CIDEr {rows[-1]['cider']:.3f}  "
              f"Distinct-2 {rows[-1]['distinct2']:.3f}  Self-BLEU {rows[-1]['self_bleu4']:5.1f}  ({seconds:.0f} s)")
    return pd.DataFrame(rows), outputs


def _token_distance(a: str, b: str) -> float:
    """1 - Jaccard similarity of the two texts' token sets (metrics.personalisation's distance)."""
    a, b = set(M.tokenize(a)), set(M.tokenize(b))
    return 1.0 - len(a & b) / len(a | b) if a | b else 0.0


def personalisation_sweep(module, data, probe: pd.DataFrame, decoders: dict[str, DecodeConfig],
                          seed: int = 0) -> pd.DataFrame:
    """Do different users get different reasons for the same article, beyond decoding noise?

    Per decoder: metrics.personalisation on the shown reason (personalised_share, cross_user_distance:
    mean token-Jaccard distance between users' reasons) and noise_distance: the same distance between two
    draws for the *same* user and article (0 for deterministic decoders). What users change is the gap.
    """
    rows = []
    for name, decode in decoders.items():
        torch.manual_seed(seed)
        sampling = decode.strategy == "sample"
        shown = generate(module, data, probe, replace(decode, num_return_sequences=2 if sampling else 1))
        cands = [s.candidates for s in shown]
        p = M.personalisation([s.reason for s in shown], probe["customer_id"].tolist(), probe["article_id"].tolist())
        noise = [_token_distance(c[0], c[1]) for c in cands if len(c) > 1] if sampling else [0.0]
        rows.append({"decoder": name, "personalised_share": p["personalised_share"],
                     "cross_user_distance": p["cross_user_distance"], "noise_distance": float(np.mean(noise)),
                     "articles": int(p["groups"])})
    out = pd.DataFrame(rows)
    out["user_signal"] = out["cross_user_distance"] - out["noise_distance"]
    return out


# ----------------------------------------------------------------------------- case studies

def pick_case_users(frame: pd.DataFrame, n: int, min_history: int = 3, seed: int = 0) -> pd.DataFrame:
    """One test example each for ``n`` users, preferring long histories, photos and varied hook kinds."""
    pool = frame[frame["has_photo"]].copy()
    pool["rich"] = pool["n_history"] >= min_history
    pool = pool.sample(frac=1.0, random_state=seed).sort_values(["rich", "personalised"], ascending=False, kind="stable")
    pool = pool.drop_duplicates("customer_id")
    picked, kinds = [], set()
    for r in pool.itertuples():  # first pass: a new hook kind each time; second: whatever is left
        if len(picked) < n and r.hook_kind not in kinds and (r.rich or r.n_history > 0):
            picked.append(r.Index)
            kinds.add(r.hook_kind)
    picked += [i for i in pool.index if i not in picked][: n - len(picked)]
    return frame.loc[picked]


def recent_purchases(interactions: pd.DataFrame, items: pd.DataFrame, customer_id: str, day,
                     n: int = 5) -> pd.DataFrame:
    """The user's last ``n`` purchases strictly before ``day``, most recent first, with article columns."""
    past = interactions[(interactions["customer_id"] == customer_id) & (interactions["t_dat"] < pd.Timestamp(day))]
    past = past.sort_values(["t_dat", "article_id"], ascending=[False, True]).head(n)
    out = past.merge(items, on="article_id", how="left")
    out["days_ago"] = (pd.Timestamp(day) - out["t_dat"]).dt.days
    return out


def case_studies(module, data, cases: pd.DataFrame, interactions: pd.DataFrame, items: pd.DataFrame,
                 hist: list[dict], filt: Filter, decoders: dict[str, DecodeConfig], n_recent: int = 5,
                 seed: int = 0) -> list[dict]:
    """Per picked example: the user's recent purchases, the article, the silver reason, and per decoder
    its ranked candidates, the one the filter shows (None if none passed) and what it rejected, with causes."""
    arts = items.set_index("article_id").loc[cases["article_id"]].reset_index().to_dict("records")
    decoded = {}
    for name, decode in decoders.items():
        torch.manual_seed(seed)
        decoded[name] = generate(module, data, cases, decode, items=items, hist=hist, filt=filt)
    out = []
    for i, row in enumerate(cases.to_dict("records")):
        per_decoder = {}
        for name in decoders:
            chosen, rejected = decoded[name][i].selected
            per_decoder[name] = {"candidates": decoded[name][i].candidates, "chosen": chosen, "rejected": rejected}
        out.append({"customer_id": row["customer_id"], "day": row["t_dat"], "example": row, "article": arts[i],
                    "recent": recent_purchases(interactions, items, row["customer_id"], row["t_dat"], n_recent),
                    "silver": row["reason"], "decoders": per_decoder})
    return out
