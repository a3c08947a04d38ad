"""The Lightning wrappers without a Trainer: which examples each stage trains on, the sampler's DDP
shards, the learning-rate schedule and the weight-decay groups."""
from __future__ import annotations

import math
from collections import Counter
from dataclasses import replace
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
import torch
from transformers.pytorch_utils import Conv1D

from mmreason.datasets.hm import load_tables
from mmreason.model.network import ModelConfig
from mmreason.training import datamodule
from mmreason.training.datamodule import BucketSampler, ReasonDataModule
from mmreason.training.module import ReasonModule

from conftest import prepared_tables


def with_examples(monkeypatch, examples: pd.DataFrame) -> None:
    """Data modules read these examples instead of running the artifact pipeline."""
    monkeypatch.setattr(datamodule, "ensure_artifacts", lambda config: SimpleNamespace(examples=examples))


# ----------------------------------------------------------------------------- ReasonDataModule.frame

@pytest.fixture(scope="module")
def tiny_examples(tmp_path_factory) -> pd.DataFrame:
    root = prepared_tables(tmp_path_factory.mktemp("lit"))
    return load_tables(root / "data", names=("examples",))["examples"]


def test_temporal_training_leaves_out_the_held_out_products(tiny_examples, monkeypatch):
    with_examples(monkeypatch, tiny_examples)
    ex = tiny_examples
    held_out = set(ex.loc[ex["split_unseen"] != "train", "product_code"])
    # the fixture has held-out products among the temporal training days, so there is something to leave out
    assert (ex.loc[ex["split_temporal"] == "train", "product_code"].isin(held_out)).sum() == 2
    train = ReasonDataModule(split="temporal").frame("train")
    expected = ex[(ex["split_temporal"] == "train") & ~ex["product_code"].isin(held_out)]
    assert train["example_id"].tolist() == expected["example_id"].tolist() and len(train) == 4
    # validation and test days keep every product; the unseen scheme splits by product alone
    assert ReasonDataModule(split="temporal").frame("val")["example_id"].tolist() == \
        ex.loc[ex["split_temporal"] == "val", "example_id"].tolist()
    unseen = ReasonDataModule(split="unseen")
    for stage in ("train", "val", "test"):
        assert unseen.frame(stage)["example_id"].tolist() == ex.loc[ex["split_unseen"] == stage, "example_id"].tolist()


def synthetic_examples(n=200) -> pd.DataFrame:
    rng = np.random.default_rng(0)
    return pd.DataFrame({"example_id": np.arange(n), "product_code": rng.integers(0, 40, n),
                         "split_temporal": rng.choice(["train", "val", "test"], n, p=[0.6, 0.2, 0.2])}
                        ).assign(split_unseen=lambda d: np.where(d["product_code"] % 5 == 0, "test", "train"))


def test_limits_take_a_seeded_subset(monkeypatch):
    ex = synthetic_examples()
    with_examples(monkeypatch, ex)

    def ids(stage, **kw):
        return ReasonDataModule(split="temporal", **kw).frame(stage)["example_id"].tolist()

    full_train, full_val, full_test = ids("train"), ids("val"), ids("test")
    assert len(full_train) > 60 and len(full_val) > 20
    a, again = ids("train", limit_train=20, seed=1), ids("train", limit_train=20, seed=1)
    other = ids("train", limit_train=20, seed=2)
    assert len(a) == 20 and set(a) <= set(full_train) and a == sorted(a)  # drawn after the filter, in table order
    assert a == again and a != other  # same seed, same subset; another seed, another
    assert ex.set_index("example_id").loc[a, "split_unseen"].eq("train").all()
    v = ids("val", limit_val=10, seed=1)
    assert len(v) == 10 and set(v) <= set(full_val) and v != ids("val", limit_val=10, seed=2)
    assert ids("test", limit_train=5, limit_val=5) == full_test  # the test stage is never limited
    assert ids("train", limit_train=10_000) == full_train  # a limit above the size keeps everything


def test_held_out_customers_never_train_and_everyone_else_does(monkeypatch):
    ex = synthetic_examples().assign(customer_id=lambda d: [f"c{i % 20:02d}" for i in range(len(d))])
    with_examples(monkeypatch, ex)
    dm = ReasonDataModule(split="temporal", holdout_customers=0.5)
    held, train = dm.held_out_customers(), dm.frame("train")
    assert 0 < len(held) < 20 and len(train)
    assert not set(train["customer_id"]) & held
    everyone = ReasonDataModule(split="temporal").frame("train")
    assert set(everyone["customer_id"]) - set(train["customer_id"]) == held & set(everyone["customer_id"])
    assert dm.frame("val")["example_id"].tolist() == ReasonDataModule(split="temporal").frame("val")["example_id"].tolist()


def test_the_slot_replaces_the_hooks_cited_name_only_where_asked(monkeypatch):
    hook, name = "You bought the Luna skinny 3 days ago.", "Luna skinny"
    row = {"article_id": 1, "reason": f"{hook} Soft skinny jeans, like the Luna skinny.", "hook": hook, "cited_name": name}
    assert datamodule.delexicalise(row["reason"], hook, name) == \
        f"You bought the {datamodule.NAME_SLOT} 3 days ago. Soft skinny jeans, like the Luna skinny."
    assert datamodule.delexicalise("Soft jeans.", hook, name) == "Soft jeans."  # no hook to put a slot in
    with_examples(monkeypatch, pd.DataFrame({"example_id": [1]}))
    assert ReasonDataModule(slots=False).prompt_example(row)["reason"] == row["reason"]
    assert datamodule.NAME_SLOT in ReasonDataModule(slots=True).prompt_example(row)["reason"]


# ----------------------------------------------------------------------------- BucketSampler under DDP

@pytest.mark.parametrize("shuffle", [True, False])
@pytest.mark.parametrize("world", [2, 3])
def test_bucket_sampler_shards_batches_across_ranks(world, shuffle):
    lengths = np.random.default_rng(0).integers(5, 60, 27)  # 27 examples in batches of 4: 7 batches
    make = dict(lengths=lengths, batch_size=4, shuffle=shuffle, seed=3, chunk=2)
    samplers = [BucketSampler(**make, rank=r, world=world) for r in range(world)] + [BucketSampler(**make)]
    for s in samplers:
        s.set_epoch(1)
    *ranks, alone = [[tuple(b) for b in s] for s in samplers]  # alone: one process, for comparison
    assert len(alone) == 7 and sorted(i for b in alone for i in b) == list(range(27))
    n = math.ceil(7 / world)
    assert [len(r) for r in ranks] == [len(s) for s in samplers[:-1]] == [n] * world  # equal counts, as __len__ says
    shared = [b for r in ranks for b in r]
    # the ranks share out the lone process's batches; whole batches repeat only to pad the last round
    assert set(shared) == set(alone)
    assert sum(c - 1 for c in Counter(shared).values()) == n * world - 7
    assert Counter(i for b in set(shared) for i in b) == Counter(range(27))  # disjoint batches cover every index


# ----------------------------------------------------------------------------- optimisation

TINY = ModelConfig(vocab_size=50, clip_dim=8, prefix_len=2, n_layer=1, n_head=2, n_embd=16, n_positions=32)


def lr_trace(module: ReasonModule, steps: int) -> list[float]:
    conf = module.configure_optimizers()
    opt, sched = conf["optimizer"], conf["lr_scheduler"]["scheduler"]
    assert conf["lr_scheduler"]["interval"] == "step"
    out = []
    for _ in range(steps):
        lrs = {g["lr"] for g in opt.param_groups}
        assert len(lrs) == 1  # both weight-decay groups follow the same schedule
        out.append(lrs.pop())
        opt.step()  # no gradients: nothing moves, but the scheduler wants a step first
        sched.step()
    return out


def test_warmup_then_cosine_down_to_the_floor():
    lr, floor = 1e-3, 0.1
    trace = lr_trace(ReasonModule(config=TINY, lr=lr, min_lr_ratio=floor, warmup_steps=10, lr_decay_steps=110), 140)
    close = dict(rel=1e-9)  # a few float operations from the exact values
    assert trace[0] == pytest.approx(lr / 10, **close)            # step 0: the first tenth of the warm-up
    assert trace[4] == pytest.approx(lr * 5 / 10, **close)        # linear
    assert trace[9] == pytest.approx(lr, **close)                 # end of warm-up: the peak
    assert trace[10] == pytest.approx(lr, **close)                # the cosine starts at the peak
    assert trace[60] == pytest.approx(lr * (floor + (1 - floor) / 2), **close)  # half-way down the cosine
    assert trace[110] == pytest.approx(floor * lr, **close)       # the end: the floor
    assert trace[139] == pytest.approx(floor * lr, **close)       # and it stays there
    assert all(a >= b for a, b in zip(trace[10:], trace[11:]))    # never rises after the warm-up
    # A short schedule caps the warm-up at a tenth of it (+1): here 6 steps instead of 100.
    short = lr_trace(ReasonModule(config=TINY, lr=lr, warmup_steps=100, lr_decay_steps=50), 8)
    assert short[0] == pytest.approx(lr / 6, **close) and short[5] == pytest.approx(lr, **close)


def test_weight_decay_only_on_matrices_of_weights():
    module = ReasonModule(config=TINY, weight_decay=0.3, lr_decay_steps=10)
    decay, no_decay = module.configure_optimizers()["optimizer"].param_groups
    assert decay["weight_decay"] == 0.3 and no_decay["weight_decay"] == 0.0
    model = module.model
    # by the role of each parameter: projection and embedding matrices decay; biases, norms, the segment
    # table (zero-initialised, so the no-prefix model stays GPT-2) and the no-photo vector do not
    want_decay, want_free = set(), {id(model.no_photo), id(model.segment.weight)}
    for m in model.modules():
        if isinstance(m, (torch.nn.Linear, Conv1D)):
            want_decay.add(id(m.weight))
            if m.bias is not None:
                want_free.add(id(m.bias))
        elif isinstance(m, torch.nn.LayerNorm):
            want_free |= {id(m.weight), id(m.bias)}
        elif isinstance(m, torch.nn.Embedding) and m is not model.segment:
            want_decay.add(id(m.weight))
    name = {id(p): n for n, p in model.named_parameters()}
    assert {name[id(p)] for p in decay["params"]} == {name[i] for i in want_decay}
    assert {name[id(p)] for p in no_decay["params"]} == {name[i] for i in want_free}
    assert len(decay["params"]) + len(no_decay["params"]) == len(list(model.parameters()))
    # Frozen GPT-2: only the trainable parameters are handed to the optimiser.
    frozen = ReasonModule(config=replace(TINY, train_mode="frozen"), lr_decay_steps=10)
    groups = frozen.configure_optimizers()["optimizer"].param_groups
    name = {id(p): n for n, p in frozen.model.named_parameters()}
    handed = {name[id(p)] for g in groups for p in g["params"]}
    assert handed == {n for n, p in frozen.model.named_parameters() if p.requires_grad}
    assert handed and not any(n.startswith("gpt2.") for n in handed)
