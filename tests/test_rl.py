"""RL from purchase feedback and explained recommendations, on a tiny fixture: the reward's parts, the
log-probabilities the policy gradient uses, ``python -m mmreason.rl`` end to end with an exact resume,
and ``python -m mmreason.recommend --user ID --explain`` through the generator."""
from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import torch

from conftest import make_hm, work_in
from mmreason import feedback as FB
from mmreason import recommend as R
from mmreason import rl, train
from mmreason.collate import EOS, token_id
from mmreason.explain import Explainer
from mmreason.generate import DecodeConfig, decode
from mmreason.lit import load_run
from test_train import TINY


@pytest.fixture(scope="module")
def work(tmp_path_factory):
    """A tiny generator run and feedback model, trained by the real CLIs in their own artifacts folder."""
    root = tmp_path_factory.mktemp("rl")
    make_hm(root / "hm", broken_photo=False, missing_photo=False, bad_rows=False)
    with pytest.MonkeyPatch.context() as mp:
        work_in(mp, root)
        assert train.main([*TINY, "--data.pipeline.hm_dir", str(root / "hm"), "--trainer.max_epochs", "2",
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
    fb = rl.load_feedback(None, data.artifacts.data_dir)
    config = rl.RLConfig(w_feedback=1.0, w_grounding=0.5, w_reference=2.0, w_filter=0.5)
    reward = rl.Reward(fb, items, config)
    row = {"customer_id": "a" * 64, "article_id": 300000001, "t_dat": pd.Timestamp("2019-04-01"),  # white striped tee
           "reason": "T-shirt in cotton jersey with stripes."}
    hist = {"n": 4, "colours": {"black", "light blue"}, "types": {"trousers", "vest top"}, "patterns": {"denim", "solid"},
            "names": {"skinny jeans", "strap top", "wide trousers"}}
    texts = ["A white t-shirt in cotton jersey with stripes.",   # true colour and type: grounded, passes
             "A red dress in cotton jersey.",                    # wrong colour and wrong type: filtered
             "In cotton jersey with stripes."]                   # names neither
    r = reward(texts, [row] * 3, [hist] * 3)
    assert r["grounding"].tolist() == [1.0, -1.0, 0.0]
    assert r["passed"].tolist() == [1.0, 0.0, 1.0] and "wrong_colour" in r["causes"][1]
    p = fb.score_batch([row["customer_id"]] * 3, [row["article_id"]] * 3, texts, [row["t_dat"]] * 3)
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
    prompts = rl.Prompts(data, data.frame("train"), interactions, data.artifacts.items)
    idx = list(range(min(3, len(prompts))))
    cfg = DecodeConfig("sample", max_new_tokens=6, num_return_sequences=2)
    cands = decode(module.model, prompts.batch(idx, eos), cfg, eos, torch.Generator().manual_seed(0))
    samples = [[ids for ids, _ in c] for c in cands]
    batch = rl.sequence_batch(prompts, idx, samples, eos, eos, cfg.max_new_tokens)
    with torch.no_grad():
        logp_all, targets, row = rl.token_logprobs(module.model, batch)
    logp = logp_all.gather(1, targets[:, None]).squeeze(1)
    for r, (ids, score) in enumerate(c for cs in cands for c in cs):
        n = len(ids) + (len(ids) < cfg.max_new_tokens)
        assert (row == r).sum() == n
        assert logp[row == r].sum().item() / n == pytest.approx(score, abs=1e-4)


@pytest.mark.slow
def test_rl_cli_runs_resumes_exactly_and_reports(in_work, capsys):
    assert rl.main(rl_args(in_work, in_work / "rl_a", "--steps", "2")) == 0
    out = capsys.readouterr().out
    assert "| unseen | supervised |" in out and "| temporal | RL |" in out
    m = json.loads((in_work / "rl_a" / "results" / "rl.json").read_text())
    for part in ("before", "after"):
        assert set(m[part]["deployed"]) == {"unseen", "temporal"}
        assert {"reward", "feedback", "grounding", "passed"} <= set(m[part]["sampled"])
        assert {"distinct2", "usr", "copy_cider", "grounding_colour_precision", "first_choice_rejected"} <= set(
            m[part]["deployed"]["unseen"])
    log = pd.read_csv(in_work / "rl_a" / "log.csv")
    assert log["step"].tolist() == [1, 2] and (log["kl"] >= 0).all() and "val_reward" in log

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


def test_rl_cli_errors_in_one_line(in_work, tmp_path, capsys):
    assert rl.main(["--run", str(tmp_path / "nothing"), "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: no supervised checkpoint") and "\n" not in err
    with pytest.raises(ValueError):
        rl.RLConfig(samples=1)


def test_explainer_and_recommend_explain(in_work, capsys):
    ex = Explainer(in_work / "run", decode="greedy")
    out = ex.explain("a" * 64, [300000001, 700000001])
    assert [e.article_id for e in out] == [300000001, 700000001] and all(e.reason for e in out)
    for e in out:  # greedy: one candidate; shown either because it passed or, flagged, because nothing did
        assert (e.rejected == []) if e.passed_filter else (e.reason == e.rejected[0][0])
    with pytest.raises(KeyError):
        ex.explain("a" * 64, [123])
    with pytest.raises(KeyError):
        ex.explain("nobody", [300000001])
    data_dir = in_work / "artifacts" / "data" / "hm"
    args = ["--data", str(data_dir), "--out", str(in_work / "rec"), "--no-progress", "--user", "a" * 12,
            "--model", "popularity", "-k", "3", "--explain", "--generator", str(in_work / "run")]
    assert R.main(args) == 0
    printed = capsys.readouterr().out
    assert "| reason | filter |" in printed
    rows = [line for line in printed.splitlines() if line.startswith("| ") and line[2].isdigit()]
    assert len(rows) == 3 and all(line.rstrip(" |").split(" | ")[-1].startswith(("passed", "failed")) for line in rows)
