"""Privacy: DP-SGD's per-example gradients, sampling and accounting; the membership attack; personal data
in outputs. End to end: ``train --config configs/dp.yaml`` and ``membership`` on the tiny fixture."""
from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
import torch
from matplotlib.figure import Figure

from mmreason import membership, paths, pii, train
from mmreason.datasets import pii as personal_data
from mmreason.model.network import ModelConfig, ReasonModel
from mmreason.training import cli, privacy

from conftest import CUSTOMERS, make_hm, work_in
from test_train import TINY as TRAIN_TINY

# ----------------------------------------------------------------------------- DP-SGD

def _batch(B=3, T=7, V=50, seed=0):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, V, (B, T), generator=g)
    mask = torch.ones(B, T, dtype=torch.long)
    mask[0, 5:] = 0  # one right-padded row
    labels = ids.clone()
    labels[:, :3] = -100
    labels[0, 5:] = -100
    return {"photo_embedding": torch.randn(B, 8, generator=g), "has_photo": torch.tensor([True, False, True]),
            "input_ids": ids, "segment_ids": torch.randint(1, 5, (B, T), generator=g), "attention_mask": mask,
            "labels": labels}


def _model(mapper="mlp", copy_head=False):
    torch.manual_seed(0)
    m = ReasonModel(ModelConfig(n_layer=1, n_head=2, n_embd=16, vocab_size=50, clip_dim=8, prefix_len=2,
                                dropout=0.0, mapper=mapper, copy_head=copy_head))
    with torch.no_grad():
        m.segment.weight.normal_()  # zero at init: make the photo segment's gradient visible
    privacy.prepare_model(m)
    return m


@pytest.mark.parametrize("mapper,copy_head", [("mlp", False), ("transformer", False), ("mlp", True)])
def test_per_example_gradients_are_each_examples_own_gradient(mapper, copy_head):
    """Opacus' hooks give, for every trainable parameter (tied embeddings, the photo segment, the mapper,
    the copy head's layers), exactly the gradient of each example's loss computed alone."""
    from opacus import GradSampleModule

    m, batch = _model(mapper, copy_head), _batch()
    alone = []
    for i in range(3):
        m.zero_grad()
        privacy.example_losses(m, {k: v[i:i + 1] for k, v in batch.items()})[0].sum().backward()
        alone.append({k: p.grad.clone() for k, p in m.named_parameters() if p.requires_grad})
    m.zero_grad()
    GradSampleModule(m, batch_first=True, loss_reduction="mean")
    privacy.example_losses(m, batch)[0].mean().backward()
    checked = 0
    for k, p in m.named_parameters():
        if p.requires_grad:
            for i in range(3):
                torch.testing.assert_close(p.grad_sample[i], alone[i][k], atol=1e-6, rtol=1e-4, msg=f"{k}[{i}]")
            checked += 1
    assert checked == sum(1 for p in m.parameters() if p.requires_grad) and not m.no_photo.requires_grad
    if copy_head:
        assert m.copy.query.weight.grad_sample.abs().sum() > 0 and not m.copy.beta.requires_grad
    assert m.segment.weight.grad_sample[0, 0].abs().sum() > 0  # the photo segment row is seen per example


@pytest.mark.parametrize("copy_head", [False, True])
def test_example_losses_average_to_the_models_token_loss_on_equal_lengths(copy_head):
    m, batch = _model(copy_head=copy_head), _batch()
    batch["labels"][0, 5:] = batch["input_ids"][0, 5:]  # every row scores 4 tokens
    batch["attention_mask"][0, 5:] = 1
    per, n = privacy.example_losses(m, batch)
    loss, count = m.reason_loss(*(batch[k] for k in ("photo_embedding", "has_photo", "input_ids", "segment_ids",
                                                     "attention_mask", "labels")))
    assert n.tolist() == [4, 4, 4] and int(count) == 12
    torch.testing.assert_close(per.mean(), loss, atol=1e-6, rtol=1e-5)


def test_dp_config_is_the_default_run_plus_dp():
    """configs/dp.yaml trains the default model on the default data (copy head, retrieved copies, caps):
    it differs from configs/cpu.yaml only in the DP settings, the step budget, the run's folder, and the
    purchase names written out in the targets (data.slots false): the hook's names are what a customer's
    membership would leak, so the privacy runs learn them as written, and the attack's reference does too."""
    import yaml

    def flat(d, pre=""):
        out = {}
        for k, v in d.items():
            out |= flat(v, f"{pre}{k}.") if isinstance(v, dict) else {pre + k: v}
        return out

    cpu = flat(yaml.safe_load((cli.CONFIG_DIR / "cpu.yaml").read_text()))
    dp = flat(yaml.safe_load((cli.CONFIG_DIR / "dp.yaml").read_text().replace("artifacts/runs/dp", "artifacts/runs/cpu")))
    differ = {k for k in cpu.keys() | dp.keys() if cpu.get(k) != dp.get(k)}
    allowed = {"trainer.max_epochs", "trainer.max_steps", "trainer.val_check_interval", "trainer.check_val_every_n_epoch",
               "trainer.gradient_clip_val",
               "data.batch_size", "data.sampling", "data.holdout_customers", "data.slots"}
    assert {k for k in differ if not k.startswith("model.dp.")} <= allowed
    assert dp["model.config.copy_head"] and "retrieved" in dp["data.prompt_fields"] and dp["model.dp.target_epsilon"]
    assert dp["data.slots"] is False


def test_poisson_sampler_is_independent_per_draw_and_resumes():
    s = privacy.PoissonBatchSampler(1000, 50, seed=3)
    batches = list(s)
    assert len(batches) == len(s) == 20 and all(batches)
    sizes = [len(b) for b in batches]
    assert min(sizes) != max(sizes) and 40 < np.mean(sizes) < 60  # Poisson: sizes vary around q * N
    assert all(len(set(b)) == len(b) for b in batches)
    s.skip = 5
    assert list(s) == batches[5:]  # resuming mid-epoch draws what the uninterrupted run drew
    s.set_epoch(1)
    assert list(s) != batches


def test_customer_sampler_takes_customers_not_examples_and_one_example_each():
    """User-level sampling: 400 customers with 1 to 40 examples each; a batch takes a customer with
    probability q = 20 / 400 whatever their number of examples, and at most one of their examples."""
    rng = np.random.default_rng(0)
    counts = rng.integers(1, 41, 400)
    groups = rng.permutation(np.repeat([f"c{i:03d}" for i in range(400)], counts))  # rows in no order
    s = privacy.CustomerPoissonBatchSampler(groups, 20, seed=3)
    assert len(s) == 20 and s.q == 20 / 400
    batches = [b for e in range(10) for b in (s.set_epoch(e), list(s))[1]]
    taken = np.zeros(400)
    heavy, seen = counts >= 20, set()
    for b in batches:
        custs = groups[b]
        assert len(set(custs)) == len(custs)  # one example per customer taken
        taken[[int(c[1:]) for c in custs]] += 1
        seen.update(b)
    rate = taken / len(batches)
    assert abs(rate[heavy].mean() - 0.05) < 0.01 and abs(rate[~heavy].mean() - 0.05) < 0.01  # not by size
    assert len(seen) > 0.5 * len(batches) * 20  # the example drawn varies across a customer's examples
    s.set_epoch(0)
    first = list(s)
    s.skip = 7
    assert list(s) == first[7:]  # resumes exactly


def test_held_out_customers_are_stable_and_near_the_fraction():
    ids = [f"{i:064x}" for i in range(2000)]
    out = privacy.held_out_customers(ids, 0.2)
    assert out == privacy.held_out_customers(list(reversed(ids)), 0.2)  # order does not matter
    assert 0.17 < len(out) / len(ids) < 0.23 and out != privacy.held_out_customers(ids, 0.2, seed=1)
    assert privacy.held_out_customers(ids, 0.0) == set()


def test_accountant_epsilon_grows_with_steps_and_falls_with_noise():
    e = [privacy.epsilon(1.0, 0.01, s, 1e-5) for s in (0, 10, 100, 1000)]
    assert e[0] == 0 and e[1] < e[2] < e[3]
    assert privacy.epsilon(2.0, 0.01, 100, 1e-5) < e[2]
    with pytest.raises(ValueError):
        privacy.DPConfig(target_epsilon=None, noise_multiplier=None)


@pytest.mark.parametrize("n,target", [(17_000, 8.0), (1_100, 1.0)])  # about the README's per-example, per-customer N
def test_noise_search_spends_the_target_without_the_far_orders_warning(n, target, recwarn):
    # before: Opacus warned "Optimal order is the largest alpha" from the search's first, far too noisy tries
    sigma = privacy.noise_for(target, 1 / n, 64 / n, 150)
    assert [str(w.message) for w in recwarn] == []
    assert target - 0.005 <= privacy.epsilon(sigma, 64 / n, 150, 1 / n) <= target  # and its own order is in range
    assert [str(w.message) for w in recwarn] == []


@pytest.mark.parametrize("noise", [None, 0.7])
def test_the_optimizer_adds_the_noise_and_clips_at_the_norm_the_accounting_reports(noise):
    """epsilon is computed from Accounting's noise and clip: the DP optimizer must use exactly those."""
    data = SimpleNamespace(sampling="poisson", batch_size=4, frame=lambda stage: pd.DataFrame({"customer_id": list("ab")}),
                           dataset=lambda stage: list(range(40)))
    trainer = SimpleNamespace(datamodule=data, world_size=1, accumulate_grad_batches=1, gradient_clip_val=None,
                              max_steps=5, max_epochs=1)
    module = SimpleNamespace(dp=privacy.DPConfig(target_epsilon=3.0, noise_multiplier=noise, max_grad_norm=0.25),
                             trainer=trainer, model=torch.nn.Linear(3, 2))
    opt = privacy.make_private(module, torch.optim.SGD(module.model.parameters(), lr=0.1))
    acc = module.accounting
    assert opt.noise_multiplier == acc.noise_multiplier > 0 and opt.max_grad_norm == acc.max_grad_norm == 0.25
    if noise is None:
        assert acc.epsilon(5) == pytest.approx(3.0, abs=0.02)  # calibrated to the target over max_steps
    else:
        assert acc.noise_multiplier == 0.7


# ----------------------------------------------------------------------------- membership attack

def test_auc_with_interval_on_planted_scores():
    member = np.array([True] * 50 + [False] * 50)
    groups = np.arange(100) // 2
    auc, lo, hi = membership.auc_with_interval(member.astype(float), member, groups)
    assert auc == lo == hi == 1.0
    auc, lo, hi = membership.auc_with_interval(np.zeros(100), member, groups)
    assert auc == 0.5
    rng = np.random.default_rng(0)
    auc, lo, hi = membership.auc_with_interval(rng.normal(size=100) + member, member, groups)
    assert 0.6 < auc < 0.9 and lo < auc < hi


def test_attack_scores_lower_loss_as_member_per_example_and_per_customer():
    frame = pd.DataFrame({"customer_id": list("aabbccdd"), "member": [True] * 4 + [False] * 4})
    loss = np.array([1.0, 2.25, 1.5, 2.5, 2.0, 2.2, 2.1, 2.3])  # members lower on average, not each example
    out = membership.attack(frame, loss)
    assert out["customer_auc"] == 1.0 and out["example_auc"] == 9 / 16  # 9 of 16 pairs ordered right
    assert out["member_loss"] == pytest.approx(1.8125) and out["nonmember_loss"] == pytest.approx(2.15)
    assert "hook_auc" not in out
    assert membership.attack(frame, loss, hook=-loss)["hook_auc"] == 1 - out["example_auc"]


def test_calibration_removes_a_difference_between_the_groups_and_keeps_membership():
    """Non-members here have harder examples (+0.8 loss under any model): the plain attack scores that as
    membership even for a run that learnt nothing of its members; the calibrated one does not, and still
    finds a run whose members' losses are lower than the reference's pattern predicts."""
    rng = np.random.default_rng(0)
    n = 400
    frame = pd.DataFrame({"customer_id": [f"c{i}" for i in range(n)], "member": np.arange(n) < n // 2})
    hard = rng.normal(size=n) + 0.8 * ~frame["member"].to_numpy()        # each example's difficulty
    ref = {"path": None, "loss": 2.0 + hard, "control": None}           # the reference trained on everyone
    blind = 3.0 + hard + 0.1 * rng.normal(size=n)                        # saw no member: difficulty only
    leaky = blind - 0.5 * frame["member"].to_numpy()                     # members' losses lower
    assert membership.attack(frame, blind)["example_auc"] > 0.6          # the groups' difference, not leakage
    assert abs(membership.calibrated(frame, blind, frame.iloc[:0], None, ref, False)["calibrated_example_auc"] - 0.5) < 0.06
    assert membership.calibrated(frame, leaky, frame.iloc[:0], None, ref, False)["calibrated_example_auc"] > 0.9
    assert np.isnan(membership.calibrated(frame, blind, frame, None, ref, same=True)["calibrated_example_auc"])


def test_row_losses_split_each_row_and_its_hook():
    """Three rows of 3, 2 and 4 scored tokens; hooks of 2, 5 (longer than the row: all of it) and 0 (one token)."""
    token = np.array([1.0, 3.0, 8.0, 2.0, 4.0, 5.0, 7.0, 7.0, 7.0])
    mean, hook = membership.row_losses(token, np.array([3, 2, 4]), np.array([2, 5, 0]))
    np.testing.assert_allclose(mean, [4.0, 3.0, 6.5])
    np.testing.assert_allclose(hook, [2.0, 3.0, 5.0])


def test_attack_population_splits_by_whole_customers():
    ids = [f"{i:064x}" for i in range(200)]
    ex = pd.DataFrame({"example_id": range(2000), "customer_id": np.repeat(ids, 10),
                       "split_temporal": ["train"] * 8 * 200 + ["test"] * 2 * 200,
                       "split_unseen": "train"})
    ex["split_temporal"] = np.tile(["train"] * 8 + ["test"] * 2, 200)
    pop = membership.attack_population(ex, 0.2, n_customers=30, per_customer=3)
    out = privacy.held_out_customers(ids, 0.2)
    assert (pop["split_temporal"] == "train").all()
    assert set(pop.loc[~pop["member"], "customer_id"]) <= out and not set(pop.loc[pop["member"], "customer_id"]) & out
    per = pop.groupby("customer_id").size()
    assert per.max() == 3 and pop.groupby("member")["customer_id"].nunique().tolist() == [30, 30]


# ----------------------------------------------------------------------------- personal data

@pytest.fixture
def personal():
    words = ["wildcat", "mark"]  # catalogue words: a one-word name that is one is not flagged
    return personal_data.PersonalData(CUSTOMERS + ["0123456789abcdef" * 4],
                            ["Jane Doe", "Amazon Customer", "Wildcat", "Mark", "JP", "Tonya B.", "Sws", "Ann Li",
                             "Tova"], words)


@pytest.mark.parametrize("text, kind", [
    ("customer " + "0123456789abcdef" * 4, "customer_id"),
    ("user 0123456789a… bought", "customer_id"),           # an 11-character prefix: longer than the README's 10
    ("id ...89abcdef0123...", "customer_id"),              # any other 11-character piece
    ("thanks, jane doe!", "reviewer_name"),
    ("as Tonya B. said", "reviewer_name"),
    ("by ann li, 5 stars", "reviewer_name"),               # two short words are still a name
    ("Tova loved it", "reviewer_name"),                    # one word of 4 letters is still a name
    ("perfect for a 34-year-old", "age"),                   # hyphens between the words, as "34 years old"
    ("perfect at 34 years old", "age"),
    ("profile: aged 41; club active", "age"),
    ('{"age": 23.0}', "age"),
])
def test_scan_text_finds_personal_data(personal, text, kind):
    found = {f.kind for f in personal.scan_text(text, "x")}
    assert kind in found, (text, found)


@pytest.mark.parametrize("text", [
    "user 0123456789… (10 characters, as in the README)", "profile: age 25-34; club active", "age 65+",
    "Amazon Customer liked it", "Wildcat print top", "Mark your calendar", "a JP style", "sha 89abcdef0",
    "Matches your taste for black dress: you have bought them twice.",
    "group: Sws.: Sol 1",                                  # a 3-letter one-word name: garbled sample text
])
def test_scan_text_allows_what_is_not_personal(personal, text):
    assert personal.scan_text(text, "x") == []


def test_findings_never_repeat_more_than_the_allowed_prefix(personal):
    f = personal.scan_text("id " + "0123456789abcdef" * 4, "x")
    assert len(f) == 1 and len(f[0].shown) == personal_data.ID_PREFIX and "0123456789abcdef"[:11] not in str(f[0])


def test_figure_text_is_scanned(personal):
    fig = Figure()
    ax = fig.add_subplot()
    ax.set_title(f"user {CUSTOMERS[0][:10]}…")  # what the case studies show: allowed
    assert personal.scan_figure(fig) == []
    ax.set_xlabel(f"user {CUSTOMERS[0]}")
    ax.text(0, 0, "Jane Doe, 41 years old")
    assert {f.kind for f in personal.scan_figure(fig)} == {"customer_id", "reviewer_name", "age"}


def test_pii_cli_scans_folders_and_exits_1_on_findings(tmp_path, capsys):
    hm = make_hm(tmp_path / "hm", broken_photo=False, missing_photo=False, bad_rows=False)
    out = tmp_path / "planted"  # the session's own scan skips it (conftest)
    out.mkdir()
    (out / "ok.md").write_text(f"customer {CUSTOMERS[1][:10]}, age 25-34\n")
    assert pii.main([str(out), "--hm-dir", str(hm), "--amazon", str(tmp_path / "none.json.gz")]) == 0
    (out / "deep").mkdir()
    (out / "deep" / "bad.json").write_text(json.dumps({"customer_id": CUSTOMERS[1]}))
    assert pii.main([str(out), "--hm-dir", str(hm), "--amazon", str(tmp_path / "none.json.gz")]) == 1
    text = capsys.readouterr().out
    assert "bad.json: customer_id" in text and CUSTOMERS[1][:11] not in text
    assert pii.main([str(tmp_path / "missing"), "--hm-dir", str(hm)]) == 2


# ----------------------------------------------------------------------------- end to end on the fixture

# test_train's tiny settings, minus its "--trainer.max_steps -1" (configs/dp.yaml sets the DP run's steps)
TINY = [*TRAIN_TINY[:-2], "--ckpt_path", "none"]


@pytest.fixture(scope="module")
def dp_runs(tmp_path_factory):
    """A DP-SGD run (configs/dp.yaml) and a plain run, both holding out half the customers, on the fixture."""
    root = tmp_path_factory.mktemp("privacy")
    make_hm(root / "hm", broken_photo=False, missing_photo=False, bad_rows=False)
    return root


@pytest.mark.slow
def test_dp_training_prints_epsilon_and_membership_reports(dp_runs, monkeypatch, capsys):
    work_in(monkeypatch, dp_runs)
    common = [*TINY, "--data.pipeline.hm_dir", str(dp_runs / "hm"), "--data.holdout_customers", "0.5",
              "--trainer.max_epochs", "10",  # a fixture epoch is one Poisson batch: max_steps decides
              "--trainer.val_check_interval", "1",  # dp.yaml counts it in steps: an integer
              "--data.slots", "false"]  # names written out, as dp.yaml trains (cpu.yaml: slots); the reference too
    assert train.main(["--config", str(cli.CONFIG_DIR / "dp.yaml"), *common, "--trainer.max_steps", "3",
                       "--model.dp.target_epsilon", "2", "--trainer.default_root_dir", "artifacts/runs/dp"]) == 0
    out = capsys.readouterr().out
    assert "[privacy] epsilon 2.00 at delta" in out and "protected unit: one example, not one customer" in out
    run = dp_runs / "artifacts" / "runs" / "dp"
    summary = json.loads((run / "summary.json").read_text())
    acc = summary["privacy"]
    assert acc["steps"] == 3 and acc["epsilon"] == pytest.approx(2.0, abs=0.02) and acc["unit"] == "example"
    assert acc["epsilon"] == pytest.approx(privacy.epsilon(acc["noise_multiplier"], acc["sample_rate"], 3,
                                                           acc["delta"]))
    assert acc["delta"] == pytest.approx(1 / acc["n_units"])
    ckpt = torch.load(run / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)
    assert ckpt["privacy"]["epsilon"] == pytest.approx(acc["epsilon"])
    assert not any("_module" in k for k in ckpt["state_dict"])  # plain weights: loads like any run
    assert all(len(s["customer_id"]) <= personal_data.ID_PREFIX for s in summary["samples"])
    # user-level: customers sampled, one example each; epsilon is per customer, at delta 1/customers
    assert train.main(["--config", str(cli.CONFIG_DIR / "dp.yaml"), *common, "--trainer.max_steps", "2",
                       "--data.sampling", "customer", "--model.dp.target_epsilon", "4",
                       "--trainer.default_root_dir", "artifacts/runs/dp-customer"]) == 0
    assert "protected unit: one customer" in capsys.readouterr().out
    user = json.loads((dp_runs / "artifacts" / "runs" / "dp-customer" / "summary.json").read_text())["privacy"]
    assert user["unit"] == "customer" and user["epsilon"] == pytest.approx(4.0, abs=0.02)
    assert 0 < user["n_units"] <= len(set(CUSTOMERS) - privacy.held_out_customers(CUSTOMERS, 0.5))
    # without Poisson sampling the accounting would not hold: refused in one line
    with pytest.raises(Exception, match="Poisson"):
        train.main(["--config", str(cli.CONFIG_DIR / "dp.yaml"), *common, "--data.sampling", "bucket",
                    "--trainer.max_steps", "1", "--trainer.default_root_dir", "artifacts/runs/dp-bucket"])
    assert train.main([*common, "--trainer.max_steps", "3", "--trainer.default_root_dir", "artifacts/runs/plain"]) == 0
    everyone = [a for a in common if a not in ("--data.holdout_customers", "0.5")]
    assert train.main([*everyone, "--trainer.max_steps", "3", "--trainer.default_root_dir", "artifacts/runs/all"]) == 0
    capsys.readouterr()
    res = dp_runs / "results"
    # the reference must have trained on both groups: one line, exit 2
    assert membership.main(["--runs", "artifacts/runs/dp", "--reference", "artifacts/runs/plain", "--holdout", "0.5",
                            "--customers", "2", "--per-customer", "2", "--n-gen", "0", "--out", str(res)]) == 2
    assert "the reference must be trained on every customer" in capsys.readouterr().err and not res.exists()
    # a reference whose targets spell the purchase name as a slot scores other tokens than the run: refused
    assert train.main([*everyone, "--data.slots", "true", "--trainer.max_steps", "1",
                       "--trainer.default_root_dir", "artifacts/runs/all-slots"]) == 0
    capsys.readouterr()
    assert membership.main(["--runs", "artifacts/runs/dp", "--reference", "artifacts/runs/all-slots", "--holdout",
                            "0.5", "--customers", "2", "--per-customer", "2", "--n-gen", "0", "--out", str(res)]) == 2
    assert "differ in data.slots" in capsys.readouterr().err and not res.exists()
    assert membership.main(["--runs", "artifacts/runs/plain", "artifacts/runs/dp", "--holdout", "0.5",
                            "--customers", "2", "--per-customer", "2", "--n-gen", "2", "--out", str(res),
                            "--reference", "artifacts/runs/all"]) == 0
    report = json.loads((res / "cpu.json").read_text())
    plain, dp = report["runs"]
    assert plain["epsilon"] is None and dp["epsilon"] == pytest.approx(acc["epsilon"])
    for r in (plain, dp):
        assert 0 <= r["example_auc"] <= 1 and 0 <= r["customer_auc"] <= 1 and 0 <= r["hook_auc"] <= 1
        assert 0 <= r["calibrated_example_auc"] <= 1
        assert r["val_ppl"] > 1
    assert "| artifacts/runs/dp | DP-SGD, 3 Poisson steps" in (res / "cpu.md").read_text()
    # every output these commands wrote is free of personal data
    personal = personal_data.PersonalData.from_data(dp_runs / "hm")
    outputs = [res, run / "summary.json", dp_runs / "artifacts" / "runs" / "plain" / "summary.json",
               *(dp_runs / "artifacts" / "runs").rglob("metrics.csv"), *(dp_runs / "artifacts" / "runs").rglob("*.yaml")]
    assert personal.scan_paths(outputs) == []


def test_a_tokenizer_vocabulary_is_not_an_age_record(personal, tmp_path):
    """A BPE vocabulary maps the token "age" to its id ('"age": 4'); the same text in a results file is an age."""
    text, d = '{"model": {"vocab": {"age": 4, "ages": 5}}}', tmp_path / "planted"  # the session scan skips it
    d.mkdir()
    (d / "tokenizer.json").write_text(text)
    (d / "metrics.json").write_text(text)
    assert personal.scan_file(d / "tokenizer.json") == []
    assert [f.kind for f in personal.scan_file(d / "metrics.json")] == ["age"]


def test_utility_scores_what_the_model_decoded_not_the_offered_retrieved_copy(monkeypatch):
    """The utility columns compare runs: they score each run's own greedy reason, never the retrieved copy the
    deployed offer would show after the evidence's hook (the same text for every run)."""
    from types import SimpleNamespace

    from mmreason.decoding.shown import Shown

    calls, scored = {}, {}

    def fake_sample(model, data, frame, decode, constrain=True, offer_retrieved=None):
        calls.update(constrain=constrain, offer_retrieved=offer_retrieved, strategy=decode.strategy)
        return [Shown("Evidence hook. A retrieved copy.", True, [], ["Model hook. Its own copy."], "retrieved", "evidence")
                for _ in range(len(frame))]

    def fake_score(hyps, *a, **k):
        scored["hyps"] = hyps
        return dict.fromkeys(("copy_cider", "grounding_overall_precision", "grounding_colour_precision",
                              "grounding_colour_mention_rate"), 0.0)

    frame = pd.DataFrame({"article_id": [1, 2]})
    art = SimpleNamespace(examples=None, items=None, data_dir=Path("data"))
    monkeypatch.setattr(membership, "val_perplexity", lambda module, data: 2.0)
    monkeypatch.setattr(membership, "test_frame", lambda *a, **k: frame)
    monkeypatch.setattr(membership, "sample_reasons", fake_sample)
    monkeypatch.setattr(membership, "score", fake_score)
    monkeypatch.setattr(membership, "histories", lambda *a, **k: [None, None])
    monkeypatch.setattr(membership, "vocab_from_items", lambda items: None)
    monkeypatch.setattr(membership.pd, "read_parquet", lambda path: None)
    out = membership.utility(SimpleNamespace(model=None), SimpleNamespace(artifacts=art), 2, 0)
    assert calls == {"constrain": False, "offer_retrieved": 0, "strategy": "greedy"}
    assert scored["hyps"] == ["Model hook. Its own copy."] * 2 and out["val_ppl"] == 2.0


def test_the_readme_shows_the_committed_membership_table():
    # the README's Privacy section copies results/privacy/cpu.md's table; a rerun that leaves it behind is caught here
    report = (paths.REPO_ROOT / "results" / "privacy" / "cpu.md").read_text()
    table = [line for line in report.splitlines() if line.startswith("| ")]
    readme = (paths.REPO_ROOT / "README.md").read_text().splitlines()
    assert len(table) > 2 and [line for line in table if line not in readme] == []
