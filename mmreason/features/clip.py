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

import io
import math
import os
from dataclasses import asdict, dataclass
from pathlib import Path

import pandas as pd
import torch

from mmreason import paths
from mmreason.io import atomic_write_bytes, atomic_write_json, sha256_file

MODEL_CONFIG_DIR = Path(__file__).resolve().parents[1] / "model_configs"  # mmreason/model_configs (package data)
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


@torch.no_grad()
def encode_texts(model, tokenizer, texts, batch_size=512) -> torch.Tensor:
    out = [model.encode_text(tokenizer(texts[i:i + batch_size]), normalize=True)
           for i in range(0, len(texts), batch_size)]
    return torch.cat(out)
