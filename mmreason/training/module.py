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
from types import SimpleNamespace

import lightning as L
import torch
from lightning.pytorch.callbacks import ModelCheckpoint

from mmreason.decoding.generate import DecodeConfig
from mmreason.decoding.shown import sample_reasons
from mmreason.io import check_ranges
from mmreason.model.network import ModelConfig, ReasonModel
from mmreason.training import privacy

# Peak dense bf16 throughput of the cards we are lent, for model-FLOPs utilisation.
PEAK_FLOPS = {"H100": 989e12, "H200": 989e12, "A100": 312e12}


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


# ----------------------------------------------------------------------------- module

# ReasonModule's numeric settings and their ranges; train checks them before it prepares any data
SETTING_RANGES = {"lr": ">0", "min_lr_ratio": "[0,1]", "weight_decay": ">=0", "warmup_steps": ">=0",
                  "lr_decay_steps": ">=1", "n_samples": ">=0", "sample_max_new_tokens": ">=1"}


def check_settings(**settings) -> None:
    """``io.SettingError`` in one line for a ``ReasonModule`` setting out of its range (``SETTING_RANGES``)."""
    check_ranges(SimpleNamespace(**settings), flag_prefix="--model.",
                     **{k: r for k, r in SETTING_RANGES.items() if k in settings})


class ReasonModule(L.LightningModule):
    """AdamW with linear warm-up and cosine decay; logs loss, perplexity, tokens/s (and MFU on GPU)."""

    def __init__(self, config: ModelConfig | None = None, model: ReasonModel | None = None, vocab_size: int | None = None,
                 clip_dim: int | None = None, lr: float = 1e-3, min_lr_ratio: float = 0.1, weight_decay: float = 0.1,
                 betas: tuple[float, float] = (0.9, 0.95), warmup_steps: int = 100, lr_decay_steps: int | None = None,
                 n_samples: int = 3,
                 sample_max_new_tokens: int = 64, compile: bool = False, fused_adamw: bool = True,
                 dp: privacy.DPConfig | None = None):
        super().__init__()
        check_settings(lr=lr, min_lr_ratio=min_lr_ratio, weight_decay=weight_decay, warmup_steps=warmup_steps,
                       lr_decay_steps=lr_decay_steps, n_samples=n_samples, sample_max_new_tokens=sample_max_new_tokens)
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
