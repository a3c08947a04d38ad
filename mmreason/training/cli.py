"""Training the reason generator from a config: ``fit(argv)`` is ``python -m mmreason.train`` as a function.

A ``LightningCLI`` over ``ReasonModule`` and ``ReasonDataModule``. With no ``--config`` it uses
``configs/cpu.yaml``. On a fresh clone it first runs every missing step (data preparation, tokenizer,
domain CLIP, photo-embedding cache; see ``pipeline.py``), then trains, then prints generated reasons for
a few test users next to their silver targets and the validation perplexity beside a unigram model's.

Logs and checkpoints go under ``trainer.default_root_dir`` (``<root>/checkpoints``, ``<root>/logs``, ``<root>/tb``);
a relative ``artifacts/runs/<name>`` there is under the artifacts root (``paths.resolve``, ``$MMREASON_ARTIFACTS``).
Resuming: ``--ckpt_path last`` continues the run in ``<root>/checkpoints``
(same step, optimizer and scheduler state); ``auto`` (the default) does so only when ``last.ckpt`` was
written by the same configuration, and otherwise starts afresh. ``--ckpt_path none`` always starts afresh.
"""
from __future__ import annotations

import json
import sys
import warnings
from pathlib import Path

import torch
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.cli import LightningCLI

from mmreason import paths
from mmreason.datasets import pii
from mmreason.decoding.generate import DecodeConfig
from mmreason.decoding.shown import sample_reasons
from mmreason.io import DataError, SettingError
from mmreason.machine import cpu_has_bf16
from mmreason.training.datamodule import ReasonDataModule
from mmreason.training.module import SETTING_RANGES, ReasonModule, check_settings
from mmreason.training.pipeline import same_content

CONFIG_DIR = paths.REPO_ROOT / "configs"


class ReasonCLI(LightningCLI):
    def add_arguments_to_parser(self, parser):
        parser.link_arguments("data.vocab_size", "model.vocab_size", apply_on="instantiate")
        parser.link_arguments("data.clip_dim", "model.clip_dim", apply_on="instantiate")
        parser.add_argument("--ckpt_path", default="auto", help="auto | last | none | a checkpoint path")
        parser.add_argument("--n_report", type=int, default=5, help="test users whose reasons are printed after fit")

    def before_instantiate_classes(self):
        """Logs and checkpoints always live under trainer.default_root_dir (one flag moves a whole run);
        bf16 autocast on a CPU without bf16 hardware falls back to fp32 (it would be slower, not faster)."""
        trainer = self.config["trainer"]
        if (str(trainer.get("precision")).startswith("bf16") and trainer.get("accelerator") == "cpu"
                and not cpu_has_bf16()):
            print(f"[train] this CPU has no bf16 matmul (AVX512-BF16 or AMX): precision {trainer['precision']} "
                  "-> 32-true")
            trainer["precision"] = "32-true"
        model = self.config["model"]  # before the data module prepares any data (the link to vocab_size needs it)
        check_settings(**{k: model.get(k) for k in SETTING_RANGES if model.get(k) is not None})
        # artifacts/runs/<name> (the configs' form) is under the artifacts root, whatever the working folder
        root = str(paths.resolve(trainer["default_root_dir"] or "artifacts/runs/default"))
        trainer["default_root_dir"] = root
        for lg in trainer.get("logger") or []:
            if hasattr(lg, "init_args") and "save_dir" in lg.init_args:
                lg.init_args["save_dir"] = root
        for cb in trainer.get("callbacks") or []:
            if str(getattr(cb, "class_path", "")).endswith(("ModelCheckpoint", "training.module.Checkpoint")):
                cb.init_args["dirpath"] = f"{root}/checkpoints"


def _checkpoint_dir(trainer) -> Path | None:
    for cb in trainer.callbacks:
        if isinstance(cb, ModelCheckpoint) and cb.dirpath:
            return Path(cb.dirpath)
    return None


def resolve_ckpt(choice: str | None, trainer, model: ReasonModule, data: ReasonDataModule) -> str | None:
    """'auto' resumes only a last.ckpt written with the same model and data settings."""
    if choice in (None, "none", "None", "null"):
        return None
    if choice != "auto":
        return choice
    d = _checkpoint_dir(trainer)
    last = d / "last.ckpt" if d else None
    if not last or not last.exists():
        return None
    ckpt = torch.load(last, map_location="cpu", weights_only=False)
    same_model = ckpt.get("hyper_parameters", {}).get("config") == dict(model.hparams["config"])
    same_data = dict(ckpt.get("datamodule_hyper_parameters") or {}) == dict(data.hparams)
    same_inputs = same_content((ckpt.get(type(data).__qualname__) or {}).get("artifacts"), data.state_dict()["artifacts"])
    if same_model and same_data and same_inputs:
        print(f"[train] resuming {last} (epoch {ckpt.get('epoch')}, step {ckpt.get('global_step')})")
        return str(last)
    what = "settings" if not (same_model and same_data) else "artifacts (tables, tokenizer, CLIP or embeddings)"
    print(f"[train] {last} was written with other {what}; starting afresh (it will be overwritten)")
    return None


def report(module: ReasonModule, data: ReasonDataModule, n: int, out_dir: Path | None) -> dict:
    """Validation perplexity vs a unigram model, and a few test users' reasons next to their targets."""
    val_loss = module.trainer.callback_metrics.get("val/loss") if module._trainer else None
    if val_loss is None and module._trainer and module.trainer.global_step:  # a finished run resumed: fit ran none
        module.trainer.validate(module, datamodule=data, verbose=False)
        val_loss = module.trainer.callback_metrics.get("val/loss")
    summary = {"unigram_val_ppl": data.unigram_perplexity("val")}
    if val_loss is not None:
        summary["val_ppl"] = float(torch.exp(val_loss))
        summary["val_loss"] = float(val_loss)
    test = data.frame("test")
    # Prefer users with history: that is where a reason can be personal.
    pick = test[test["personalised"]].drop_duplicates("customer_id").head(n) if "personalised" in test else test.head(n)
    module.model.eval()
    shown = sample_reasons(module.model.cpu(), data, pick, DecodeConfig(strategy="greedy", no_repeat_ngram_size=3))
    samples = []
    for r, o in zip(pick.to_dict("records"), shown):
        samples.append({"customer_id": r["customer_id"][:pii.ID_PREFIX], "article_id": int(r["article_id"]), "generated": o.reason,
                        "passed_filter": o.passed, "silver": r["reason"]})
        print(f"\n[user {r['customer_id'][:pii.ID_PREFIX]}… article {r['article_id']}] {r['product']}\n"
              f"  behaviour: {r['behaviour'][:160]}\n  generated: {o.reason}"
              f"{'' if o.passed else ' (failed the filter)'}\n  silver:    {r['reason']}")
    summary["samples"] = samples
    if module.accounting is not None:
        summary["privacy"] = module.accounting.summary(module.global_step)
    print(f"\n[train] validation perplexity {summary.get('val_ppl', float('nan')):.2f} "
          f"(unigram baseline {summary['unigram_val_ppl']:.2f})")
    if out_dir is not None:
        out_dir.mkdir(parents=True, exist_ok=True)
        (out_dir / "summary.json").write_text(json.dumps(summary, indent=2))
    return summary


def fit(argv=None) -> int:
    """Train as ``python -m mmreason.train ARGV`` does (evaluate trains its missing variants this way)."""
    paths.offline()
    argv = list(sys.argv[1:] if argv is None else argv)
    if not any(a == "--config" or a.startswith("--config=") or a in ("-c",) for a in argv) and "-h" not in argv and "--help" not in argv:
        argv = ["--config", str(CONFIG_DIR / "cpu.yaml")] + argv
    try:
        with warnings.catch_warnings():
            # args is the command line read above (plus the default config) or a caller's own argv (evaluate trains
            # its variants so), never both: Lightning's warning against passing args beside sys.argv does not apply
            warnings.filterwarnings("ignore", message="LightningCLI's args parameter")
            cli = ReasonCLI(ReasonModule, ReasonDataModule, args=argv, run=False, save_config_kwargs={"overwrite": True},
                            parser_kwargs={"prog": "python -m mmreason.train"})
    except (DataError, SettingError) as e:  # settings out of range, or inputs missing, found while instantiating
        print(f"error: {' '.join(str(e).split())}", file=sys.stderr)
        return 2
    trainer, module, data = cli.trainer, cli.model, cli.datamodule
    ckpt = resolve_ckpt(cli.config.get("ckpt_path"), trainer, module, data)
    trainer.fit(module, datamodule=data, ckpt_path=ckpt)
    if trainer.is_global_zero and cli.config.get("n_report", 0):
        report(module, data, cli.config["n_report"], _checkpoint_dir(trainer).parent if _checkpoint_dir(trainer) else None)
    return 0
