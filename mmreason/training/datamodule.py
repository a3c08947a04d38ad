"""The Lightning data module: the prepared examples as prompts and (delexicalised) targets, batched
by length (``BucketSampler``), with the artifacts a run records (``pipeline``).
"""
from __future__ import annotations

import math

import lightning as L
import numpy as np
import pandas as pd
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from mmreason.io import DataError, SettingError, check_ranges
from mmreason.model.collate import DEFAULT_MAX_PROMPT_TOKENS, EOS, NAME_SLOT, collate, encode_example
from mmreason.training import privacy
from mmreason.training.pipeline import PipelineConfig, load_recorded
from mmreason.training.pipeline import ensure as ensure_artifacts

PROMPT_FIELDS = ("user_profile", "evidence", "behaviour", "product", "retrieved")
# without "retrieved", which needs the pipeline's retrieval step (configs/cpu.yaml turns both on)
DEFAULT_PROMPT_FIELDS = ("user_profile", "evidence", "behaviour", "product")


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
    Privacy (``privacy.py``): ``sampling: poisson`` draws DP-SGD's batches of examples, ``customer`` of
    customers (one example each: user-level DP); ``holdout_customers`` keeps a
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
        if sampling not in ("bucket", "poisson", "customer"):
            raise SettingError(f"sampling must be 'bucket', 'poisson' or 'customer', not {sampling!r}")
        self.sampling, self.holdout_customers = sampling, holdout_customers
        if split not in ("temporal", "unseen"):
            raise SettingError(f"split must be 'temporal' or 'unseen', not {split!r}")
        self.split, self.batch_size, self.eval_batch_size, self.num_workers = split, batch_size, eval_batch_size, num_workers
        self.max_prompt_tokens = dict(max_prompt_tokens or DEFAULT_MAX_PROMPT_TOKENS)
        self.max_reason_tokens, self.prompt_fields = max_reason_tokens, list(prompt_fields)
        self.limit_train, self.limit_val, self.seed, self.slots = limit_train, limit_val, seed, slots
        check_ranges(self, flag_prefix="--data.", batch_size=">=1", eval_batch_size=">=1", num_workers=">=0",
                         max_reason_tokens=">=1", limit_train=">=0", limit_val=">=0", seed=">=0",
                         holdout_customers="[0,1)")
        if any(not isinstance(v, int) or v < 1 for v in self.max_prompt_tokens.values()):
            raise SettingError(f"--data.max_prompt_tokens {self.max_prompt_tokens}: each at least 1")
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
        elif shuffle and self.sampling == "customer":
            sampler = privacy.CustomerPoissonBatchSampler(self.frame(stage)["customer_id"].to_numpy(), batch_size, self.seed)
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
