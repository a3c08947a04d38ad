"""CLIP (option A loading, option B training) and the photo-embedding cache, on tiny fixtures."""
import json
import math
import re

import numpy as np
import open_clip
import pandas as pd
import pytest
import torch
from PIL import Image
from test_notebooks import assert_png_has_content

from mmreason import embed as E
from mmreason.features import clip, cliptrain, embed
from mmreason.io import sha256_file

MICRO = "mmr-test-micro"  # a test-only architecture: seconds on CPU
MICRO_CFG = {"embed_dim": 16,
             "vision_cfg": {"image_size": 32, "layers": 1, "width": 32, "head_width": 16, "patch_size": 16},
             "text_cfg": {"context_length": 16, "vocab_size": 49408, "width": 32, "heads": 1, "layers": 1}}
BROKEN = 103  # a training article whose JPEG is truncated
COLOURS = {"Red": (200, 30, 30), "Blue": (30, 30, 200), "Black": (10, 10, 10)}


@pytest.fixture(scope="module", autouse=True)
def micro_arch(tmp_path_factory):
    d = tmp_path_factory.mktemp("model_configs")
    (d / f"{MICRO}.json").write_text(json.dumps(MICRO_CFG))
    open_clip.add_model_config(d)
    clip.register_model_configs()


@pytest.fixture(scope="module")
def items(tmp_path_factory):
    """12 articles of 6 products (2 colour variants each), 2:3 photos; article BROKEN is a truncated JPEG."""
    d = tmp_path_factory.mktemp("photos")
    rows = []
    types = ["Dress", "Trousers", "Dress", "Trousers", "Dress", "Trousers"]
    splits = ["train", "train", "train", "train", "val", "test"]
    for p in range(6):
        for v, colour in enumerate(["Red", "Blue"] if p % 2 else ["Black", "Red"]):
            aid = 100 + 2 * p + v
            img = Image.new("RGB", (20, 30), COLOURS[colour])
            if types[p] == "Trousers":  # a crude silhouette so shape differs too
                img.paste((255, 255, 255), (8, 15, 12, 30))
            path = d / f"{aid:010d}.jpg"
            img.save(path, quality=95)
            rows.append({"article_id": aid, "product_code": 10 + p, "prod_name": f"{types[p]} {p}",
                         "product_type_name": types[p], "product_group_name": "Garment",
                         "graphical_appearance_name": "Solid", "colour_group_name": colour,
                         "garment_group_name": "Jersey", "index_group_name": "Ladieswear",
                         "detail_desc": f"A {colour.lower()} {types[p].lower()} in soft jersey.",
                         "photo_path": str(path), "has_photo": True, "split_unseen": splits[p]})
    broken = d / f"{BROKEN:010d}.jpg"
    broken.write_bytes(broken.read_bytes()[:200])  # truncated: the header parses, decoding fails
    df = pd.DataFrame(rows)
    extra = df.iloc[[0]].assign(article_id=199, photo_path="", has_photo=False)  # no photo at all
    return pd.concat([df, extra], ignore_index=True)


def micro_checkpoint(path, seed):
    torch.manual_seed(seed)
    model = open_clip.create_model(MICRO)
    torch.save(model.state_dict(), path)
    return model


def test_our_architectures_are_registered_with_open_clip():
    assert clip.DEFAULT_MODEL in open_clip.list_models()
    model, preprocess, tokenizer = clip.load_clip(clip.DEFAULT_MODEL)
    x = torch.zeros(2, 3, preprocess.size, preprocess.size)
    assert model.encode_image(x).shape[1] == model.encode_text(tokenizer(["a", "b"])).shape[1]


def test_preprocess_pads_portraits_to_a_white_square_like_open_clip():
    pp = clip.Preprocess(size=32, mean=open_clip.OPENAI_DATASET_MEAN, std=open_clip.OPENAI_DATASET_STD)
    img = Image.new("RGB", (20, 30), (200, 30, 30))  # 2:3 portrait
    x = pp.to_uint8(img)
    assert x.shape == (3, 32, 32) and x.dtype == torch.uint8
    assert (x[:, :, :4] == 255).all() and (x[:, :, -4:] == 255).all()  # white side bars, nothing cropped
    assert (x[:, :, 12:20] == torch.tensor([200, 30, 30]).view(3, 1, 1)).all()
    reference = pp.open_clip_transform()(img)  # open_clip's own resize_mode="longest", fill_color=255
    assert torch.allclose(pp.normalize(x[None])[0], reference, atol=1e-5)


def test_broken_photo_raises_photo_error(items):
    with pytest.raises(clip.PhotoError):
        clip.read_photo(items.loc[items.article_id == BROKEN, "photo_path"].item())


def test_option_a_loads_a_written_checkpoint(tmp_path):
    original = micro_checkpoint(tmp_path / "weights.bin", seed=3).eval()
    model, preprocess, tokenizer = clip.load_clip(MICRO, pretrained=tmp_path / "weights.bin")
    x, t = torch.randn(2, 3, 32, 32), tokenizer(["red dress", "blue trousers"])
    with torch.no_grad():
        assert torch.allclose(model.encode_image(x), original.encode_image(x))
        assert torch.allclose(model.encode_text(t), original.encode_text(t))
    assert preprocess.resize_mode == "longest" and preprocess.fill_color == 255 and preprocess.size == 32

    with pytest.raises(clip.ClipLoadError, match="could not load CLIP") as e:
        clip.load_clip(MICRO, pretrained="no-such-tag")
    assert "\n" not in str(e.value)


def test_domain_clip_trains_and_saves_in_open_clip_format(items, tmp_path, capsys):
    cfg = cliptrain.ClipTrainConfig(model=MICRO, epochs=2, batch_size=4, warmup_steps=1, workers=0)
    meta = cliptrain.train_clip(items, cfg, tmp_path / "clip")
    assert all(math.isfinite(h["train_loss"]) and math.isfinite(h["val_loss"]) for h in meta["history"])
    assert meta["n_train"] == 7  # 8 training articles, one unreadable
    assert f"(article_id={BROKEN})" in capsys.readouterr().err

    ckpt = tmp_path / "clip" / clip.CHECKPOINT_NAME
    assert meta["sha256"] == sha256_file(ckpt)
    by_name, pp, _ = clip.load_clip(MICRO, pretrained=ckpt)
    by_dir, _, _ = open_clip.create_model_and_transforms(f"local-dir:{tmp_path / 'clip'}")
    assert open_clip.get_model_preprocess_cfg(by_dir)["fill_color"] == 255
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.allclose(by_name.encode_image(x), by_dir.eval().encode_image(x))
    # same seed, same result
    again = cliptrain.train_clip(items, cfg, tmp_path / "clip2")
    assert again["history"][-1]["train_loss"] == pytest.approx(meta["history"][-1]["train_loss"], abs=1e-5)


def test_embedding_cache_reports_broken_photo_and_rebuilds_when_checkpoint_changes(items, tmp_path, capsys, monkeypatch):
    ckpt, path = tmp_path / "w.bin", tmp_path / "emb" / "micro.pt"
    micro_checkpoint(ckpt, seed=0)
    first = embed.load_embeddings(items, MICRO, ckpt, path, batch_size=5, workers=0)
    err = capsys.readouterr().err
    broken_path = items.loc[items.article_id == BROKEN, "photo_path"].item()
    assert f"unreadable photo: {broken_path} (article_id={BROKEN})" in err
    assert "1 articles have no photo" in err
    ids = set(first["article_id"].tolist())
    assert ids == set(items.article_id) - {BROKEN, 199}
    assert torch.allclose(first["embedding"].norm(dim=1), torch.ones(len(ids)), atol=1e-5)
    assert {s["article_id"] for s in first["skipped"]} == {BROKEN, 199}
    emb, has = embed.lookup(first, [100, BROKEN, 101])
    assert has.tolist() == [True, False, True] and (emb[1] == 0).all()

    with monkeypatch.context() as m:  # fresh cache: no recomputation
        m.setattr(embed, "compute_embeddings", lambda *a, **k: pytest.fail("cache should have been reused"))
        reused = embed.load_embeddings(items, MICRO, ckpt, path, workers=0)
    assert torch.equal(reused["embedding"], first["embedding"])

    micro_checkpoint(ckpt, seed=1)  # same file name, other weights -> stale
    capsys.readouterr()
    rebuilt = embed.load_embeddings(items, MICRO, ckpt, path, workers=0)
    assert "stale (checkpoint_sha256 changed)" in capsys.readouterr().out
    assert rebuilt["meta"]["checkpoint_sha256"] != first["meta"]["checkpoint_sha256"]
    assert not torch.allclose(rebuilt["embedding"], first["embedding"])
    assert torch.equal(embed.read_embeddings(path)["embedding"], rebuilt["embedding"])

    fewer = items[items.article_id != 100]  # the set of photos changed -> stale too
    assert "photos_sha256" in embed.stale_reason(rebuilt, embed.cache_meta(MICRO, ckpt, clip.Preprocess.from_model(
        clip.load_clip(MICRO, ckpt)[0]), fewer))


def test_embed_cli_trains_embeds_and_evaluates(items, tmp_path, capsys):
    items.to_parquet(tmp_path / "items.parquet")
    argv = ["--items", str(tmp_path / "items.parquet"), "--clip-model", MICRO, "--clip-dir", str(tmp_path / "clip"),
            "--out", str(tmp_path / "emb" / "micro.pt"), "--epochs", "1", "--batch-size", "4", "--workers", "1",
            "--threads", "1"]
    cache = E.main(argv)
    out = capsys.readouterr().out
    assert (tmp_path / "clip" / clip.CHECKPOINT_NAME).exists()
    assert cache["embedding"].shape == (11, MICRO_CFG["embed_dim"])
    ev = json.loads((tmp_path / "emb" / "micro.eval.json").read_text())
    r = ev["retrieval"]
    assert r["n"] == 1 and r["chance"]["R@1"] == 1.0  # one held-out test product in the fixture
    # majority of the 7 readable training photos (Red 4, Black 2, Blue 1; Dress 4, Trousers 3) on the two
    # test articles (a red and a blue pair of trousers)
    baselines = {t: (p["majority_class"], p["majority_baseline"], p["n_train"], p["n_test"])
                 for t, p in ev["linear_probe"].items()}
    assert baselines == {"colour_group_name": ("Red", 0.5, 7, 2), "product_type_name": ("Dress", 0.0, 7, 2)}
    for target in embed.PROBE_TARGETS:  # plain-colour photos, trousers with a white patch: easy to probe
        p = ev["linear_probe"][target]
        assert p["accuracy"] > p["majority_baseline"], target  # 1.0 for CLIP seeds 0-4
    assert "linear probe colour_group_name" in out and "image_to_text" in out

    E.main(argv)  # second run: checkpoint and cache are reused
    out = capsys.readouterr().out
    assert "embed: reusing" in out and "epoch 1/1" not in out


def test_retrieval_is_skipped_not_crashed_when_no_held_out_product_has_a_photo(items, tmp_path):
    from mmreason.evaluation import plots
    cache = {"article_id": torch.tensor([100, 101]), "embedding": torch.randn(2, 16)}  # train articles only
    r = embed.retrieval(None, None, cache, items)  # the model is never reached: there is nothing to encode
    assert r["n"] == 0 and r["image_to_text"] == {} and r["chance"] == {}
    ev = {"retrieval": r, "linear_probe": {"colour_group_name": {
        "accuracy": 0.5, "majority_baseline": 0.4, "majority_class": "Red", "points_above_majority": 10.0,
        "n_train": 8, "n_test": 2}}}
    assert "retrieval: skipped" in embed.format_evaluation(ev)[0]
    fig = plots.clip_evidence({"eval": ev})
    history, retrieval, probes = fig.axes
    assert not history.patches and not history.get_lines() and not retrieval.patches  # notes, no data
    assert any("no held-out product" in t.get_text() for t in retrieval.texts)
    assert [p.get_height() for p in probes.patches] == [0.5, 0.4]  # probe beside the majority class
    assert_png_has_content(plots.save(fig, tmp_path / "clip.png"))


def _planted(items, signal):
    """A cache of one-hot "photo embeddings": ``signal(row)`` picks the hot dimension of each article."""
    rows = items[items["has_photo"]]
    return {"article_id": torch.tensor(rows["article_id"].to_numpy()),
            "embedding": torch.nn.functional.one_hot(torch.tensor([signal(r) for r in rows.to_dict("records")]),
                                                     16).float()}


def test_linear_probe_beats_the_majority_only_when_embeddings_carry_the_attribute(items):
    colour = {c: i for i, c in enumerate(COLOURS)}
    p = embed.linear_probe(_planted(items, lambda r: colour[r["colour_group_name"]]), items, "colour_group_name")
    assert (p["majority_class"], p["majority_baseline"], p["n_train"], p["n_test"]) == ("Red", 0.5, 8, 2)
    assert p["accuracy"] == 1.0 and p["points_above_majority"] == 50.0
    blind = embed.linear_probe(_planted(items, lambda r: 0), items, "colour_group_name")  # every photo the same
    assert blind["accuracy"] == blind["majority_baseline"] == 0.5


def test_retrieval_finds_each_held_out_product_by_its_own_text(items, monkeypatch):
    items = items.assign(split_unseen=np.where(items["product_code"] >= 12, "test", "train"))  # products 2-5
    cache = _planted(items, lambda r: r["product_code"] - 10)

    def texts_naming(shift):  # a text tower that reads "<type> <p>." as product 2 + (p - 2 + shift) % 4
        def encode(model, tokenizer, texts):
            codes = [2 + (int(re.match(r"\w+ (\d)\.", t).group(1)) - 2 + shift) % 4 for t in texts]
            return torch.nn.functional.one_hot(torch.tensor(codes), 16).float()
        return encode

    monkeypatch.setattr(embed, "encode_texts", texts_naming(0))
    r = embed.retrieval(None, None, cache, items)
    assert r["n"] == 4 and r["chance"] == {"R@1": 0.25, "R@5": 1.0, "R@10": 1.0}
    assert r["image_to_text"]["R@1"] == r["text_to_image"]["R@1"] == 1.0
    monkeypatch.setattr(embed, "encode_texts", texts_naming(1))  # every text points at another product
    r = embed.retrieval(None, None, cache, items)
    assert r["image_to_text"]["R@1"] == r["text_to_image"]["R@1"] == 0.0


def test_lookup_finds_each_id_in_the_asked_order():
    """``embed.lookup``: rows in the order asked (repeats, ids absent, ids below and above every cached one), zero
    rows where there is no embedding; an empty cache has none."""
    cache = {"article_id": torch.tensor([30, 10, 20]), "embedding": torch.tensor([[3.0, 0], [1.0, 0], [2.0, 0]])}
    emb, has = embed.lookup(cache, [20, 5, 30, 10, 20, 99, 25])
    assert has.tolist() == [True, False, True, True, True, False, False]
    assert emb[:, 0].tolist() == [2.0, 0.0, 3.0, 1.0, 2.0, 0.0, 0.0]
    emb, has = embed.lookup({"article_id": torch.zeros(0, dtype=torch.long), "embedding": torch.zeros(0, 2)}, [1, 2])
    assert emb.shape == (2, 2) and not has.any()
