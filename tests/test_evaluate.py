"""``python -m mmreason.evaluate`` on a tiny fixture: trains the variants, scores every system, writes tables."""
from __future__ import annotations

import json

import pandas as pd
import pytest

from conftest import make_hm, work_in
from mmreason import evaluate
from test_train import TINY


def test_drop_attributes_removes_colour_and_pattern_only():
    p = "name: Strap top; type: Vest top; pattern: Solid; colour: Black (Dark Black); section: Basics"
    assert evaluate.drop_attributes(p) == "name: Strap top; type: Vest top; section: Basics"


def test_first_sentence_split():
    assert evaluate.first_sentence_split("In black, like the Top. Jersey top. Straps.") == (
        "In black, like the Top.", "Jersey top. Straps.")


@pytest.mark.slow
def test_evaluate_cli_end_to_end(tmp_path, monkeypatch, capsys):
    make_hm(tmp_path / "hm")
    work_in(monkeypatch, tmp_path)
    out = tmp_path / "results"
    # Without checkpoints and without --train: a clear error.
    assert evaluate.main(["--out", str(out), "--systems", "full"]) == 2
    assert "no checkpoint for full" in capsys.readouterr().err
    train_args = [*TINY, "--data.pipeline.hm_dir", str(tmp_path / "hm"), "--trainer.max_epochs", "1",
                  "--model.n_samples", "0", "--ckpt_path", "none"]
    rc = evaluate.main(["--out", str(out), "--n", "0", "--decode", "greedy", "--no-embedding", "--train",
                        "--train-args", *train_args])
    assert rc == 0
    m = json.loads((out / "metrics.json").read_text())
    for split in ("temporal", "unseen"):
        assert set(m["results"][split]) == set(evaluate.SYSTEMS)
        for system, r in m["results"][split].items():
            assert 0 <= r["bleu1"] <= 100 and "copy_cider" in r and "hook_bleu4" in r, system
    assert "probe_personalised_share" in m["results"]["temporal"]["full"]
    assert set(m["attribute_dropout"]) >= {"full, colour+pattern dropped", "text_only, colour+pattern dropped"}
    table = (out / "metrics.md").read_text()
    assert "| unseen | retrieval |" in table and "Attribute dropout" in table
    # The template baseline names the article's own attributes, so its colour grounding is perfect.
    assert m["results"]["unseen"]["template"]["grounding_colour_precision"] == 1.0
