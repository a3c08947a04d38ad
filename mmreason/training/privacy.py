"""Differentially private training (DP-SGD with Opacus) for the reason generator.

``configs/dp.yaml`` turns it on (``model.dp``): per-example gradients (Opacus ``GradSampleModule``, hooks
mode), each clipped to L2 norm ``max_grad_norm``, summed, plus Gaussian noise of std
``noise_multiplier * max_grad_norm`` (Opacus ``DPOptimizer``), over Poisson-sampled batches
(``data.sampling: poisson``: every training example joins each batch independently with probability
q = batch_size / N). An RDP accountant turns (noise, q, steps) into epsilon at delta = 1/N.

**The protected unit** follows ``data.sampling``:

* ``poisson``: one training example (one purchase of one customer on one day, with the prompt built from
  that customer's earlier purchases). A customer has many examples (median 9 purchases, up to 368) and
  their profile and history text repeat across them, so a customer's guarantee is only group privacy: for
  a customer with k examples, roughly k * epsilon (at delta k * e^((k-1) epsilon) * 1/N), no useful bound
  for k beyond a few.
* ``customer``: one customer, all their examples together (user-level DP; ``CustomerPoissonBatchSampler``).
  Each batch takes every training customer independently with probability q = batch_size / N_customers
  and, for each one taken, one of their examples drawn at random. A customer then adds at most one
  clipped gradient (norm <= C) to a step whatever their number of examples, and joins each step with
  probability q: the same sampled Gaussian mechanism, with customers as the records, so the accountant's
  epsilon at delta = 1/N_customers bounds what the weights reveal about a whole customer. The price: a
  pass over the customers uses one example of each, so a customer's many examples are seen less often.

What the accounting covers: the generator's weights trained on the training examples. It does not cover the tokenizer and domain CLIP (trained
without noise on the same customers' purchases and on all products' copy and photos), the validation
loss the trainer reads, the printed samples, or the choice of hyperparameters. The noise and the Poisson
draws come from seeded PRNGs (reproducible resumes, not Opacus' secure mode): a real release would need
secret randomness.

Three things in ``ReasonModel`` escape per-example hooks and are handled here: ``no_photo`` (a bare
parameter on the root module, used for articles without a photo: none in H&M) and the copy head's
``beta`` (a bare scalar) are frozen, and the photo prefix's segment vector is read through the segment
embedding's forward (see ``model.photo_prefix``); the LM head reads (B, Q, C) rows
(``scored_logprobs(rows=True)``, ``example_losses``) instead of the batch flattened.
``tests/test_privacy.py`` checks that the per-example gradients sum to the ordinary gradient for every
trainable parameter.
"""
from __future__ import annotations

import hashlib
import warnings
from dataclasses import asdict, dataclass

import numpy as np
import torch
from torch.utils.data import Sampler

from mmreason.io import DataError


@dataclass
class DPConfig:
    target_epsilon: float | None = 8.0     # calibrate the noise so that epsilon is this after trainer.max_steps
    noise_multiplier: float | None = None  # or give the noise directly (then target_epsilon is ignored)
    max_grad_norm: float = 1.0             # per-example clipping norm C
    delta: float | None = None             # None: 1 / number of training examples
    accountant: str = "rdp"                # an Opacus accountant: rdp | prv | gdp

    def __post_init__(self):
        if self.target_epsilon is None and self.noise_multiplier is None:
            raise ValueError("dp: give target_epsilon or noise_multiplier")
        if self.max_grad_norm <= 0:
            raise ValueError(f"dp.max_grad_norm must be > 0, not {self.max_grad_norm}")


def epsilon(noise_multiplier: float, sample_rate: float, steps: int, delta: float, accountant: str = "rdp") -> float:
    """Epsilon after ``steps`` Poisson-sampled steps of the Gaussian mechanism (0 steps: 0)."""
    from opacus.accountants import create_accountant

    if steps <= 0:
        return 0.0
    acc = create_accountant(mechanism=accountant)
    acc.history = [(noise_multiplier, sample_rate, steps)]
    return float(acc.get_epsilon(delta=delta))


def noise_for(target_epsilon: float, delta: float, sample_rate: float, steps: int, accountant: str = "rdp") -> float:
    """The noise multiplier that spends ``target_epsilon`` (within 0.005, from above) in ``steps`` steps.

    Opacus' search first tries noise far above the answer (20, 40, ...), where the RDP bound's best order is
    the largest one it tries, and warns there that a wider range would be tighter. At the answer the order is
    well inside the range (2.3 to 9.5 for 150 steps of 64 at epsilon 8 and 1, N 17,000 or 1,100: the privacy
    tests' settings), so those warnings are silenced in the search alone; ``epsilon`` still warns if the chosen
    noise ever needs a wider range."""
    from opacus.accountants.utils import get_noise_multiplier

    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Optimal order is the largest alpha")
        return float(get_noise_multiplier(target_epsilon=target_epsilon, target_delta=delta, sample_rate=sample_rate,
                                          steps=steps, accountant=accountant, epsilon_tolerance=0.005))


# ----------------------------------------------------------------------------- data

def held_out_customers(customer_ids, fraction: float, seed: int = 0) -> set[str]:
    """A stable ``fraction`` of customers (by a hash of id and seed, so the same ids give the same set
    in any table or order) kept out of training: the non-members of the membership test."""
    if not 0 <= fraction < 1:
        raise ValueError(f"holdout_customers must be in [0, 1), not {fraction}")
    out = set()
    for c in set(customer_ids):
        h = int.from_bytes(hashlib.sha256(f"{seed}:{c}".encode()).digest()[:8], "big")
        if h / 2 ** 64 < fraction:
            out.add(c)
    return out


class PoissonBatchSampler(Sampler):
    """Poisson sampling, as the accountant assumes: each batch takes every example with probability q.

    Batch sizes vary around ``batch_size``. An epoch is round(1/q) batches. Draw b of epoch e depends on
    (seed, e, b) alone, so a resumed run draws what the uninterrupted one did. An empty draw (probability
    (1-q)^N: below 1e-20 at our settings) is redrawn, a negligible departure from the analysed mechanism.
    """

    def __init__(self, n: int, batch_size: int, seed: int = 0):
        if n <= 0:
            raise DataError("no training examples to sample from")
        self.n, self.q, self.seed = n, min(1.0, batch_size / n), seed
        self.epoch, self.skip = 0, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self):
        return max(1, round(1 / self.q))

    def draw(self, b: int) -> np.ndarray:
        """Batch b of this epoch: the records (0..n-1) it takes."""
        rng = np.random.default_rng([self.seed, self.epoch, b])
        idx = np.flatnonzero(rng.random(self.n) < self.q)
        while not len(idx):
            idx = np.flatnonzero(rng.random(self.n) < self.q)
        return idx

    def batch(self, b: int) -> list[int]:
        """Batch b as example indices."""
        return self.draw(b).tolist()

    def __iter__(self):
        skip, self.skip = self.skip, 0
        for b in range(skip, len(self)):
            yield self.batch(b)


# ----------------------------------------------------------------------------- model

def example_losses(model, batch) -> tuple[torch.Tensor, torch.Tensor]:
    """-> (each example's mean loss over its reason tokens (B,), scored tokens per example (B,)).

    ``ReasonModel.scored_logprobs`` with ``rows=True``: the LM head (and the copy head, where there is one)
    reads each row's scored positions as (B, Q, C), so per-example gradient hooks see the batch dimension in
    every layer's input; the model's usual loss flattens the batch there.
    """
    lp, _, scored = model.scored_logprobs(batch["photo_embedding"], batch["has_photo"], batch["input_ids"],
                                          batch["segment_ids"], batch["attention_mask"], batch["labels"], rows=True)
    n = scored.sum(1)
    total = torch.zeros(len(n), dtype=lp.dtype, device=lp.device).index_add_(0, scored.nonzero()[:, 0], -lp)
    return total / n.clamp(min=1), n


class CustomerPoissonBatchSampler(PoissonBatchSampler):
    """User-level Poisson sampling: each batch takes every customer with probability q = batch_size /
    n_customers and one example of each customer taken, drawn uniformly. ``groups`` (n,) holds each
    example's customer. Batches depend on (seed, epoch, b) alone, as in ``PoissonBatchSampler``."""

    def __init__(self, groups, batch_size: int, seed: int = 0):
        codes, groups = np.unique(np.asarray(groups), return_inverse=True)
        super().__init__(len(codes), batch_size, seed)  # n, q: over customers
        order = np.argsort(groups, kind="stable")
        self.starts = np.searchsorted(groups[order], np.arange(len(codes)))   # each customer's first row in order
        self.counts = np.bincount(groups, minlength=len(codes))
        self.order = order

    def batch(self, b: int) -> list[int]:
        c = self.draw(b)                                                   # the customers taken
        rng = np.random.default_rng([self.seed, self.epoch, b, 1])
        pick = self.starts[c] + (rng.random(len(c)) * self.counts[c]).astype(int)
        return self.order[pick].tolist()


def prepare_model(model) -> None:
    """Freeze what per-example hooks cannot see: bare parameters outside Opacus' supported layers,
    ``no_photo`` (root module) and the copy head's ``beta`` (the weight of its token-match term, kept at
    its initial 4.0; its query, key and gate layers train with per-example gradients)."""
    model.no_photo.requires_grad_(False)
    if getattr(model, "copy", None) is not None:
        model.copy.beta.requires_grad_(False)


@dataclass
class Accounting:
    noise_multiplier: float
    sample_rate: float
    delta: float
    n_units: int                           # training examples, or customers (unit "customer")
    max_grad_norm: float
    expected_batch_size: int
    accountant: str
    unit: str = "example"

    def epsilon(self, steps: int) -> float:
        return epsilon(self.noise_multiplier, self.sample_rate, steps, self.delta, self.accountant)

    def summary(self, steps: int) -> dict:
        return asdict(self) | {"steps": int(steps), "epsilon": self.epsilon(steps)}

    def line(self, steps: int) -> str:
        return (f"[privacy] epsilon {self.epsilon(steps):.2f} at delta {self.delta:.2e} (= 1/{self.n_units} {self.unit}s) "
                f"after {steps} steps: noise {self.noise_multiplier:.3f}, clip {self.max_grad_norm}, "
                f"q {self.sample_rate:.5f} (expected batch {self.expected_batch_size}), {self.accountant} accountant; "
                f"protected unit: one {self.unit}" + (", not one customer" if self.unit != "customer" else ""))


def make_private(module, optimizer):
    """Wrap ``module``'s optimizer for DP-SGD; sets ``module.accounting``. Called from ``configure_optimizers``."""
    from opacus import GradSampleModule
    from opacus.optimizers import DPOptimizer

    dp, trainer = module.dp, module.trainer
    data = getattr(trainer, "datamodule", None)
    if data is None or getattr(data, "sampling", None) not in ("poisson", "customer"):
        raise DataError("DP-SGD needs Poisson-sampled batches: set data.sampling: poisson (one example) or "
                        "customer (one customer); configs/dp.yaml does")
    if trainer.world_size > 1 or trainer.accumulate_grad_batches != 1:
        raise DataError("DP-SGD here runs on one device without gradient accumulation")
    if trainer.gradient_clip_val:
        raise DataError("DP-SGD clips each example's gradient itself: set trainer.gradient_clip_val: null")
    unit = "customer" if data.sampling == "customer" else "example"
    n = data.frame("train")["customer_id"].nunique() if unit == "customer" else len(data.dataset("train"))
    q = min(1.0, data.batch_size / n)
    delta = dp.delta if dp.delta is not None else 1.0 / n
    steps = trainer.max_steps if trainer.max_steps and trainer.max_steps > 0 else \
        trainer.max_epochs * max(1, round(1 / q))
    if dp.noise_multiplier is not None:
        sigma = float(dp.noise_multiplier)
    else:
        sigma = noise_for(dp.target_epsilon, delta, q, steps, dp.accountant)
    if "_grad_sample_module" not in module.__dict__:
        # kept out of the module tree, so checkpoints hold the plain model's weights
        module.__dict__["_grad_sample_module"] = GradSampleModule(module.model, batch_first=True, loss_reduction="mean")
    module.accounting = Accounting(sigma, q, delta, n, dp.max_grad_norm, data.batch_size, dp.accountant, unit)
    print(f"[privacy] DP-SGD for {steps} steps: noise {sigma:.3f} for target epsilon "
          f"{dp.target_epsilon if dp.noise_multiplier is None else 'n/a'} at delta {delta:.2e}; "
          f"N={n} {unit}s, q={q:.5f}")
    return DPOptimizer(optimizer, noise_multiplier=sigma, max_grad_norm=dp.max_grad_norm,
                       expected_batch_size=data.batch_size, loss_reduction="mean")
