"""CLIP photo encoders, built and loaded through open_clip.

Option A: any open_clip architecture with a ``pretrained`` tag or a local checkpoint file
(``load_clip("ViT-B-32", pretrained="/path/open_clip_pytorch_model.bin")``).
Option B (default): a tiny domain CLIP described by ``mmreason/model_configs/<name>.json`` (registered
with ``open_clip.add_model_config``), trained here contrastively (``open_clip.loss.ClipLoss``) on
(photo, product text) pairs of training products only; validation products are whole held-out
product codes. The checkpoint is a plain open_clip state_dict.

Photos are 2:3 portraits: every encoder pads them to a square with white (H&M's studio background is
light) before resizing, i.e. open_clip's ``resize_mode="longest"`` with ``fill_color=255``.

    python -m mmreason.clip                  # train artifacts/clip/mmr-vit-tiny-<key>/ (~6 min on 2 cores)
    python -m mmreason.clip --epochs 1 --max-train 512
"""
from __future__ import annotations

import argparse
import hashlib
import io
import json
import math
import os
import random
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from mmreason import paths
from mmreason.io import atomic_write_bytes, atomic_write_json, fingerprint

MODEL_CONFIG_DIR = Path(__file__).resolve().parent / "model_configs"
DEFAULT_MODEL = "mmr-vit-tiny"
CHECKPOINT_NAME = "open_clip_pytorch_model.bin"  # the name open_clip itself looks for in a local dir
META_NAME = "clip_meta.json"
WHITE = 255


def register_model_configs() -> None:
    """Make our architecture JSONs visible to ``open_clip.create_model*`` and ``list_models()``."""
    import open_clip

    if DEFAULT_MODEL not in open_clip.list_models():
        open_clip.add_model_config(MODEL_CONFIG_DIR)


def default_clip_dir(model_name: str = DEFAULT_MODEL) -> Path:
    return paths.artifacts_dir() / "clip" / model_name


def items_fingerprint(items: pd.DataFrame) -> str:
    """A content hash of the items table the CLIP is trained on (the same on every machine)."""
    rows = pd.util.hash_pandas_object(items.astype(str), index=False).to_numpy()
    return hashlib.sha256(rows.tobytes() + "\0".join(map(str, items.columns)).encode()).hexdigest()


def domain_clip_dir(items: pd.DataFrame, cfg: "ClipTrainConfig") -> Path:
    """``artifacts/clip/<model>-<key>``, keyed by the settings that change the weights and by the items."""
    key = fingerprint(_result_fields(asdict(cfg)), items_fingerprint(items))[:10]
    return paths.keyed(paths.artifacts_dir() / "clip", cfg.model, key)


def sha256_file(path: str | os.PathLike) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def torch_bytes(obj) -> bytes:
    buf = io.BytesIO()
    torch.save(obj, buf)
    return buf.getvalue()


# ----------------------------------------------------------------------------- photos

class PhotoError(RuntimeError):
    """A photo file that cannot be opened or decoded."""


def read_photo(path: str | os.PathLike, max_side: int | None = None):
    """Open and fully decode one photo as RGB (a truncated JPEG fails here, not later).

    ``max_side``: the photo will be shrunk so its longest side is this; let the JPEG decoder skip the
    detail that would be thrown away (DCT scaling, never below the final size): ~3x faster at 64 px.
    """
    from PIL import Image

    try:
        with Image.open(path) as img:
            if max_side and img.format == "JPEG":
                w, h = img.size
                r = max_side / max(w, h)
                img.draft("RGB", (math.ceil(w * r), math.ceil(h * r)))
            img.load()
            return img.convert("RGB")
    except Exception as e:  # OSError, PIL.UnidentifiedImageError, ...
        raise PhotoError(f"{type(e).__name__}: {e}") from e


@dataclass(frozen=True)
class Preprocess:
    """open_clip's inference transform with pad-to-square, split so photos can be cached as uint8.

    ``normalize(to_uint8(img))`` equals ``open_clip.image_transform(size, False, mean, std,
    resize_mode="longest", fill_color=255)(img)``: resize the long side to ``size``, pad with white.
    """
    size: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    interpolation: str = "bicubic"
    resize_mode: str = "longest"
    fill_color: int = WHITE

    @classmethod
    def from_model(cls, model) -> "Preprocess":
        cfg = model.visual.preprocess_cfg
        size = cfg["size"] if isinstance(cfg["size"], int) else cfg["size"][0]
        return cls(size=int(size), mean=tuple(cfg["mean"]), std=tuple(cfg["std"]),
                   interpolation=cfg.get("interpolation", "bicubic"))

    def open_clip_transform(self):
        from open_clip import image_transform

        return image_transform(self.size, is_train=False, mean=self.mean, std=self.std,
                               resize_mode=self.resize_mode, interpolation=self.interpolation,
                               fill_color=self.fill_color)

    def to_uint8(self, img) -> torch.Tensor:
        """PIL image -> (3, S, S) uint8, padded to a square."""
        from open_clip.transform import CenterCropOrPad, ResizeKeepRatio
        from torchvision.transforms import InterpolationMode
        from torchvision.transforms.functional import pil_to_tensor

        assert self.resize_mode == "longest", self.resize_mode
        mode = InterpolationMode.BILINEAR if self.interpolation == "bilinear" else InterpolationMode.BICUBIC
        img = ResizeKeepRatio(self.size, longest=1, interpolation=mode)(img.convert("RGB"))
        img = CenterCropOrPad(self.size, fill=self.fill_color)(img)
        return pil_to_tensor(img)

    def normalize(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 3, S, S) uint8 -> float, normalised with the model's mean/std."""
        mean = torch.tensor(self.mean, device=x.device).view(1, 3, 1, 1)
        std = torch.tensor(self.std, device=x.device).view(1, 3, 1, 1)
        return (x.float() / 255.0 - mean) / std

    def as_dict(self) -> dict:
        d = asdict(self)
        d["pad_to_square"] = True
        d["jpeg_draft"] = True  # see read_photo
        return d


class PhotoDataset(torch.utils.data.Dataset):
    """Photos as (3, S, S) uint8; an unreadable one yields zeros, ok=False and the error text."""

    def __init__(self, photo_paths, preprocess: Preprocess):
        self.photo_paths = list(photo_paths)
        self.preprocess = preprocess

    def __len__(self):
        return len(self.photo_paths)

    def __getitem__(self, i):
        try:
            return self.preprocess.to_uint8(read_photo(self.photo_paths[i], self.preprocess.size)), True, ""
        except PhotoError as e:
            s = self.preprocess.size
            return torch.zeros(3, s, s, dtype=torch.uint8), False, str(e)


def iter_photo_batches(photo_paths, preprocess: Preprocess, batch_size=256, workers=2, desc="photos"):
    """Yield (start index, uint8 batch, ok mask, errors) over ``photo_paths`` in order, with a tqdm bar."""
    from tqdm import tqdm

    loader = torch.utils.data.DataLoader(
        PhotoDataset(photo_paths, preprocess), batch_size=batch_size, num_workers=workers, shuffle=False,
        persistent_workers=False)
    start = 0
    with tqdm(total=len(loader.dataset), desc=desc, unit="img", disable=None, mininterval=2) as bar:
        for x, ok, err in loader:
            yield start, x, ok, list(err)
            start += len(x)
            bar.update(len(x))


def cache_photos(photo_paths, preprocess: Preprocess, batch_size=256, workers=2, desc="photos"):
    """Decode + resize every photo once: (N, 3, S, S) uint8, ok mask (N,), errors {index: message}."""
    n, s = len(photo_paths), preprocess.size
    cache = torch.zeros(n, 3, s, s, dtype=torch.uint8)
    ok = torch.zeros(n, dtype=torch.bool)
    errors = {}
    for start, x, good, err in iter_photo_batches(photo_paths, preprocess, batch_size, workers, desc):
        cache[start:start + len(x)] = x
        ok[start:start + len(x)] = good
        errors.update({start + j: e for j, e in enumerate(err) if e})
    return cache, ok, errors


# ----------------------------------------------------------------------------- text

PRODUCT_TEXT_ATTRIBUTES = ["colour_group_name", "product_type_name", "graphical_appearance_name",
                           "garment_group_name", "index_group_name"]


def product_text(row, desc_words: int = 12) -> str:
    """What the text tower reads: name, the attributes most visible in a photo, then the copy's start.

    Most informative first, since the text tower truncates at its context length.
    """
    attrs = ", ".join(str(row[c]) for c in PRODUCT_TEXT_ATTRIBUTES if c in row and str(row[c]))
    desc = " ".join(str(row.get("detail_desc", "") or "").split()[:desc_words])
    return f"{row['prod_name']}. {attrs}. {desc}".strip()


def product_texts(items: pd.DataFrame, desc_words: int = 12) -> list[str]:
    return [product_text(r, desc_words) for r in items.to_dict("records")]


# ----------------------------------------------------------------------------- loading (option A and B)

class ClipLoadError(RuntimeError):
    pass


def load_clip(model_name: str = DEFAULT_MODEL, pretrained: str | None = None, device="cpu"):
    """open_clip model (eval mode), its pad-to-square ``Preprocess`` and its text tokenizer.

    ``pretrained`` is an open_clip tag (needs the hub) or a checkpoint path, passed to
    ``open_clip.create_model_and_transforms`` unchanged; ``None`` gives random weights.
    """
    import open_clip

    paths.offline()
    register_model_configs()
    try:
        model, _, _ = open_clip.create_model_and_transforms(
            model_name, pretrained=str(pretrained) if pretrained else None, device=device,
            image_resize_mode="longest")
    except Exception as e:
        msg = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ClipLoadError(f"could not load CLIP {model_name!r} with pretrained={pretrained!r}: {msg} "
                            "(no model hub here: pass a local checkpoint path)") from e
    model.eval()
    return model, Preprocess.from_model(model), open_clip.get_tokenizer(model_name)


def save_checkpoint(model, out_dir: Path, model_name: str, preprocess: Preprocess, meta: dict) -> Path:
    """``out_dir/open_clip_pytorch_model.bin`` (state_dict) + ``open_clip_config.json`` + ``clip_meta.json``.

    The state_dict loads with ``create_model_and_transforms(model_name, pretrained=path)`` and the
    folder with ``create_model_and_transforms("local-dir:" + out_dir)``.
    """
    import open_clip

    out_dir = Path(out_dir)
    ckpt = out_dir / CHECKPOINT_NAME
    state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    atomic_write_bytes(ckpt, torch_bytes(state))
    atomic_write_json(out_dir / "open_clip_config.json", {
        "model_cfg": open_clip.get_model_config(model_name),
        "preprocess_cfg": asdict(preprocess)})
    meta = {**meta, "model": model_name, "checkpoint": str(ckpt), "sha256": sha256_file(ckpt),
            "preprocess": preprocess.as_dict()}
    atomic_write_json(out_dir / META_NAME, meta)
    return ckpt


# ----------------------------------------------------------------------------- training (option B)

@dataclass
class ClipTrainConfig:
    model: str = DEFAULT_MODEL
    epochs: int = 8
    batch_size: int = 256
    lr: float = 2e-3
    weight_decay: float = 0.1
    warmup_steps: int = 50
    desc_words: int = 12         # words of detail_desc appended to the product text
    hflip: bool = True           # random horizontal flip of training photos
    seed: int = 0
    threads: int = 2
    workers: int = 2             # photo-decoding processes
    max_train: int | None = None  # cap on training pairs (tests, smoke runs)


def get_default_config() -> ClipTrainConfig:
    return ClipTrainConfig()


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def recall_at_k(sim: torch.Tensor, ks=(1, 5, 10)) -> dict:
    """sim (N, N) with the match on the diagonal -> {"R@k": fraction of rows whose match is in the top k}."""
    target = sim.diagonal().unsqueeze(1)
    rank = (sim > target).sum(1)  # (N,) how many candidates beat the true match
    return {f"R@{k}": float((rank < k).float().mean()) for k in ks}


def one_per_product(items: pd.DataFrame) -> pd.DataFrame:
    """The lowest article_id of each product_code: retrieval galleries without near-duplicate texts."""
    return items.sort_values("article_id").drop_duplicates("product_code")


@torch.no_grad()
def encode_cached(model, preprocess: Preprocess, photos_u8: torch.Tensor, batch_size=512) -> torch.Tensor:
    out = [model.encode_image(preprocess.normalize(photos_u8[i:i + batch_size]), normalize=True)
           for i in range(0, len(photos_u8), batch_size)]
    return torch.cat(out)


@torch.no_grad()
def encode_texts(model, tokenizer, texts, batch_size=512) -> torch.Tensor:
    out = [model.encode_text(tokenizer(texts[i:i + batch_size]), normalize=True)
           for i in range(0, len(texts), batch_size)]
    return torch.cat(out)


def _param_groups(model, weight_decay):
    """open_clip_train's rule: no decay on gains, biases, embeddings, logit_scale."""
    decay, no_decay = [], []
    for n, p in model.named_parameters():
        if n == "token_embedding.weight":
            continue  # trained by SparseAdam (49k-row table, only a few hundred rows touched per step)
        skip = p.ndim < 2 or "bn" in n or "ln" in n or "bias" in n or "embedding" in n or "logit_scale" in n
        (no_decay if skip else decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def _usable(items: pd.DataFrame, split: str) -> pd.DataFrame:
    df = items[(items["split_unseen"] == split) & items["has_photo"].astype(bool) & (items["photo_path"] != "")]
    return df.reset_index(drop=True)


def train_clip(items: pd.DataFrame, cfg: ClipTrainConfig | None = None, out_dir: str | os.PathLike | None = None):
    """Train the domain CLIP on split_unseen=="train" items, validate on "val" items; save; return meta."""
    import open_clip
    from open_clip.loss import ClipLoss
    from tqdm import tqdm

    cfg = cfg or get_default_config()
    out_dir = Path(out_dir) if out_dir else domain_clip_dir(items, cfg)
    torch.set_num_threads(cfg.threads)
    seed_everything(cfg.seed)
    t_start = time.time()

    model, preprocess, tokenizer = load_clip(cfg.model, pretrained=None)
    train = _usable(items, "train")
    if cfg.max_train:
        train = train.sample(n=min(cfg.max_train, len(train)), random_state=cfg.seed).reset_index(drop=True)
    val = one_per_product(_usable(items, "val")).reset_index(drop=True)
    print(f"clip: {cfg.model}, {sum(p.numel() for p in model.parameters()) / 1e6:.2f}M params, "
          f"{preprocess.size}px pad-to-square; {len(train):,} train / {len(val):,} val pairs "
          f"(val: one article per held-out product_code)")

    photos, ok, errors = cache_photos(train["photo_path"], preprocess, workers=cfg.workers, desc="cache train photos")
    val_photos, val_ok, val_errors = cache_photos(val["photo_path"], preprocess, workers=cfg.workers, desc="cache val photos")
    for df, errs in ((train, errors), (val, val_errors)):
        for i, e in errs.items():
            print(f"unreadable photo: {df.at[i, 'photo_path']} (article_id={df.at[i, 'article_id']}): {e}", file=sys.stderr)
    photos, train = photos[ok], train[ok.numpy()].reset_index(drop=True)
    val_photos, val = val_photos[val_ok], val[val_ok.numpy()].reset_index(drop=True)
    tokens = tokenizer(product_texts(train, cfg.desc_words))  # (N, context_length)
    val_texts = product_texts(val, cfg.desc_words)
    t_cache = time.time() - t_start
    print(f"clip: cached {len(photos):,} photos as {tuple(photos.shape[1:])} uint8 "
          f"({photos.numel() / 2**20:.0f} MiB) in {t_cache:.0f}s")

    model.train()
    model.token_embedding.sparse = True
    opt = torch.optim.AdamW(_param_groups(model, cfg.weight_decay), lr=cfg.lr, betas=(0.9, 0.98), eps=1e-6)
    opt_emb = torch.optim.SparseAdam([model.token_embedding.weight], lr=cfg.lr, betas=(0.9, 0.98), eps=1e-6)
    loss_fn = ClipLoss()
    n = len(photos)
    bs = min(cfg.batch_size, n)
    steps_per_epoch = max(1, n // bs)  # drop the ragged last batch: ClipLoss wants a full set of negatives
    total = cfg.epochs * steps_per_epoch
    gen = torch.Generator().manual_seed(cfg.seed)
    history = []
    step = 0
    for epoch in range(1, cfg.epochs + 1):
        t0 = time.time()
        perm = torch.randperm(n, generator=gen)
        losses = []
        bar = tqdm(range(steps_per_epoch), desc=f"epoch {epoch}/{cfg.epochs}", unit="step", disable=None,
                   leave=False, mininterval=2)
        for i in bar:
            lr = cfg.lr * min(1.0, (step + 1) / max(1, cfg.warmup_steps)) * 0.5 * (1 + math.cos(math.pi * step / total))
            for o in (opt, opt_emb):
                for g in o.param_groups:
                    g["lr"] = lr
            idx = perm[i * bs:(i + 1) * bs]
            x = photos[idx]  # (B, 3, S, S) uint8
            if cfg.hflip:
                flip = torch.rand(len(idx), generator=gen) < 0.5
                x = torch.where(flip.view(-1, 1, 1, 1), x.flip(-1), x)
            image_features, text_features, logit_scale = model(preprocess.normalize(x), tokens[idx])
            loss = loss_fn(image_features, text_features, logit_scale)
            opt.zero_grad(set_to_none=True)
            opt_emb.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            opt_emb.step()
            with torch.no_grad():
                model.logit_scale.clamp_(0, math.log(100))
            losses.append(loss.item())
            step += 1
            bar.set_postfix(loss=f"{loss.item():.3f}", lr=f"{lr:.1e}")
        bar.close()
        model.eval()
        val_metrics = evaluate_pairs(model, preprocess, tokenizer, val_photos, val_texts, bs, loss_fn)
        model.train()
        dt = time.time() - t0
        rec = {"epoch": epoch, "train_loss": float(np.mean(losses)), **val_metrics, "seconds": dt}
        history.append(rec)
        print(f"epoch {epoch}/{cfg.epochs}: train loss {rec['train_loss']:.3f}, val loss {rec['val_loss']:.3f}, "
              f"val R@10 i2t {rec['val_i2t_R@10']:.3f} t2i {rec['val_t2i_R@10']:.3f} "
              f"(chance {rec['val_chance_R@10']:.3f}), logit scale {model.logit_scale.exp().item():.1f}, "
              f"{dt:.0f}s, {steps_per_epoch * bs / dt:.0f} img/s", flush=True)

    model.token_embedding.sparse = False
    model.eval()
    train_seconds = time.time() - t_start
    meta = {"train_config": asdict(cfg), "n_train": len(train), "n_val": len(val), "history": history,
            "cache_seconds": t_cache, "train_seconds": train_seconds,
            "torch": torch.__version__, "open_clip": open_clip.__version__}
    ckpt = save_checkpoint(model, out_dir, cfg.model, preprocess, meta)
    print(f"clip: trained in {train_seconds:.0f}s (photo cache {t_cache:.0f}s); wrote {ckpt}")
    return json.loads((out_dir / META_NAME).read_text())


@torch.no_grad()
def evaluate_pairs(model, preprocess, tokenizer, photos_u8, texts, batch_size, loss_fn) -> dict:
    """Validation ClipLoss (same batch size as training) and i2t/t2i recall over the whole gallery."""
    img = encode_cached(model, preprocess, photos_u8)
    txt = encode_texts(model, tokenizer, texts)
    scale = model.logit_scale.exp()
    losses = [loss_fn(img[i:i + batch_size], txt[i:i + batch_size], scale).item()
              for i in range(0, len(img) - batch_size + 1, batch_size)] or [loss_fn(img, txt, scale).item()]
    sim = img @ txt.T
    out = {"val_loss": float(np.mean(losses))}
    out.update({f"val_i2t_{k}": v for k, v in recall_at_k(sim).items()})
    out.update({f"val_t2i_{k}": v for k, v in recall_at_k(sim.T).items()})
    out["val_chance_R@10"] = min(1.0, 10 / len(img))
    return out


def _result_fields(train_config: dict) -> dict:
    """The settings that change the weights (not threads or decoding workers)."""
    return {k: v for k, v in train_config.items() if k not in ("threads", "workers")}


def ensure_domain_clip(items: pd.DataFrame, cfg: ClipTrainConfig | None = None,
                       out_dir: str | os.PathLike | None = None, retrain: bool = False) -> Path:
    """Path of the domain CLIP checkpoint for ``cfg``, training it first if missing or trained differently.

    By default it lives in its keyed folder (``domain_clip_dir``), and ``artifacts/clip/<model>`` points to it.
    """
    cfg = cfg or get_default_config()
    keyed = out_dir is None
    out_dir = Path(out_dir) if out_dir else domain_clip_dir(items, cfg)
    ckpt, meta_path = out_dir / CHECKPOINT_NAME, out_dir / META_NAME
    if not retrain and ckpt.exists() and meta_path.exists():
        old = json.loads(meta_path.read_text()).get("train_config", {})
        if _result_fields(old) == _result_fields(asdict(cfg)):
            print(f"clip: reusing {out_dir}")
        else:
            print(f"clip: {out_dir} was trained with another config; retraining")
            train_clip(items, cfg, out_dir)
    else:
        train_clip(items, cfg, out_dir)
    if keyed:
        paths.point_latest(default_clip_dir(cfg.model), out_dir)
    return ckpt


def add_train_args(p: argparse.ArgumentParser) -> None:
    d = get_default_config()
    g = p.add_argument_group("domain CLIP training (option B)")
    g.add_argument("--epochs", type=int, default=d.epochs)
    g.add_argument("--batch-size", type=int, default=d.batch_size)
    g.add_argument("--lr", type=float, default=d.lr)
    g.add_argument("--weight-decay", type=float, default=d.weight_decay)
    g.add_argument("--warmup-steps", type=int, default=d.warmup_steps)
    g.add_argument("--desc-words", type=int, default=d.desc_words)
    g.add_argument("--no-hflip", dest="hflip", action="store_false")
    g.add_argument("--seed", type=int, default=d.seed)
    g.add_argument("--threads", type=int, default=d.threads)
    g.add_argument("--workers", type=int, default=d.workers)
    g.add_argument("--max-train", type=int, default=d.max_train)


def train_config_from_args(args, model: str) -> ClipTrainConfig:
    return ClipTrainConfig(model=model, epochs=args.epochs, batch_size=args.batch_size, lr=args.lr,
                           weight_decay=args.weight_decay, warmup_steps=args.warmup_steps,
                           desc_words=args.desc_words, hflip=args.hflip, seed=args.seed, threads=args.threads,
                           workers=args.workers, max_train=args.max_train)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--items", type=Path, default=paths.artifacts_dir() / "data" / "hm" / "items.parquet")
    p.add_argument("--clip-model", default=DEFAULT_MODEL, help="architecture JSON name (mmreason/model_configs)")
    p.add_argument("--out", type=Path, default=None, help="default: artifacts/clip/<clip-model>-<key>")
    add_train_args(p)
    args = p.parse_args(argv)
    if not args.items.exists():
        raise SystemExit(f"missing {args.items}: run `python -m mmreason.data` first")
    return ensure_domain_clip(pd.read_parquet(args.items), train_config_from_args(args, args.clip_model), args.out,
                              retrain=True)


if __name__ == "__main__":
    main()
