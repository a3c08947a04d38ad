"""Photo embeddings for every article, cached in one file per CLIP, plus evidence that they mean something.

    python -m mmreason.embed      # domain CLIP (trained first if missing) -> artifacts/embeddings/mmr-vit-tiny-<key>.pt
    python -m mmreason.embed --clip-model ViT-B-32 --pretrained /path/to/open_clip_pytorch_model.bin

Each cache file is keyed by its ``meta`` (``<model-id>-<key>.pt``; ``<model-id>.pt`` links to the newest),
so caches of different CLIPs never overwrite each other. The cache is ``{"article_id": LongTensor (N,), "embedding": FloatTensor (N, D) L2-normalised,
"meta": {...}, "skipped": [...], "seconds": float}``. ``meta`` names the CLIP (architecture, checkpoint sha256) and the
preprocessing (pad-to-square, resolution, mean/std) and the set of photos; a change in any of it
means another key, hence another file. Articles without a readable photo get no row (the
generator uses its learned no-photo embedding for them); each unreadable file is reported in one line.

Evidence, printed and saved next to the cache as ``<model-id>-<key>.eval.json``: image<->text recall@k on
held-out products (split_unseen == "test", one article per product_code) beside chance k/N, and
linear-probe accuracy (frozen photo embeddings, trained on split_unseen == "train" articles, tested
on all held-out test articles) for colour and product type beside the majority-class baseline.
"""
from __future__ import annotations

import hashlib
import re
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from mmreason import paths
from mmreason.features.clip import (
    CHECKPOINT_NAME,
    DEFAULT_MODEL,
    default_clip_dir,
    encode_texts,
    iter_photo_batches,
    load_clip,
    product_texts,
    torch_bytes,
)
from mmreason.features.cliptrain import one_per_product, recall_at_k
from mmreason.io import atomic_write_bytes, fingerprint, sha256_file

PROBE_TARGETS = ["colour_group_name", "product_type_name"]
CACHE_VERSION = 1


def domain_checkpoint(model_name: str) -> Path:
    """The newest domain CLIP of this architecture (through the ``artifacts/clip/<model>`` link)."""
    return default_clip_dir(model_name) / CHECKPOINT_NAME


def is_domain_checkpoint(pretrained) -> bool:
    """A domain CLIP we trained: a checkpoint file in a folder of ``artifacts/clip/`` (its weights are keyed there)."""
    p = Path(str(pretrained))
    return p.name == CHECKPOINT_NAME and p.resolve().parent.parent == (paths.artifacts_dir() / "clip").resolve()


def model_id(model_name: str, pretrained: str | Path | None = None) -> str:
    """File-name id of a photo encoder: the architecture, plus the weights' name for option A."""
    if pretrained is None or is_domain_checkpoint(pretrained):
        return model_name
    p = Path(str(pretrained))
    tag = f"{p.parent.name}-{p.stem}" if p.suffix else str(pretrained)
    return f"{model_name}__{re.sub(r'[^A-Za-z0-9._-]+', '-', tag).strip('-')}"


def default_cache_path(mid: str) -> Path:
    """The newest cache of this encoder (a link to its keyed file, see ``keyed_cache_path``)."""
    return paths.artifacts_dir() / "embeddings" / f"{mid}.pt"


def keyed_cache_path(mid: str, meta: dict) -> Path:
    """``artifacts/embeddings/<mid>-<key>.pt``: keyed by the meta (CLIP checkpoint hash, photos, preprocessing)."""
    return paths.keyed(paths.artifacts_dir() / "embeddings", mid, fingerprint(meta)[:10], ".pt")


def content_sha256(cache: dict) -> str:
    """What a run depends on in a cache: its article ids and vectors (not the timing it also stores)."""
    h = hashlib.sha256(cache["article_id"].numpy().tobytes())
    h.update(cache["embedding"].float().contiguous().numpy().tobytes())
    return h.hexdigest()


def photos_fingerprint(items: pd.DataFrame) -> str:
    """Which photo each article has: a new, removed or moved photo makes the cache stale."""
    h = hashlib.sha256()
    for aid, path in zip(items["article_id"].astype("int64"), items["photo_path"].fillna("")):
        h.update(f"{aid}\t{path}\n".encode())
    return h.hexdigest()


def cache_meta(model_name: str, pretrained, preprocess, items: pd.DataFrame) -> dict:
    is_file = pretrained is not None and Path(str(pretrained)).is_file()
    return {
        "version": CACHE_VERSION,
        "model": model_name,
        "pretrained": Path(str(pretrained)).name if is_file else pretrained,  # a file is known by its hash
        "checkpoint_sha256": sha256_file(pretrained) if is_file else None,
        "preprocess": preprocess.as_dict(),
        "normalised": "l2",
        "n_items": int(len(items)),
        "photos_sha256": photos_fingerprint(items),
    }


@torch.no_grad()
def compute_embeddings(model, preprocess, items: pd.DataFrame, batch_size: int = 256, workers: int = 2):
    """L2-normalised photo embeddings of every article with a readable photo.

    Returns (article_id LongTensor (M,), embedding FloatTensor (M, D), skipped list of dicts).
    """
    model.eval()
    has = items["has_photo"].astype(bool).to_numpy() & (items["photo_path"].fillna("") != "").to_numpy()
    skipped = [{"article_id": int(a), "photo_path": "", "error": "no photo"}
               for a in items.loc[~has, "article_id"]]
    if skipped:
        print(f"embed: {len(skipped)} articles have no photo (has_photo is False): no embedding", file=sys.stderr)
    rows = items.loc[has, ["article_id", "photo_path"]].reset_index(drop=True)
    ids, embs = [], []
    for start, x, ok, err in iter_photo_batches(rows["photo_path"], preprocess, batch_size, workers, desc="embed photos"):
        for j in np.flatnonzero(~ok.numpy()):
            aid, path = int(rows.at[start + j, "article_id"]), rows.at[start + j, "photo_path"]
            print(f"unreadable photo: {path} (article_id={aid}): {err[j]}; no embedding", file=sys.stderr)
            skipped.append({"article_id": aid, "photo_path": path, "error": err[j]})
        if ok.any():
            embs.append(model.encode_image(preprocess.normalize(x[ok]), normalize=True).float())
            ids.append(torch.as_tensor(rows["article_id"].to_numpy()[start:start + len(x)][ok.numpy()], dtype=torch.long))
    dim = int(model.visual.output_dim) if hasattr(model.visual, "output_dim") else 0
    article_id = torch.cat(ids) if ids else torch.zeros(0, dtype=torch.long)
    embedding = torch.cat(embs) if embs else torch.zeros(0, dim)
    return article_id, embedding, skipped


def read_embeddings(path: str | Path) -> dict:
    """The cache as saved: {"article_id", "embedding", "meta", "skipped"}."""
    return torch.load(path, map_location="cpu", weights_only=True)


def lookup(cache: dict, article_ids) -> tuple[torch.Tensor, torch.Tensor]:
    """Embeddings for ``article_ids`` in that order: (N, D) with zero rows where there is none, has (N,)."""
    ids = torch.as_tensor(cache["article_id"], dtype=torch.long)
    want = torch.as_tensor([int(a) for a in article_ids], dtype=torch.long)
    out = torch.zeros(len(want), cache["embedding"].shape[1])
    if not len(ids):
        return out, torch.zeros(len(want), dtype=torch.bool)
    # a binary search in the sorted ids: a server looks up one article per request, and building a dict of
    # every id cost ~4 ms per call (17k ids); a sort costs a fraction of that
    srt, order = ids.sort(stable=True)
    at = torch.searchsorted(srt, want).clamp(max=len(srt) - 1)
    has = srt[at] == want
    out[has] = cache["embedding"][order[at[has]]]
    return out, has


def stale_reason(cache: dict | None, meta: dict) -> str | None:
    if cache is None:
        return "no cache"
    old = cache.get("meta", {})
    diff = [k for k in sorted(set(old) | set(meta)) if old.get(k) != meta.get(k)]
    return f"stale ({', '.join(diff)} changed)" if diff else None


def cached_embeddings(path: Path, meta: dict, compute, rebuild: bool = False, tag: str = "embed") -> dict:
    """The cache at ``path`` if it was made with ``meta``; else ``compute()`` -> (article_id, embedding, skipped),
    written there with ``meta`` and its time. One line says which, prefixed with ``tag``."""
    cache = read_embeddings(path) if path.exists() and not rebuild else None
    why = "rebuild requested" if rebuild else stale_reason(cache, meta)
    if why is None:
        print(f"{tag}: reusing {paths.shown(path)} ({len(cache['article_id']):,} x {cache['embedding'].shape[1]})")
        return cache
    print(f"{tag}: computing {path.name}: {why}")
    t0 = time.time()
    article_id, embedding, skipped = compute()
    dt = time.time() - t0
    cache = {"article_id": article_id, "embedding": embedding, "meta": meta, "skipped": skipped, "seconds": round(dt, 1)}
    atomic_write_bytes(path, torch_bytes(cache))
    print(f"{tag}: {len(article_id):,} photos -> {tuple(embedding.shape)} in {dt:.0f}s "
          f"({len(article_id) / max(dt, 1e-9):.0f} img/s), {len(skipped)} skipped; wrote {paths.shown(path)}")
    return cache


def load_embeddings(items: pd.DataFrame, model_name: str = DEFAULT_MODEL, pretrained: str | None = None,
                    path: str | Path | None = None, *, batch_size: int = 256, workers: int = 2,
                    rebuild: bool = False, clip=None) -> dict:
    """The embedding cache for this CLIP and these items, recomputed if missing or stale.

    ``pretrained`` defaults to the newest domain CLIP (``artifacts/clip/<model_name>``); it must exist
    (``python -m mmreason.embed`` trains it). ``clip`` = (model, preprocess, tokenizer) skips reloading.
    By default the cache goes to its keyed file (``keyed_cache_path``) and ``<mid>.pt`` links to it;
    the returned dict's ``"path"`` says which file it is.
    """
    if pretrained is None:
        pretrained = domain_checkpoint(model_name)
        if not pretrained.exists():
            raise FileNotFoundError(f"no domain CLIP at {pretrained}: run `python -m mmreason.embed` to train it")
    model, preprocess, _ = clip or load_clip(model_name, pretrained)
    meta = cache_meta(model_name, pretrained, preprocess, items)
    mid, keyed = model_id(model_name, pretrained), path is None
    path = Path(path) if path else keyed_cache_path(mid, meta)
    cache = cached_embeddings(path, meta, lambda: compute_embeddings(model, preprocess, items, batch_size, workers),
                              rebuild)
    if keyed:
        paths.point_latest(default_cache_path(mid), path)
    return cache | {"path": str(path)}


# ----------------------------------------------------------------------------- evidence

def linear_probe(cache: dict, items: pd.DataFrame, target: str, seed: int = 0, max_iter: int = 500) -> dict:
    """Logistic regression on frozen photo embeddings: train products -> held-out test products."""
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler
    from threadpoolctl import threadpool_limits

    out = {}
    sets = {}
    for split in ("train", "test"):
        df = items[items["split_unseen"] == split]
        x, has = lookup(cache, df["article_id"])
        sets[split] = (x[has].numpy(), df[target].to_numpy()[has.numpy()])
    (x_tr, y_tr), (x_te, y_te) = sets["train"], sets["test"]
    majority = pd.Series(y_tr).value_counts().index[0]
    clf = make_pipeline(StandardScaler(), LogisticRegression(max_iter=max_iter, tol=1e-3, random_state=seed))
    t0 = time.time()
    # one BLAS thread: lbfgs on 2 cores shared with torch threads is ~4x slower, not faster
    with threadpool_limits(1), warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        clf.fit(x_tr, y_tr)
    out.update({
        "accuracy": float((clf.predict(x_te) == y_te).mean()),
        "majority_baseline": float((y_te == majority).mean()),
        "majority_class": str(majority),
        "n_train": int(len(y_tr)), "n_test": int(len(y_te)),
        "n_classes_train": int(len(set(y_tr))), "test_classes_unseen_in_train": int(len(set(y_te) - set(y_tr))),
        "lbfgs_iterations": int(clf[-1].n_iter_.max()), "seconds": round(time.time() - t0, 1),
    })
    out["points_above_majority"] = round(100 * (out["accuracy"] - out["majority_baseline"]), 1)
    return out


@torch.no_grad()
def retrieval(model, tokenizer, cache: dict, items: pd.DataFrame, desc_words: int = 12, ks=(1, 5, 10)) -> dict:
    """Image->text and text->image recall@k over held-out test products, one article per product_code."""
    test = items[items["split_unseen"] == "test"]
    _, has = lookup(cache, test["article_id"])
    gallery = one_per_product(test[has.numpy()])
    about = "split_unseen == 'test', one article (lowest article_id) per product_code"
    if gallery.empty:  # no held-out product has an embedded photo: nothing to retrieve
        return {"gallery": about, "n": 0, "image_to_text": {}, "text_to_image": {}, "chance": {}}
    img, _ = lookup(cache, gallery["article_id"])
    txt = encode_texts(model, tokenizer, product_texts(gallery, desc_words)).float()
    sim = img @ txt.T  # (N images, N texts), the match on the diagonal
    n = len(gallery)
    return {"gallery": about, "n": n, "image_to_text": recall_at_k(sim, ks), "text_to_image": recall_at_k(sim.T, ks),
            "chance": {f"R@{k}": min(1.0, k / n) for k in ks}}


def evaluate(model, tokenizer, cache: dict, items: pd.DataFrame, desc_words: int = 12) -> dict:
    t0 = time.time()
    out = {"retrieval": retrieval(model, tokenizer, cache, items, desc_words),
           "linear_probe": {t: linear_probe(cache, items, t) for t in PROBE_TARGETS}}
    out["seconds"] = round(time.time() - t0, 1)
    return out


def format_evaluation(ev: dict) -> list[str]:
    r = ev["retrieval"]
    lines = [f"retrieval on {r['n']} held-out products (one article per product_code):" if r["n"] else
             "retrieval: skipped, no held-out test product has an embedded photo"]
    for name in ("image_to_text", "text_to_image"):
        cells = [f"{k} {v:.3f} ({v / r['chance'][k]:.0f}x chance {r['chance'][k]:.3f})" for k, v in r[name].items()]
        lines.append(f"  {name}: " + ", ".join(cells))
    for t, p in ev["linear_probe"].items():
        lines.append(f"linear probe {t}: accuracy {p['accuracy']:.3f} vs majority {p['majority_baseline']:.3f} "
                     f"({p['majority_class']!r}): {p['points_above_majority']:+.1f} points "
                     f"({p['n_train']:,} train / {p['n_test']:,} held-out test articles)")
    return lines
