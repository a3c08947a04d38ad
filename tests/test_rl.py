"""RL from purchase feedback and explained recommendations, on a tiny fixture: the reward's parts, the
log-probabilities the policy gradient uses, ``python -m mmreason.rl`` end to end with an exact resume,
and ``python -m mmreason.recommend --user ID --explain`` through the generator."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from mmreason import feedback as FB
from mmreason import recommend as R
from mmreason import rl, train
from mmreason.datasets.prompts import evidence_fields
from mmreason.decoding.filters import Filter, vocab_from_items
from mmreason.decoding.generate import DecodeConfig, decode
from mmreason.model.collate import EOS, token_id
from mmreason.policy import reinforce
from mmreason.serving.explainer import Explainer
from mmreason.training.runs import load_run

from conftest import make_hm, work_in
from test_train import TINY


@pytest.fixture(scope="module")
def work(tmp_path_factory):
    """A tiny generator run and feedback model, trained by the real CLIs in their own artifacts folder."""
    root = tmp_path_factory.mktemp("rl")
    make_hm(root / "hm", broken_photo=False, missing_photo=False, bad_rows=False)
    with pytest.MonkeyPatch.context() as mp:
        work_in(mp, root)
        # dropout on (configs/cpu.yaml trains without it), so the exact resume below also replays dropout masks
        assert train.main([*TINY, "--data.pipeline.hm_dir", str(root / "hm"), "--trainer.max_epochs", "2",
                           "--model.config.dropout", "0.1",
                           "--trainer.default_root_dir", str(root / "run"), "--n_report", "0",
                           "--model.n_samples", "0", "--ckpt_path", "none"]) == 0
        assert FB.main(["--data", str(root / "artifacts" / "data" / "hm"), "--out", str(root / "artifacts" / "feedback"),
                        "--negatives", "2", "--no-progress"]) == 0
    return root


@pytest.fixture
def in_work(work, monkeypatch):
    return work_in(monkeypatch, work)


def rl_args(work, out, *extra):
    return ["--run", str(work / "run"), "--out", str(out), "--results", str(out / "results"), "--prompts", "3",
            "--samples", "2", "--max-new-tokens", "8", "--n-eval", "0", "--n-val", "4", "--eval-every", "1",
            "--save-every", "1", "--decode", "greedy", "--no-progress", "--lr", "1e-3", *extra]


def test_reward_parts_follow_the_article_and_the_formula(in_work):
    _, data = load_run(in_work / "run")
    items = data.artifacts.items
    fb = reinforce.load_feedback(None, data.artifacts.data_dir)
    config = reinforce.RLConfig(w_feedback=1.0, w_grounding=0.5, w_reference=2.0, w_filter=0.5)
    reward = reinforce.Reward(fb, items, config)
    row = {"customer_id": "a" * 64, "article_id": 300000001, "t_dat": pd.Timestamp("2019-04-01"),  # white striped tee
           "reason": "T-shirt in cotton jersey with stripes."}
    hist = {"n": 4, "colours": {"black", "light blue"}, "types": {"trousers", "vest top"}, "patterns": {"denim", "solid"},
            "names": {"skinny jeans", "strap top", "wide trousers"}}
    texts = ["A white t-shirt in cotton jersey with stripes.",   # true colour and type: grounded, passes
             "A red dress in cotton jersey.",                    # wrong colour and wrong type: filtered
             "In cotton jersey with stripes.",                   # names neither
             "A white t-shirt with an all over pattern.",        # true colour and type, wrong pattern: filtered
             "A white t-shirt in cotton jersey with stripes."]   # the first, for a row whose evidence has a hook
    hooked = row | {"hook": "White is a regular in your wardrobe."}  # ... which it does not open with
    r = reward(texts, [row] * 4 + [hooked], [hist] * 5)
    assert r["grounding"].tolist() == [1.0, -1.0, 0.0, 0.5, 1.0]
    assert r["passed"].tolist() == [1.0, 0.0, 1.0, 0.0, 0.0] and "wrong_colour" in r["causes"][1]
    assert r["causes"][3] == ["wrong_pattern"] and r["causes"][4] == ["unsupported_hook"]
    p = fb.score_batch([row["customer_id"]] * 5, [row["article_id"]] * 5, texts, [row["t_dat"]] * 5)
    np.testing.assert_allclose(r["feedback"], p)
    assert r["reference"][2] == pytest.approx(2 * 5 / (5 + 7))  # LCS 5 words; 5 and 7 long ("t shirt" is two)
    assert r["reference"][0] > r["reference"][1]
    np.testing.assert_allclose(r["reward"], np.log(p / (1 - p)) + 0.5 * r["grounding"] + 2.0 * r["reference"]
                               - 0.5 * (1 - r["passed"]))


def test_sequence_log_probs_match_the_sampler(in_work):
    """The policy gradient scores exactly the tokens the sampler drew (EOS included when it stopped)."""
    module, data = load_run(in_work / "run")
    tok = data.tokenizer
    eos = token_id(tok, EOS)
    interactions = pd.read_parquet(data.artifacts.data_dir / "interactions.parquet")
    prompts = reinforce.Prompts(data, data.frame("train"), interactions, data.artifacts.items)
    idx = list(range(min(3, len(prompts))))
    cfg = DecodeConfig("sample", max_new_tokens=6, num_return_sequences=2)
    cands = decode(module.model, prompts.batch(idx, eos), cfg, eos, torch.Generator().manual_seed(0))
    samples = [[ids for ids, _ in c] for c in cands]
    batch = reinforce.sequence_batch(prompts, idx, samples, eos, eos, cfg.max_new_tokens)
    with torch.no_grad():
        logp_all, targets, row = reinforce.token_logprobs(module.model, batch)
    logp = logp_all.gather(1, targets[:, None]).squeeze(1)
    for r, (ids, score) in enumerate(c for cs in cands for c in cs):
        n = len(ids) + (len(ids) < cfg.max_new_tokens)
        assert (row == r).sum() == n
        assert logp[row == r].sum().item() / n == pytest.approx(score, abs=1e-4)


class PlantedReward:
    """Stands in for ``reinforce.Reward``: call k returns the k-th planted reward vector, and records what it saw."""

    def __init__(self, *rewards):
        self.rewards, self.texts, self.rows = [np.asarray(r, dtype=float) for r in rewards], [], []

    def __call__(self, texts, rows, hists):
        r = self.rewards[len(self.texts)]
        assert len(r) == len(texts) == len(rows)
        self.texts.append(list(texts))
        self.rows.append(list(rows))
        zero = np.zeros(len(texts))
        return {"reward": r, "feedback": zero + 0.5, "grounding": zero, "reference": zero, "passed": zero + 1}


def _step(work, monkeypatch, reward, lr=0.0, train_mode=False, **config):
    """One ``reinforce.rl_step`` from the supervised model, against a second copy of it as the reference.
    Returns (its log row, the policy, the sequence batch it scored, the policy's (N, V) log-probs, targets, rows)."""
    policy, data = load_run(work / "run")
    reference, _ = load_run(work / "run")
    if train_mode:
        policy.train()  # as a caller that left dropout on
    interactions = pd.read_parquet(data.artifacts.data_dir / "interactions.parquet")
    prompts = reinforce.Prompts(data, data.frame("train"), interactions, data.artifacts.items)
    seen, real = [], reinforce.token_logprobs

    def recorded(model, batch):
        seen.append((batch, *real(model, batch)))
        return seen[-1][1:]

    monkeypatch.setattr(reinforce, "token_logprobs", recorded)
    optimizer = torch.optim.SGD(policy.model.parameters(), lr=lr)
    cfg = reinforce.RLConfig(**{"max_new_tokens": 6, "grad_clip": 1e9, **config})
    row = reinforce.rl_step(policy.model, reference.model, optimizer, prompts, reward, cfg, 0, data.tokenizer)
    batch, logp_all, targets, rows = seen[0]  # the policy's call (the reference's is seen[1])
    return row, policy, prompts, batch, logp_all.detach(), targets, rows


def _seq_logp(logp_all, targets, rows, n):
    return torch.zeros(n).index_add(0, rows, logp_all.gather(1, targets[:, None]).squeeze(1))


def test_rl_step_leave_one_out_baseline_and_no_kl_at_step_0(work, monkeypatch):
    planted = [1.0, 4.0, -2.0, 0.5, 0.5, 3.5]  # 2 prompts x 3 samples, prompt-major
    row, *_, logp_all, targets, rows = _step(work, monkeypatch, PlantedReward(planted), train_mode=True,
                                             prompts=2, samples=3, kl_coef=0.1)
    # each sample against the mean reward of its prompt's two other samples
    others = [[planted[j] for j in range(3 * (i // 3), 3 * (i // 3) + 3) if j != i] for i in range(6)]
    adv = [planted[i] - np.mean(others[i]) for i in range(6)]
    assert adv == [0.0, 4.5, -4.5, -1.5, -1.5, 3.0]
    seq = _seq_logp(logp_all, targets, rows, 6)
    # float32 terms of a few units that nearly cancel (advantages sum to 0 per prompt), summed in another
    # order: rounding ~1e-6 absolute, so 1e-5 absolute; a wrong baseline moves pg_loss by ~2e-3
    assert row["pg_loss"] == pytest.approx(-float((torch.tensor(adv) * seq).sum()) / rows.numel(), abs=1e-5)
    assert row["reward"] == pytest.approx(np.mean(planted), rel=1e-6)
    # The policy is the reference at step 0 and scores without dropout: the exact KL is 0 up to float32 rounding.
    assert row["kl"] == pytest.approx(0.0, abs=1e-6)


def test_rl_step_greedy_baseline_scores_one_greedy_reason_per_prompt(work, monkeypatch):
    planted, greedy = [1.0, 3.0, 0.0, -1.0], [2.0, -0.5]
    reward = PlantedReward(planted, greedy)
    row, policy, prompts, _, logp_all, targets, rows = _step(work, monkeypatch, reward, prompts=2, samples=2,
                                                             baseline="greedy")
    assert [len(t) for t in reward.texts] == [4, 2]
    assert reward.rows[1] == reward.rows[0][::2]  # the same prompts, one greedy reason each
    idx = [next(i for i, r in enumerate(prompts.rows) if r is row_) for row_ in reward.rows[1]]
    tok = load_run(work / "run")[1].tokenizer
    eos = token_id(tok, EOS)
    again = decode(policy.model, prompts.batch(idx, eos), DecodeConfig("greedy", max_new_tokens=6), eos)
    assert reward.texts[1] == [tok.decode(c[0][0], skip_special_tokens=True).strip() for c in again]
    adv = torch.tensor([1.0 - 2.0, 3.0 - 2.0, 0.0 + 0.5, -1.0 + 0.5])  # each sample minus its prompt's greedy reward
    seq = _seq_logp(logp_all, targets, rows, 4)
    assert row["pg_loss"] == pytest.approx(-float((adv * seq).sum()) / rows.numel(), abs=1e-5)  # as above


def test_rl_step_raises_the_log_prob_of_the_sample_above_its_baseline(work, monkeypatch):
    reward = PlantedReward([1.0, 0.0])  # one prompt, two samples: advantages +1 and -1
    row, policy, _, batch, logp_all, targets, rows = _step(work, monkeypatch, reward, lr=1e-2, prompts=1, samples=2,
                                                           kl_coef=0.0)
    assert reward.texts[0][0] != reward.texts[0][1]
    before = _seq_logp(logp_all, targets, rows, 2)
    with torch.no_grad():
        after = _seq_logp(*reinforce.token_logprobs(policy.model, batch), 2)
    # to first order in the learning rate the gap grows by lr * |grad(gap)|^2 / tokens > 0
    assert float(after[0] - after[1]) > float(before[0] - before[1]) + 1e-3


def test_hook_part_rewards_the_hook_with_the_retrieved_copy_and_credits_only_the_hook(work, monkeypatch):
    """part="hook": the reward sees the sampled reason's first sentence followed by the prompt's first retrieved
    copy, as the deployed offer shows it, and the policy gradient scores the hook's tokens alone, without EOS."""
    tok = load_run(work / "run")[1].tokenizer
    hook, copy = "You bought the striped tee.", "Soft jersey top in cotton."
    ids = tok.encode(f"{hook} {copy}", add_special_tokens=False)
    n_hook = len(tok.encode(hook, add_special_tokens=False))
    assert tok.decode(ids[:n_hook]) == hook and reinforce.hook_length(tok, ids) == n_hook
    one = tok.encode("Just this", add_special_tokens=False)  # one sentence: all of it is the hook
    assert reinforce.hook_length(tok, one) == len(one)
    planted = lambda model, batch, cfg, eos_id, gen=None: [[(ids, 0.0), (one, 0.0)]] * batch["input_ids"].size(0)  # noqa: E731
    monkeypatch.setattr(reinforce, "decode", planted)
    reward = PlantedReward([1.0, 0.0, 0.5, 0.5])
    _, _, prompts, batch, _, _, rows = _step(work, monkeypatch, reward, prompts=2, samples=2, kl_coef=0.0,
                                             max_new_tokens=80, part="hook")
    assert all(prompts.retrieved)  # the tiny run's prompt has the retrieved segment
    firsts = [prompts.retrieved[next(i for i, r in enumerate(prompts.rows) if r is seen)].split(" | ")[0]
              for seen in reward.rows[0][::2]]
    assert reward.texts[0] == [t for f in firsts for t in (f"{hook} {f}", f"Just this {f}")]
    eos = token_id(tok, EOS)
    labels = [[t for t in r if t != -100] for r in batch["labels"].tolist()]
    assert labels == [ids[:n_hook], one] * 2 and all(eos not in r for r in labels)
    assert rows.numel() == 2 * (n_hook + len(one))
    # part="reason" (the default): the whole sampled reason is shown and scored, EOS where the sample stopped
    reward = PlantedReward([1.0, 0.0, 0.5, 0.5])
    _, _, _, batch, *_ = _step(work, monkeypatch, reward, prompts=2, samples=2, kl_coef=0.0, max_new_tokens=80)
    assert reward.texts[0] == [f"{hook} {copy}", "Just this"] * 2
    assert [[t for t in r if t != -100] for r in batch["labels"].tolist()] == [ids + [eos], one + [eos]] * 2
    with pytest.raises(ValueError, match="part"):
        reinforce.RLConfig(part="copy")


def test_samples_of_a_slot_run_are_shown_and_rewarded_with_the_evidence_name(work):
    """A slot run (configs/cpu.yaml) samples collate.NAME_SLOT where its hook names a purchase: the reward must
    see the name the shown reason would carry, and the policy is credited for the slot it sampled."""
    tok = load_run(work / "run")[1].tokenizer
    ids = tok.encode("Like the <name> you bought. Soft jersey top.", add_special_tokens=False)
    prompts = type("P", (), {"names": [["Luna skinny"], []], "retrieved": [None, None]})()
    texts, credited = reinforce.shown_samples(tok, prompts, [0, 1], [[ids], [ids]], False, token_id(tok, EOS))
    assert texts[0] == "Like the Luna skinny you bought. Soft jersey top."
    assert "name" not in texts[1]  # no name to fill it with: dropped, and the filter judges the rest
    assert credited == [[ids], [ids]]
    # hook=True: the hook's ids are credited, and an empty sample is credited its stop (EOS), never nothing
    hooked = type("P", (), {"names": [["Luna skinny"]], "retrieved": ["Soft jersey top."], "offer": ["Soft jersey top."]})()
    eos = token_id(tok, EOS)
    texts, credited = reinforce.shown_samples(tok, hooked, [0], [[ids, []]], True, eos)
    assert credited[0][0] == ids[:reinforce.hook_length(tok, ids)] and credited[0][1] == [eos]


@pytest.mark.slow
def test_rl_cli_runs_resumes_exactly_and_reports(in_work, capsys, monkeypatch):
    assert rl.main(rl_args(in_work, in_work / "rl_a", "--steps", "2")) == 0
    out = capsys.readouterr().out
    assert "| unseen | supervised |" in out and "| temporal | RL |" in out
    assert "Rewarded and trained: the whole sampled reason" in out
    m = json.loads((in_work / "rl_a" / "results" / "rl.json").read_text())
    for part in ("before", "after"):
        assert set(m[part]["deployed"]) == {"unseen", "temporal"}
        assert {"reward", "feedback", "grounding", "passed"} <= set(m[part]["sampled"])
        assert {"distinct2", "usr", "copy_cider", "grounding_colour_precision", "first_choice_rejected"} <= set(
            m[part]["deployed"]["unseen"])
    log = pd.read_csv(in_work / "rl_a" / "log.csv")
    assert log["step"].tolist() == [1, 2] and "val_reward" in log
    # step 1 scores the supervised model itself: KL 0 up to float32 rounding; step 2 scores the updated policy
    assert log["kl"][0] == pytest.approx(0.0, abs=1e-6)
    assert log["kl"][1] > 1e-5  # measured 4e-4 after one AdamW step at lr 1e-3

    # Interrupted after one step, then continued to two: the same weights as the straight run.
    assert rl.main(rl_args(in_work, in_work / "rl_b", "--steps", "1")) == 0
    assert rl.main(rl_args(in_work, in_work / "rl_b", "--steps", "2")) == 0
    assert "resuming" in capsys.readouterr().out
    a, _ = load_run(in_work / "rl_a")
    b, _ = load_run(in_work / "rl_b")
    ref, _ = load_run(in_work / "run")
    for (name, pa), pb, pr in zip(a.state_dict().items(), b.state_dict().values(), ref.state_dict().values()):
        assert torch.equal(pa, pb), name
    assert any(not torch.equal(pa, pr) for pa, pr in zip(a.state_dict().values(), ref.state_dict().values()))
    # Other settings: no resume.
    assert rl.main(rl_args(in_work, in_work / "rl_b", "--steps", "2", "--kl-coef", "0.5")) == 0
    assert "starting afresh" in capsys.readouterr().out
    # The supervised run retrained in its folder (other weights, same path and settings): neither the RL checkpoint
    # nor the before-scores of the old weights are reused
    shutil.copytree(in_work / "run", in_work / "run2")
    args = rl_args(in_work, in_work / "rl_c", "--steps", "1")
    args[args.index("--run") + 1] = str(in_work / "run2")
    assert rl.main(args) == 0
    assert rl.main(args) == 0 and "resuming" in capsys.readouterr().out
    for f in (in_work / "run2" / "checkpoints").glob("*.ckpt"):
        ck = torch.load(f, map_location="cpu", weights_only=False)
        ck["state_dict"] = {k: v + 0.01 if v.is_floating_point() else v for k, v in ck["state_dict"].items()}
        torch.save(ck, f)
    assert rl.main(args) == 0
    out = capsys.readouterr().out
    assert "from another supervised checkpoint; starting afresh" in out and "scoring the supervised model" in out
    # Written by code whose reward scored other text (reinforce.REWARD_VERSION): neither is reused either. The
    # version moves on, as in code that changed the reward; the checkpoint and before.json keep theirs
    assert rl.main(args) == 0 and "resuming" in capsys.readouterr().out
    new_version = reinforce.REWARD_VERSION + 1
    monkeypatch.setattr(rl, "REWARD_VERSION", new_version)
    monkeypatch.setattr(reinforce, "REWARD_VERSION", new_version)
    assert rl.main(args) == 0
    out = capsys.readouterr().out
    assert "another reward" in out and "starting afresh" in out and "scoring the supervised model" in out
    # The same for reward code edited without a bump (reinforce.reward_code_sha256 moves with it)
    assert rl.main(args) == 0 and "resuming" in capsys.readouterr().out
    monkeypatch.setattr(rl, "reward_code_sha256", lambda: "filters.py as edited")
    monkeypatch.setattr(reinforce, "reward_code_sha256", lambda: "filters.py as edited")
    assert rl.main(args) == 0
    out = capsys.readouterr().out
    assert "another reward" in out and "starting afresh" in out and "scoring the supervised model" in out
    # and for a feedback model trained anew (another P(buy)); the same model copied elsewhere is the same reward
    fb = in_work / "artifacts" / "feedback"
    shutil.copytree(fb, in_work / "feedback_copy")
    assert rl.main([*args, "--feedback", str(in_work / "feedback_copy" / "model.pkl")]) == 0
    assert "resuming" in capsys.readouterr().out
    assert FB.main(["--data", str(in_work / "artifacts" / "data" / "hm"), "--out", str(in_work / "feedback_new"),
                    "--negatives", "3", "--no-progress"]) == 0
    assert (in_work / "feedback_new" / "model.pkl").read_bytes() != (fb / "model.pkl").read_bytes()
    assert rl.main([*args, "--feedback", str(in_work / "feedback_new" / "model.pkl")]) == 0
    out = capsys.readouterr().out
    assert "another reward" in out and "starting afresh" in out and "scoring the supervised model" in out
    assert rl.main(args) == 0  # back to the default feedback model (the checkpoint now holds the new one's run)
    capsys.readouterr()
    # Code that reports another metric rescores before.json, so both sides of the table report it, and keeps the
    # RL checkpoint: the metrics are no input of its training
    assert rl.main(args) == 0 and "scoring the supervised model" not in capsys.readouterr().out
    more = reinforce.KEY_METRICS + ["distinct1"]
    monkeypatch.setattr(rl, "KEY_METRICS", more)
    monkeypatch.setattr(reinforce, "KEY_METRICS", more)
    assert rl.main(args) == 0
    out = capsys.readouterr().out
    assert "resuming" in out and "scoring the supervised model" in out
    m = json.loads((in_work / "rl_c" / "results" / "rl.json").read_text())
    assert "distinct1" in m["before"]["deployed"]["unseen"] and "distinct1" in m["after"]["deployed"]["unseen"]
    assert m["meta"]["train_seconds"] == round(sum(r["seconds"] for r in m["log_tail"]))  # one step: all of the log
    # and so does code that computes a metric anew (reinforce.scoring_code_sha256 moves with its files)
    monkeypatch.setattr(rl, "scoring_code_sha256", lambda: "metrics.py as edited")
    assert rl.main(args) == 0
    out = capsys.readouterr().out
    assert "resuming" in out and "scoring the supervised model" in out


def test_the_scoring_code_fingerprint_moves_with_each_of_its_files(tmp_path, monkeypatch):
    for rel in reinforce.SCORING_CODE:
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_bytes((reinforce.PACKAGE / rel).read_bytes())
    monkeypatch.setattr(reinforce, "PACKAGE", tmp_path)
    seen = {reinforce.scoring_code_sha256()}
    for rel in reinforce.SCORING_CODE:
        (tmp_path / rel).write_text((tmp_path / rel).read_text() + "\n# a definition changed\n")
        seen.add(reinforce.scoring_code_sha256())
    assert len(seen) == 1 + len(reinforce.SCORING_CODE)
    assert {"metrics.py", "evaluation/systems.py"} <= set(reinforce.SCORING_CODE)


def test_the_reward_code_fingerprint_moves_with_the_filter_the_metrics_and_reward_only(tmp_path, monkeypatch):
    for rel in reinforce.REWARD_CODE:
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_bytes((reinforce.PACKAGE / rel).read_bytes())
    module = tmp_path / "policy" / "reinforce.py"
    module.parent.mkdir(exist_ok=True)
    module.write_bytes(Path(reinforce.__file__).read_bytes())
    monkeypatch.setattr(reinforce, "PACKAGE", tmp_path)
    seen = {reinforce.reward_code_sha256()}
    for rel in reinforce.REWARD_CODE:
        (tmp_path / rel).write_text((tmp_path / rel).read_text() + "\n# a rule changed\n")
        seen.add(reinforce.reward_code_sha256())

    class EditedReward(reinforce.Reward):  # another source for the class
        def grounding(self, text, article, causes):
            return 0.0

    monkeypatch.setattr(reinforce, "Reward", EditedReward)
    seen.add(reinforce.reward_code_sha256())
    assert len(seen) == 2 + len(reinforce.REWARD_CODE)
    assert {"decoding/filters.py", "metrics.py"} <= set(reinforce.REWARD_CODE)
    # an edit elsewhere in reinforce.py (the training step, the prompts) is no edit of the reward
    module.write_text(module.read_text() + "\n# the training step changed\n")
    assert reinforce.reward_code_sha256() in seen


def test_rl_cli_errors_in_one_line(in_work, tmp_path, capsys):
    assert rl.main(["--run", str(tmp_path / "nothing"), "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: no supervised checkpoint") and "\n" not in err
    # a feedback model named but missing: said in one line, and none trained beside the name (it was, before)
    missing = tmp_path / "typo" / "model.pkl"
    assert rl.main(rl_args(in_work, tmp_path / "o", "--steps", "1", "--feedback", str(missing))) == 2
    err = capsys.readouterr().err.strip()
    assert err == f"error: {missing}: no feedback model (python -m mmreason.feedback --out DIR writes DIR/model.pkl)"
    assert not (tmp_path / "typo").exists() and not (tmp_path / "o").exists()
    with pytest.raises(ValueError):
        reinforce.RLConfig(samples=1)


# Customer a's purchases in the fixture, as the filter reads a history (conftest.PURCHASES).
HISTORY_A = {"n": 5, "colours": {"black", "light blue", "white"}, "types": {"trousers", "vest top", "t-shirt"},
             "patterns": {"denim", "solid", "stripe"},
             "names": {"skinny jeans", "strap top", "wide trousers", "striped tee"}}


def test_explainer_and_recommend_explain(in_work, capsys, monkeypatch):
    ex = Explainer(in_work / "run", decode="greedy")
    out = ex.explain("a" * 64, [300000001, 700000001])
    assert [e.article_id for e in out] == [300000001, 700000001] and all(e.reason for e in out)
    items = pd.read_parquet(in_work / "artifacts" / "data" / "hm" / "items.parquet").set_index("article_id")
    filt = Filter(vocab_from_items(items.reset_index()))
    history = ex.context("a" * 64, ex.next_day())[0]["history"]
    hooks = {a: evidence_fields(items.loc[a].to_dict(), history)["hook"] for a in items.index}  # a's evidence hooks
    for e in out:  # flagged exactly when the filter, on a's whole history and the evidence's hook, rejects it
        causes = filt.check(e.reason, items.loc[e.article_id].to_dict(), HISTORY_A, hooks[e.article_id])
        assert e.passed_filter == (not causes) and (e.hook == "model" or e.reason.startswith(hooks[e.article_id]))
    with pytest.raises(KeyError):
        ex.explain("a" * 64, [123])
    with pytest.raises(KeyError):
        ex.explain("nobody", [300000001])

    # Planted candidates: the first that passes is shown, with those rejected before it; none passing, the best.
    planted = {700000001: ["You bought the Wrap dress before. A padded bikini top.",  # a never bought it
                           "Like the Striped tee you bought last. A padded bikini top."],  # her latest buy
               300000001: ["A red dress in cotton jersey.", "Red again, and a dress."]}
    with monkeypatch.context() as m:
        m.setattr("mmreason.decoding.shown.generate_reasons",  # the one shown-reason path decodes
                  lambda model, tok, examples, *a, **k: [planted[x["article_id"]] for x in examples])
        # as deployed (shown.OFFER_RETRIEVED): the hook of the candidate the filter picks, then the 1st retrieved copy
        offered, _ = ex.explain("a" * 64, [700000001, 300000001])
        m.setattr(ex, "offer_retrieved", 0)  # the generated candidates alone
        bikini, tee = ex.explain("a" * 64, [700000001, 300000001])
    # neither planted hook is the one a's evidence states: the evidence's hook is shown before the planted copy
    hook = hooks[700000001]
    assert hook and offered.source == "retrieved" and offered.passed_filter and offered.hook == "evidence"
    assert offered.reason.startswith(hook + " ") and offered.reason != f"{hook} A padded bikini top."
    assert (bikini.reason, bikini.passed_filter, bikini.source, bikini.hook) == (
        f"{hook} A padded bikini top.", True, "generated", "evidence")
    assert bikini.rejected == [(planted[700000001][0], ["wrong_type", "false_history", "unsupported_hook"]),  # no dress
                               (planted[700000001][1], ["unsupported_hook"])]  # true, but not what the evidence says
    # copy alone: no hook to repair and a copy of the wrong colour and type; the best one is shown, flagged
    assert (tee.reason, tee.passed_filter, tee.hook) == (planted[300000001][0], False, "model")
    assert [text for text, _ in tee.rejected] == planted[300000001]
    assert all("wrong_colour" in causes and "wrong_type" in causes for _, causes in tee.rejected)

    data_dir = in_work / "artifacts" / "data" / "hm"
    args = ["--data", str(data_dir), "--out", str(in_work / "rec"), "--no-progress", "--user", "a" * 12,
            "--model", "popularity", "-k", "3", "--explain", "--generator", str(in_work / "run")]
    assert R.main(args) == 0
    printed = capsys.readouterr().out
    assert "| reason | filter |" in printed
    rows = [line for line in printed.splitlines() if line.startswith("| ") and line[2].isdigit()]
    assert len(rows) == 3 and all(line.rstrip(" |").split(" | ")[-1].startswith(("passed", "failed")) for line in rows)


# ----------------------------------------------------------------------------- smaller parts (a mutation audit)

def test_the_default_settings_are_the_committed_runs():
    """``python -m mmreason.rl`` without flags reruns what results/cpu/rl.json reports (the README's RL table)."""
    from dataclasses import asdict

    from mmreason import paths
    committed = json.loads((paths.REPO_ROOT / "results" / "cpu" / "rl.json").read_text())["meta"]["config"]
    assert asdict(reinforce.RLConfig()) == committed


def test_each_step_samples_its_own_stream_and_the_feedback_logit_is_not_capped_early(in_work):
    draw = lambda step: torch.rand(4, generator=reinforce.step_generator(0, step))  # noqa: E731
    assert torch.equal(draw(1), draw(1)) and not torch.equal(draw(1), draw(2))
    tok = load_run(in_work / "run")[1].tokenizer

    class Drawn(Exception):
        pass

    class Fifty:  # the prompts a step draws, caught before anything is decoded
        def __len__(self):
            return 50

        def batch(self, idx, pad_id):
            raise Drawn(idx)

    def prompts_of(step):
        with pytest.raises(Drawn) as e:
            reinforce.rl_step(None, None, None, Fifty(), None, reinforce.RLConfig(prompts=4), step, tok)
        return e.value.args[0]
    assert prompts_of(1) == prompts_of(1) and prompts_of(1) != prompts_of(2)  # each step its own prompts too

    class Sure:
        def score_batch(self, *args):
            return np.array([0.9999])
    _, data = load_run(in_work / "run")
    reward = reinforce.Reward(Sure(), data.artifacts.items, reinforce.RLConfig())
    row = {"customer_id": "a" * 64, "article_id": 300000001, "t_dat": pd.Timestamp("2019-04-01"), "reason": ""}
    r = reward(["A white t-shirt in cotton jersey."], [row], [None])
    assert r["feedback_logit"][0] == pytest.approx(np.log(0.9999 / 0.0001))


def test_prompts_keep_each_rows_hook_and_photo(in_work, monkeypatch):
    _, data = load_run(in_work / "run")
    interactions = pd.read_parquet(data.artifacts.data_dir / "interactions.parquet")
    frame = data.frame("train").iloc[:3]
    prompts = reinforce.Prompts(data, frame, interactions, data.artifacts.items)
    assert [r["hook"] for r in prompts.rows] == frame["hook"].tolist()  # what the filter holds a hook to
    b = prompts.batch([2, 0], 0)
    assert torch.equal(b["photo_embedding"], prompts.photo[[2, 0]]) and torch.equal(b["has_photo"], prompts.has_photo[[2, 0]])
    assert not torch.equal(prompts.photo[2], prompts.photo[0])  # (two photos, so a mix-up would show)
    assert prompts.offer == [r.split(" | ")[0] for r in prompts.retrieved]  # the prompt's first copy
    # offer_photo (rl's part="hook" on a run that sees the photo): the copy the photo chose, as deployed
    data.artifacts.__dict__["photo_offers"] = {int(frame["article_id"].iloc[0]): "Planted copy."}
    photo = reinforce.Prompts(data, frame, interactions, data.artifacts.items, offer_photo=True)
    assert photo.offer == ["Planted copy."] + prompts.offer[1:] and photo.retrieved == prompts.retrieved
    ids = data.tokenizer.encode("You bought it. Anything else.", add_special_tokens=False)
    texts, _ = reinforce.shown_samples(data.tokenizer, photo, [0, 1], [[ids], [ids]], True, 0)
    assert texts == ["You bought it. Planted copy.", f"You bought it. {prompts.offer[1]}"]
    prompts.retrieved[1] = None  # one example without retrieved copies: the hook alone cannot be rewarded
    with pytest.raises(ValueError, match="retrieved"):
        prompts.hook_only("hook")
    assert prompts.hook_only("reason") is False
    # a run whose prompt retrieves nothing gives the segment as "" (prompt_example): refused, not rewarded bare
    monkeypatch.setattr(data, "prompt_example", lambda r, real=data.prompt_example: real(r) | {"retrieved": ""})
    with pytest.raises(ValueError, match="retrieved"):
        reinforce.Prompts(data, frame, interactions, data.artifacts.items).hook_only("hook")
