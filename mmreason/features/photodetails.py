"""What a product photo says about the details a copy states, and a retriever that listens to it.

The shown copy is most often a neighbour's (``retrieval.py``): the nearest training product by attribute
text, own type first. The filter holds its colour, type and pattern to the catalogue, but not its sleeves,
neckline or fabric, which the catalogue does not record: over a quarter of shown copies state one the
article's own copy contradicts (``metrics.detail_agreement``). The photo shows them.

``DetailProbe``: per facet of ``metrics.DETAIL_FACETS`` one softmax over its values on the ImageNet
photo features (``photonet.py``), standardised; trained on the datastore's rows (training products only)
whose copy states exactly one value of that facet, the copy read by ``metrics.stated_details``. No held-out
product's copy is read.

``vetted_copies``: among an article's ``k`` nearest distinct copies (``retrieval.nearest``, ``by``) of the
nearest one's product type, the first whose every stated value the probe gives at least ``tau`` for this
photo; the nearest where none does, or where the article has no photo. With a ``weight`` the candidates are
first ordered by text score + weight x the photos' cosine (``photochoice.py``). Measured on unseen products (``python -m mmreason.retrieval``).

``ensure_offers``: that copy, re-ranked by the photo (``photochoice.WEIGHT``) and vetted, for every article
of the tables, in a keyed file: what a run that sees the photo offers after its hook (``shown.py``), with its
probe kept beside it (``ensure_probe``); ``new_offers``: the same choice for articles outside the tables.
"""
from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from mmreason import paths
from mmreason.features import retrieval as R
from mmreason.features.embed import lookup
from mmreason.features.photochoice import WEIGHT, Candidates, candidates, photo_cosines, reorder
from mmreason.io import atomic_dir, atomic_write_json, fingerprint
from mmreason.metrics import DETAIL_FACETS, IMPLIED_BY, stated_details

TAU = 0.05  # a stated value the photo gives less than this is vetoed; chosen on validation (README)
K = 8       # distinct copies considered, best first


@dataclass
class DetailProbe:
    values: dict[str, list[str]]          # facet -> its values, in the heads' order
    mean: torch.Tensor                    # (D,) feature standardisation
    std: torch.Tensor                     # (D,)
    weight: dict[str, torch.Tensor]       # facet -> (V, D)
    bias: dict[str, torch.Tensor]         # facet -> (V,)
    trained_on: dict[str, int]            # facet -> copies it was trained on

    def probs(self, feats: torch.Tensor) -> dict[str, torch.Tensor]:
        """(N, D) photo features -> facet -> (N, V) probabilities of each value, given the facet is stated."""
        z = (feats.float() - self.mean) / self.std
        return {f: (z @ self.weight[f].T + self.bias[f]).softmax(-1) for f in self.values}

    def vetoes(self, details: dict[str, set[str]], probs: dict[str, torch.Tensor], row: int,
               tau: float = TAU) -> bool:
        """Does the photo (row ``row`` of ``probs``) give a value these ``details`` state less than ``tau``? A
        generic fabric gets its own probability and those of the fabrics that imply it (``metrics.IMPLIED_BY``:
        "woven fabric" is true of a satin blouse), as the metric holds a copy to them."""
        def prob(f: str, v: str) -> float:
            held = {v} | (IMPLIED_BY.get(v, set()) if f == "fabric" else set())
            return sum(float(probs[f][row, i]) for i, u in enumerate(self.values[f]) if u in held)
        return any(prob(f, v) < tau for f, vs in details.items() if f in self.values for v in vs)


@torch.enable_grad()  # also under torch.no_grad: a shown reason builds the offers table lazily (Artifacts.photo_offers)
def train_probe(feats: torch.Tensor, copies: list[str], steps: int = 300, lr: float = 1e-3,
                weight_decay: float = 1e-2, seed: int = 0) -> DetailProbe:
    """Fit each facet's softmax on the rows whose copy states exactly one of its values (full batch, AdamW)."""
    if len(feats) != len(copies):
        raise ValueError(f"{len(feats)} feature rows for {len(copies)} copies")
    gen = torch.Generator().manual_seed(seed)
    feats = feats.float()
    mean, std = feats.mean(0), feats.std(0) + 1e-6
    z = (feats - mean) / std
    details = [stated_details(c) for c in copies]
    values, weight, bias, trained_on = {}, {}, {}, {}
    for facet, vals in DETAIL_FACETS.items():
        vals = sorted(vals)
        rows = [(i, vals.index(next(iter(d[facet])))) for i, d in enumerate(details)
                if facet in d and len(d[facet]) == 1]
        if not rows:
            continue
        x, y = z[[i for i, _ in rows]], torch.tensor([c for _, c in rows])
        lin = torch.nn.Linear(z.shape[1], len(vals))
        with torch.no_grad():
            lin.weight.normal_(0, 0.01, generator=gen)
            lin.bias.zero_()
        opt = torch.optim.AdamW(lin.parameters(), lr=lr, weight_decay=weight_decay)
        for _ in range(steps):
            opt.zero_grad()
            torch.nn.functional.cross_entropy(lin(x), y).backward()
            opt.step()
        values[facet], trained_on[facet] = vals, len(rows)
        weight[facet], bias[facet] = lin.weight.detach().clone(), lin.bias.detach().clone()
    return DetailProbe(values, mean, std, weight, bias, trained_on)


def store_probe(store: R.Datastore, cache: dict, **kw) -> DetailProbe:
    """The probe trained on the datastore's rows that have a photo (``cache``: ``photonet.load_features``)."""
    feats, has = lookup(cache, store.article_id.tolist())
    keep = has.numpy()
    return train_probe(feats[has], [c for c, k in zip(store.copy, keep) if k], **kw)


PROBE, PROBE_FILE = "probe", "probe.pt"
PROBE_VERSION = 1  # bump when train_probe or store_probe changes


def ensure_probe(store: R.Datastore, cache: dict) -> DetailProbe:
    """``store_probe``, from its keyed file or trained and written there (``artifacts/retrieval/probe-<key>/
    probe.pt``, keyed by the store and the photo features): the offers table's probe, kept for the articles
    outside it (``new_offers``)."""
    meta = {"version": PROBE_VERSION, "store": fingerprint(store.meta), "features": fingerprint(cache["meta"])}
    d = paths.keyed(paths.artifacts_dir() / "retrieval", PROBE, fingerprint(meta)[:10])
    if (d / PROBE_FILE).exists():
        return DetailProbe(**torch.load(d / PROBE_FILE, map_location="cpu", weights_only=True))
    probe = store_probe(store, cache)
    with atomic_dir(d) as tmp:
        torch.save(asdict(probe), tmp / PROBE_FILE)
        atomic_write_json(tmp / "meta.json", meta)
    return probe


def vetted_copies(store: R.Datastore, articles: pd.DataFrame, probe: DetailProbe, cache: dict, by: str = "text_type",
                  k: int = K, tau: float = TAU, encoder=None, cand: Candidates | None = None,
                  weight: float = 0.0) -> tuple[list[str], float]:
    """Per article the first of its ``k`` nearest distinct copies (of the nearest one's type) the photo does not
    veto (``DetailProbe.vetoes``), else the first; and the share of articles whose copy is not the text's nearest.
    ``weight`` > 0 first orders them by text score + ``weight`` x photo cosine (``photochoice.reorder``); ``cand``
    (``photochoice.candidates``) replaces the ``k`` nearest by ``by``."""
    cand = cand if cand is not None else candidates(store, articles, k, by, encoder)
    if len(cand.copies) != len(articles):
        raise ValueError(f"candidates for {len(cand.copies)} articles, {len(articles)} given")
    nearest = [copies[0] for copies in cand.copies]
    if weight:
        cand = reorder(cand, photo_cosines(store, articles, cand, cache), weight)
    feats, has = lookup(cache, articles["article_id"].tolist())
    probs = probe.probs(feats)
    out = []
    for r, copies in enumerate(cand.copies):
        pick = copies[0]
        if has[r]:
            pick = next((c for c in copies if not probe.vetoes(stated_details(c), probs, r, tau)), copies[0])
        out.append(pick)
    return out, float(np.mean([p != n for p, n in zip(out, nearest)])) if out else 0.0


OFFERS, OFFERS_FILE = "offers", "offers.parquet"
OFFERS_VERSION = 2  # bump when the probe's training or the choice changes (2: a generic fabric's veto, IMPLIED_BY)


def ensure_offers(store: R.Datastore, items: pd.DataFrame, cache: dict, weight: float = WEIGHT, k: int = K,
                  tau: float = TAU, encoder=None) -> tuple[dict[int, str], Path]:
    """``vetted_copies`` (re-ranked by the photo with ``weight``) of every article in the tables, with the probe
    trained on the store (``store_probe``), from its keyed file or computed and written there
    (``artifacts/retrieval/offers-<key>/offers.parquet``, keyed by the store, the articles, the photo features
    (``cache``: ``photonet.load_features``), k, tau and weight). -> ({article_id: copy}, the file)."""
    meta = {"version": OFFERS_VERSION, "store": fingerprint(store.meta), "items_sha256": R.items_sha256(items),
            "features": fingerprint(cache["meta"]), "k": k, "tau": tau, "weight": weight}
    d = paths.keyed(paths.artifacts_dir() / "retrieval", OFFERS, fingerprint(meta)[:10])
    f = d / OFFERS_FILE
    if not f.exists():
        print(f"photodetails: choosing the photo's copy of {len(items):,} articles, once (minutes on a CPU; "
              f"then read from {paths.shown(f)})")
        t0 = time.time()
        copies, changed = vetted_copies(store, items, ensure_probe(store, cache), cache, k=k, tau=tau,
                                        encoder=encoder, weight=weight)
        with atomic_dir(d) as tmp:
            pd.DataFrame({"article_id": items["article_id"].to_numpy(np.int64), "copy": copies}).to_parquet(
                tmp / OFFERS_FILE, index=False)
            atomic_write_json(tmp / "meta.json", meta | {"changed_by_photo": round(changed, 4),
                                                         "seconds": round(time.time() - t0, 1)})
        print(f"photodetails: the photo's copy of {len(items):,} articles ({changed:.1%} not the text's nearest) "
              f"-> {f} in {time.time() - t0:.0f}s")
    df = pd.read_parquet(f)
    return dict(zip(df["article_id"].astype(int), df["copy"].astype(str))), f


def new_offers(store: R.Datastore, articles: pd.DataFrame, features: dict, cache: dict, weight: float = WEIGHT,
               k: int = K, tau: float = TAU, encoder=None, probe: DetailProbe | None = None) -> list[str]:
    """``ensure_offers``' choice for articles outside the tables (``explain``'s new articles): ``features`` their
    photo features ({"article_id", "embedding"}: ``photonet.compute_features``; an article without one keeps the
    text's order, unvetted), ``cache`` the catalogue's (``photonet.load_features``), ``probe`` the table's
    (``ensure_probe``, read here when not given)."""
    ids = torch.tensor(articles["article_id"].astype("int64").tolist(), dtype=torch.long)
    keep = ~torch.isin(torch.as_tensor(cache["article_id"], dtype=torch.long), ids)  # these ids are the new ones
    both = {"article_id": torch.cat([torch.as_tensor(cache["article_id"], dtype=torch.long)[keep],
                                     torch.as_tensor(features["article_id"], dtype=torch.long)]),
            "embedding": torch.cat([cache["embedding"][keep].float(), features["embedding"].float()])}
    return vetted_copies(store, articles, probe or ensure_probe(store, cache), both, k=k, tau=tau, encoder=encoder,
                         weight=weight)[0]
