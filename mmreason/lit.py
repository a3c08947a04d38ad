"""Lightning wrappers: ``ReasonModule`` (optimisation, logging, samples) and ``ReasonDataModule``.

The model itself is the plain ``ReasonModel`` from ``model.py``; this file only adds the training loop's
concerns. The data module reads the prepared tables, the tokenizer and the photo-embedding cache that
``mmreason.pipeline`` makes (it runs whatever step is missing).
"""
from __future__ import annotations

import math
import os
import time
from dataclasses import asdict
from pathlib import Path

import lightning as L
from lightning.pytorch.callbacks import ModelCheckpoint
import numpy as np
import pandas as pd
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from mmreason import paths, privacy
from mmreason.collate import DEFAULT_MAX_PROMPT_TOKENS, EOS, NAME_SLOT, collate, encode_example
from mmreason.io import DataError
from mmreason.model import ModelConfig, ReasonModel
from mmreason.pipeline import PipelineConfig, load_recorded
from mmreason.pipeline import ensure as ensure_artifacts

# Peak dense bf16 throughput of the cards we are lent, for model-FLOPs utilisation.
PEAK_FLOPS = {"H100": 989e12, "H200": 989e12, "A100": 312e12}
PROMPT_FIELDS = ("user_profile", "evidence", "behaviour", "product", "retrieved")
# without "retrieved", which needs the pipeline's retrieval step (configs/cpu.yaml turns both on)
DEFAULT_PROMPT_FIELDS = ("user_profile", "evidence", "behaviour", "product")


def cpu_has_bf16() -> bool:
    """Whether this CPU multiplies bf16 in hardware (AVX512-BF16 or AMX): there bf16 autocast pays
    (results/bench/cpu.md); elsewhere bf16 is emulated and slower than fp32."""
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return " avx512_bf16" in flags or " amx_bf16" in flags


class Checkpoint(ModelCheckpoint):
    """Lightning's ``ModelCheckpoint`` whose ``last.ckpt`` is written at every validation.

    Lightning's own ``save_last`` writes it only at steps where a top-k file was saved (the monitored loss
    improved), so a run whose validation loss rose at its end left a stale ``last.ckpt`` and resumed from an
    earlier step (tests/test_train.py's resume test caught it once the loss stopped falling every step).
    """

    def on_validation_end(self, trainer, pl_module) -> None:
        super().on_validation_end(trainer, pl_module)
        if self.save_last and not self._should_skip_saving_checkpoint(trainer) \
                and not self._should_save_on_train_epoch_end(trainer):
            self._save_last_checkpoint(trainer, self._monitor_candidates(trainer))


# ----------------------------------------------------------------------------- data

class ReasonDataset(Dataset):
    """Encoded examples plus their photo embeddings, ready for ``collate``."""

    def __init__(self, encoded: list[dict], photo: torch.Tensor, has_photo: torch.Tensor):
        self.encoded, self.photo, self.has_photo = encoded, photo, has_photo

    def __len__(self):
        return len(self.encoded)

    def __getitem__(self, i):
        return i


class BucketSampler(Sampler):
    """Length bucketing: shuffle, cut into chunks of 50 batches, sort each chunk by length, batch it.

    Padding waste drops a lot (prompt lengths vary 2x) while batches stay random across chunks.
    Under DDP each of ``world`` ranks takes every world-th batch (the same count on every rank, padded
    by repeats), so the trainer runs with ``use_distributed_sampler: false``.
    """

    def __init__(self, lengths, batch_size: int, shuffle: bool, seed: int = 0, chunk: int = 50, rank: int = 0,
                 world: int = 1):
        self.lengths, self.batch_size, self.shuffle, self.seed, self.chunk = np.asarray(lengths), batch_size, shuffle, seed, chunk
        self.rank, self.world = rank, world
        self.epoch = 0
        self.skip = 0  # batches of the current epoch already trained on before a resume

    def set_epoch(self, epoch: int) -> None:
        """Lightning calls this each epoch, so a resumed run sees the same batches as an uninterrupted one."""
        self.epoch = epoch

    def __iter__(self):
        rng = np.random.default_rng(self.seed + self.epoch)
        idx = rng.permutation(len(self.lengths)) if self.shuffle else np.arange(len(self.lengths))
        size = self.batch_size * self.chunk
        batches = []
        for s in range(0, len(idx), size):
            part = idx[s:s + size]
            part = part[np.argsort(self.lengths[part], kind="stable")]
            batches += [part[i:i + self.batch_size].tolist() for i in range(0, len(part), self.batch_size)]
        if self.shuffle:
            batches = [batches[i] for i in rng.permutation(len(batches))]
        if self.world > 1:  # pad by repeating batches, as DistributedSampler does, so every rank steps alike
            n = math.ceil(len(batches) / self.world)
            batches = (batches * self.world)[: n * self.world][self.rank::self.world]
        skip, self.skip = self.skip, 0
        return iter(batches[skip:])

    def __len__(self):
        return math.ceil(math.ceil(len(self.lengths) / self.batch_size) / self.world)


class Collator:
    # Lengths rounded up to 16: ~25 batch shapes in a run instead of ~250. oneDNN builds its bf16 kernels per
    # matmul shape on first use (40 real batches: 10.3k tokens/s on a first pass, 12.4k on a second), so fewer
    # shapes spend the run training rather than building kernels; the extra padding is at most 15 positions.
    PAD_TO_MULTIPLE_OF = 16

    def __init__(self, dataset: ReasonDataset, pad_id: int):
        self.dataset, self.pad_id = dataset, pad_id

    def __call__(self, indices):
        batch = collate([self.dataset.encoded[i] for i in indices], self.pad_id,
                        pad_to_multiple_of=self.PAD_TO_MULTIPLE_OF)
        idx = torch.as_tensor(indices)
        batch["photo_embedding"] = self.dataset.photo[idx]
        batch["has_photo"] = self.dataset.has_photo[idx]
        batch["index"] = idx
        return batch


class ReasonDataModule(L.LightningDataModule):
    """Examples of one split scheme (``temporal`` or ``unseen`` products) as batches for the model.

    ``prompt_fields`` chooses the text segments (drop ``product`` for the photo-only ablation, ``evidence``
    for the prompt before the data audit); ``slots`` writes the hook's cited purchase name as
    ``collate.NAME_SLOT`` in the targets (delexicalised; ``shown.py`` fills it after decoding);
    ``limit_*`` take a seeded subset for fast runs. Artifacts are made on first use by ``pipeline``.
    Privacy (``privacy.py``): ``sampling: poisson`` draws DP-SGD's batches; ``holdout_customers`` keeps a
    hashed fraction of customers out of training (the membership test's non-members).
    """

    def __init__(self, split: str = "temporal", batch_size: int = 32, eval_batch_size: int = 64, num_workers: int = 0,
                 max_prompt_tokens: dict[str, int] | None = None, max_reason_tokens: int = 96,
                 prompt_fields: list[str] = list(DEFAULT_PROMPT_FIELDS), limit_train: int = 0, limit_val: int = 0,
                 seed: int = 0, pipeline: PipelineConfig | None = None, slots: bool = False,
                 sampling: str = "bucket", holdout_customers: float = 0.0):
        super().__init__()
        # privacy settings are recorded only when set, so runs from before them still resume (train.resolve_ckpt)
        self.save_hyperparameters(ignore=[k for k, v, d in (("sampling", sampling, "bucket"),
                                                             ("holdout_customers", holdout_customers, 0.0)) if v == d])
        if sampling not in ("bucket", "poisson"):
            raise ValueError(f"sampling must be 'bucket' or 'poisson', not {sampling!r}")
        self.sampling, self.holdout_customers = sampling, holdout_customers
        if split not in ("temporal", "unseen"):
            raise ValueError(f"split must be 'temporal' or 'unseen', not {split!r}")
        self.split, self.batch_size, self.eval_batch_size, self.num_workers = split, batch_size, eval_batch_size, num_workers
        self.max_prompt_tokens = dict(max_prompt_tokens or DEFAULT_MAX_PROMPT_TOKENS)
        self.max_reason_tokens, self.prompt_fields = max_reason_tokens, list(prompt_fields)
        self.limit_train, self.limit_val, self.seed, self.slots = limit_train, limit_val, seed, slots
        self.pipeline_config = pipeline or PipelineConfig()
        self._artifacts = None
        self.recorded: dict | None = None  # set by load_run: the exact artifacts a trained run used
        self._record = None
        self.datasets: dict[str, ReasonDataset] = {}
        self.frames: dict[str, pd.DataFrame] = {}

    # Artifacts are needed to know vocab_size / clip_dim, which LightningCLI links into the model.
    @property
    def artifacts(self):
        if self._artifacts is None:
            self._artifacts = (load_recorded(self.recorded["artifacts"], self.recorded.get("run", "the run"))
                               if self.recorded else ensure_artifacts(self.pipeline_config))
        return self._artifacts

    def state_dict(self) -> dict:
        """Saved in every checkpoint: the exact artifacts (paths and checksums) this run is trained on."""
        if self._record is None:  # checksums once, not at every checkpoint
            self._record = self.artifacts.record()
        return {"artifacts": self._record}

    @property
    def tokenizer(self):
        return self.artifacts.tokenizer

    @property
    def vocab_size(self) -> int:
        return len(self.tokenizer)

    @property
    def clip_dim(self) -> int:
        return int(self.artifacts.embeddings.shape[1])

    def split_column(self) -> str:
        return f"split_{self.split}"

    def frame(self, stage: str) -> pd.DataFrame:
        """The examples of one stage (train / val / test), subset if limited."""
        if stage not in self.frames:
            ex = self.artifacts.examples
            df = ex[ex[self.split_column()] == stage]
            if self.split == "temporal" and stage == "train":
                # Keep held-out products out of training in both schemes, so one model serves both tests.
                df = df[df["split_unseen"] == "train"]
            if self.holdout_customers and stage == "train":
                df = df[~df["customer_id"].isin(self.held_out_customers())]
            limit = {"train": self.limit_train, "val": self.limit_val}.get(stage, 0)
            if limit and len(df) > limit:
                df = df.sample(n=limit, random_state=self.seed).sort_index()
            self.frames[stage] = df.reset_index(drop=True)
        return self.frames[stage]

    def held_out_customers(self) -> set[str]:
        return privacy.held_out_customers(self.artifacts.examples["customer_id"], self.holdout_customers, self.seed)

    def prompt_example(self, row: dict) -> dict:
        reason = row.get("reason")
        if self.slots and reason is not None:
            reason = delexicalise(reason, row.get("hook"), row.get("cited_name"))
        if "retrieved" in self.prompt_fields and "retrieved" not in row:
            retrieved = self.artifacts.retrieved
            if retrieved is None:
                raise DataError("prompt_fields names 'retrieved' but the pipeline has no retrieval datastore: "
                                "set data.pipeline.retrieval_k (configs/cpu.yaml)")
            row = dict(row) | {"retrieved": retrieved.get(int(row["article_id"]), "")}
        return {f: ((row.get(f) or "") if f in self.prompt_fields else "") for f in PROMPT_FIELDS} | {
            "reason": reason, "article_id": row["article_id"]}

    def dataset(self, stage: str) -> ReasonDataset:
        if stage not in self.datasets:
            df, tok = self.frame(stage), self.tokenizer
            encoded = [encode_example(tok, self.prompt_example(r), self.max_prompt_tokens, self.max_reason_tokens)
                       for r in df.to_dict("records")]
            photo, has_photo = self.artifacts.photo_lookup(df["article_id"].to_numpy())
            self.datasets[stage] = ReasonDataset(encoded, photo, has_photo)
        return self.datasets[stage]

    def setup(self, stage=None):
        for s in ("train", "val"):
            self.dataset(s)

    def _loader(self, stage, batch_size, shuffle):
        ds = self.dataset(stage)
        rank, world = (self.trainer.global_rank, self.trainer.world_size) if self.trainer is not None else (0, 1)
        if shuffle and self.sampling == "poisson":
            sampler = privacy.PoissonBatchSampler(len(ds), batch_size, self.seed)
        else:
            sampler = BucketSampler([len(e["input_ids"]) for e in ds.encoded], batch_size, shuffle, self.seed,
                                    rank=rank, world=world)
        pad_id = self.tokenizer.convert_tokens_to_ids(EOS)
        return DataLoader(ds, batch_sampler=sampler, collate_fn=Collator(ds, pad_id), num_workers=self.num_workers,
                          pin_memory=torch.cuda.is_available(), persistent_workers=self.num_workers > 0)

    def train_dataloader(self):
        loader = self._loader("train", self.batch_size, shuffle=True)
        trainer = self.trainer
        if trainer is not None and trainer.ckpt_path:
            # Resuming mid-epoch: skip the batches this epoch already trained on (Lightning restores the
            # count but not a plain DataLoader's position).
            loader.batch_sampler.set_epoch(trainer.current_epoch)
            loader.batch_sampler.skip = trainer.fit_loop.epoch_loop.batch_progress.current.completed
        return loader

    def val_dataloader(self):
        return self._loader("val", self.eval_batch_size, shuffle=False)

    def test_dataloader(self):
        return self._loader("test", self.eval_batch_size, shuffle=False)

    def unigram_perplexity(self, stage: str = "val") -> float:
        """Perplexity of an add-one unigram model of reason tokens (fit on train) on ``stage``: the floor to beat."""
        counts = np.ones(self.vocab_size)
        for e in self.dataset("train").encoded:
            np.add.at(counts, [t for t, l in zip(e["input_ids"], e["labels"]) if l != -100], 1)
        logp = np.log(counts / counts.sum())
        toks = [t for e in self.dataset(stage).encoded for t, l in zip(e["input_ids"], e["labels"]) if l != -100]
        return float(np.exp(-logp[toks].mean()))


def delexicalise(reason: str, hook: str | None, name: str | None) -> str:
    """The target with the hook's cited purchase name replaced by ``NAME_SLOT`` (the copy is left alone)."""
    if not name or not hook or not reason.startswith(hook):
        return reason
    return hook.replace(name, NAME_SLOT, 1) + reason[len(hook):]


# ----------------------------------------------------------------------------- module

class ReasonModule(L.LightningModule):
    """AdamW with linear warm-up and cosine decay; logs loss, perplexity, tokens/s (and MFU on GPU)."""

    def __init__(self, config: ModelConfig | None = None, model: ReasonModel | None = None, vocab_size: int | None = None,
                 clip_dim: int | None = None, lr: float = 1e-3, min_lr_ratio: float = 0.1, weight_decay: float = 0.1,
                 betas: tuple[float, float] = (0.9, 0.95), warmup_steps: int = 100, lr_decay_steps: int | None = None,
                 n_samples: int = 3,
                 sample_max_new_tokens: int = 64, compile: bool = False, fused_adamw: bool = True,
                 dp: privacy.DPConfig | None = None):
        super().__init__()
        config = config or ModelConfig()
        self.dp = privacy.DPConfig(**dp) if isinstance(dp, dict) else dp  # DP-SGD when set (privacy.py)
        if model is None:
            if vocab_size is not None and config.pretrained_gpt2 is None:
                config.vocab_size = vocab_size
            if clip_dim is not None:
                config.clip_dim = clip_dim
            model = ReasonModel(config)
        self.model = model
        self.config = model.config
        self.save_hyperparameters(ignore=["model"])
        self.hparams["config"] = asdict(self.config)  # the resolved config, so a checkpoint rebuilds the same model
        if self.dp is not None:
            self.hparams["dp"] = asdict(self.dp)
            privacy.prepare_model(self.model)
        self.accounting = None  # set by privacy.make_private
        # kept out of the module tree, so the compiled wrapper adds no second copy to the state dict
        # torch.compile(self.model) would compile forward() alone, and training calls reason_loss
        self.__dict__["_reason_loss"] = torch.compile(self.model.reason_loss) if compile else self.model.reason_loss
        self._t_last, self._tokens = None, 0

    @classmethod
    def from_checkpoint(cls, path, map_location="cpu") -> "ReasonModule":
        ckpt = torch.load(path, map_location=map_location, weights_only=False)
        hp = {k: v for k, v in ckpt["hyper_parameters"].items() if not k.startswith("_")}  # drop LightningCLI's keys
        hp["config"] = ModelConfig(**hp["config"])
        hp["compile"] = False
        module = cls(**hp)
        module.load_state_dict(ckpt["state_dict"])
        return module

    def forward(self, batch):
        return self._reason_loss(batch["photo_embedding"], batch["has_photo"], batch["input_ids"],
                                 batch["segment_ids"], batch["attention_mask"], batch["labels"])

    def training_step(self, batch, batch_idx):
        if self.dp is not None:  # per-example losses, so per-example gradients can be clipped
            loss = privacy.example_losses(self.model, batch)[0].mean()
            self.log("dp/epsilon", self.accounting.epsilon(self.global_step + 1), prog_bar=True)
        else:
            loss, n_tokens = self(batch)
        self.log("train/loss", loss, prog_bar=True, batch_size=batch["input_ids"].size(0))
        self.log("lr", self.optimizers().param_groups[0]["lr"], prog_bar=False)
        self._tokens += int(batch["attention_mask"].sum()) + self.config.prefix_len * batch["input_ids"].size(0)
        now = time.perf_counter()
        if self._t_last is not None and batch_idx % 10 == 0 and batch_idx:
            tps = self._tokens / (now - self._t_last)
            self.log("train/tokens_per_s", tps, prog_bar=True)
            if self.device.type == "cuda":
                name = torch.cuda.get_device_name(self.device)
                peak = next((v for k, v in PEAK_FLOPS.items() if k in name), None)
                if peak:
                    seq = batch["input_ids"].size(1) + self.config.prefix_len
                    self.log("train/mfu", self.model.estimate_flops_per_token(seq) * tps / peak, prog_bar=True)
            self._t_last, self._tokens = now, 0
        elif self._t_last is None or batch_idx % 10 == 0:
            self._t_last, self._tokens = now, 0
        return loss

    def validation_step(self, batch, batch_idx):
        # in fp32 whatever the training precision, so runs trained in bf16 and fp32 report comparable numbers
        with torch.autocast(self.device.type, enabled=False):
            loss, n_tokens = self(batch)
        # token-weighted mean over the epoch, so perplexity is exp(mean loss per reason token)
        self.log("val/loss", loss, batch_size=int(n_tokens), sync_dist=True, prog_bar=True)
        return loss

    def on_validation_epoch_end(self):
        loss = self.trainer.callback_metrics.get("val/loss")
        if loss is not None:
            self.log("val/ppl", torch.exp(loss), sync_dist=True, prog_bar=True)
        if self.hparams.n_samples and not self.trainer.sanity_checking and self.trainer.is_global_zero:
            self.print_samples()

    def print_samples(self):
        dm = getattr(self.trainer, "datamodule", None)
        if dm is None:
            return
        from mmreason.generate import DecodeConfig
        from mmreason.shown import sample_reasons

        df = dm.frame("val").head(self.hparams.n_samples)
        shown = sample_reasons(self.model, dm, df, DecodeConfig(strategy="greedy", no_repeat_ngram_size=3,
                                                                 max_new_tokens=self.hparams.sample_max_new_tokens))
        lines = [f"[epoch {self.current_epoch}] article {r['article_id']}\n  generated: {o.reason}"
                 f"{'' if o.passed else ' (failed the filter)'}\n  silver:    {r['reason']}"
                 for r, o in zip(df.to_dict("records"), shown)]
        text = "\n".join(lines)
        print(text, flush=True)
        tb = getattr(self.logger, "experiment", None)
        if hasattr(tb, "add_text"):
            tb.add_text("samples", text.replace("\n", "  \n"), self.global_step)

    def on_train_batch_start(self, batch, batch_idx):
        # Dropout noise is a function of (seed, step) alone, so a run resumed from any checkpoint draws
        # exactly what the uninterrupted run drew (the generator's state is not in the checkpoint).
        torch.manual_seed(int(os.environ.get("PL_GLOBAL_SEED", 0)) * 1_000_003 + self.global_step)

    def _fused(self) -> bool | None:
        """AdamW's fused kernel (one pass over all parameters; 1.35x the training tokens/s of the default
        per-tensor loop on 2 CPU cores) where torch has it for this device and dtype."""
        if not self.hparams.get("fused_adamw", True) or self.dp is not None:  # Opacus wraps a plain AdamW
            return None
        ok = self.device.type in ("cpu", "cuda") and all(p.is_floating_point() for p in self.model.parameters())
        return True if ok else None

    def configure_gradient_clipping(self, optimizer, gradient_clip_val=None, gradient_clip_algorithm=None):
        """Clip by norm as Lightning would. Its mixed-precision plugin refuses clipping with any fused optimizer
        (an fp16 loss-scaler concern: the fused step would unscale after the clip); bf16 autocast has no scaler,
        so there the norm is clipped here and fused AdamW stays."""
        plugin = self.trainer.precision_plugin
        if gradient_clip_val and getattr(plugin, "scaler", "none") is None and gradient_clip_algorithm in (None, "norm"):
            torch.nn.utils.clip_grad_norm_([p for g in optimizer.param_groups for p in g["params"]], gradient_clip_val)
            return
        self.clip_gradients(optimizer, gradient_clip_val, gradient_clip_algorithm)

    def configure_optimizers(self):
        decay, no_decay = [], []
        for name, p in self.model.named_parameters():
            if p.requires_grad:
                (decay if p.dim() >= 2 and "segment" not in name else no_decay).append(p)
        opt = torch.optim.AdamW([{"params": decay, "weight_decay": self.hparams.weight_decay},
                                 {"params": no_decay, "weight_decay": 0.0}], lr=self.hparams.lr,
                                betas=tuple(self.hparams.betas), fused=self._fused())
        if self.dp is not None:
            opt = privacy.make_private(self, opt)
        # lr_decay_steps pins the schedule's length (nanoGPT's lr_decay_iters); default: the whole run
        total = max(1, int(self.hparams.lr_decay_steps or self.trainer.estimated_stepping_batches))
        warmup, floor = min(self.hparams.warmup_steps, total // 10 + 1), self.hparams.min_lr_ratio

        def schedule(step):
            if step < warmup:
                return (step + 1) / warmup
            progress = min(1.0, (step - warmup) / max(1, total - warmup))
            return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * progress))

        sched = torch.optim.lr_scheduler.LambdaLR(opt, schedule)
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}

    def on_train_end(self):
        if self.accounting is not None:
            print(self.accounting.line(self.global_step), flush=True)

    def on_save_checkpoint(self, checkpoint):
        if self.accounting is not None:  # epsilon as of this checkpoint's step, for whoever loads it
            checkpoint["privacy"] = self.accounting.summary(self.global_step)


def _settings(ckpt: dict) -> tuple:
    """What makes two checkpoints one run: model and data settings, and the artifacts trained on."""
    hp = {k: v for k, v in (ckpt.get("hyper_parameters") or {}).items() if not k.startswith("_")}
    data = {k: v for k, v in (ckpt.get("datamodule_hyper_parameters") or {}).items() if not k.startswith("_")}
    return repr(sorted(hp.items())), repr(sorted(data.items())), repr(ckpt.get(ReasonDataModule.__qualname__))


def _best_model_name(ckpt: dict) -> str | None:
    """The file name of the best checkpoint that the run's ``ModelCheckpoint`` recorded, if any."""
    for key, state in (ckpt.get("callbacks") or {}).items():
        if str(key).startswith(("ModelCheckpoint", "Checkpoint")) and state.get("best_model_path"):
            return Path(state["best_model_path"]).name
    return None


def find_checkpoint(path) -> Path | None:
    """A checkpoint file as given, or a run folder's best checkpoint (its last one if none); None if absent.

    In a folder the newest run decides, whatever the file names: its ``last.ckpt`` (or else the most
    recently written checkpoint) records which file its ``ModelCheckpoint`` kept as best. A best file
    written with other settings than that run's (an older run's, left behind in a reused folder) is refused.
    A relative ``artifacts/runs/<name>`` is under the artifacts root (``paths.resolve``).
    """
    path = paths.resolve(path)
    if path.is_file():
        return path
    d = path / "checkpoints" if (path / "checkpoints").is_dir() else path
    ckpts = sorted(d.glob("*.ckpt"), key=lambda p: (p.name == "last.ckpt", p.stat().st_mtime_ns))
    if not ckpts:
        return None
    newest = ckpts[-1]
    ref = torch.load(newest, map_location="cpu", weights_only=False, mmap=True)
    best = _best_model_name(ref)
    if best is None or best == newest.name:
        return newest
    best_path = d / best
    if not best_path.exists():
        print(f"[lit] {newest.name} names {best} as best, but it is gone: using {newest.name}")
        return newest
    if _settings(torch.load(best_path, map_location="cpu", weights_only=False, mmap=True)) != _settings(ref):
        raise DataError(f"{best_path} was written with other settings than {newest}: "
                        f"not loading it (pass the checkpoint file you mean, or retrain in a fresh folder)")
    return best_path


def load_run(path) -> tuple[ReasonModule, ReasonDataModule]:
    """The model (in eval mode) and the data module it was trained with, from a checkpoint or run folder.

    The data module reads exactly the artifacts the run recorded (see ``pipeline.load_recorded``); a run
    from before artifacts were recorded falls back to the artifacts its settings name today.
    """
    ckpt_path = find_checkpoint(path)
    if ckpt_path is None:
        raise FileNotFoundError(f"no checkpoint in {path} (train one with `python -m mmreason.train`)")
    ckpt = torch.load(ckpt_path, map_location="cpu", weights_only=False)
    module = ReasonModule.from_checkpoint(ckpt_path)
    data = ReasonDataModule(**{k: v for k, v in ckpt["datamodule_hyper_parameters"].items() if not k.startswith("_")})
    state = ckpt.get(ReasonDataModule.__qualname__)
    if state:
        data.recorded = state | {"run": str(ckpt_path)}
    else:
        print(f"[lit] {ckpt_path} records no artifacts (trained before they were recorded): using today's for its settings")
    module.eval()
    return module, data
