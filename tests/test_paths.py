"""Where things live: ``paths`` decides, and every command follows it. With ``MMREASON_ARTIFACTS`` and
``MMREASON_RESULTS`` set and the working folder elsewhere, train -> evaluate -> explain -> recommend write
and read only there (issue 16: training used to write ``./artifacts/runs/cpu`` while explain looked under
``$MMREASON_ARTIFACTS``)."""
from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest

from mmreason import evaluate, explain, paths, rl, serve, train
from mmreason import recommend as R
from mmreason.evaluation import systems
from mmreason.policy import reinforce

from conftest import CUSTOMERS, make_hm
from test_train import TINY


@pytest.fixture
def roots(tmp_path, monkeypatch):
    """An artifacts root and a results root apart from each other and from the working folder."""
    art, res, cwd = tmp_path / "store" / "art", tmp_path / "store" / "res", tmp_path / "cwd"
    cwd.mkdir()
    monkeypatch.chdir(cwd)
    monkeypatch.setenv("MMREASON_ARTIFACTS", str(art))
    monkeypatch.setenv("MMREASON_RESULTS", str(res))
    return art, res, cwd


def test_artifacts_relative_paths_live_under_the_artifacts_root(roots):
    art, _, _ = roots
    assert paths.resolve("artifacts/runs/cpu") == art / "runs" / "cpu" == paths.run_dir("cpu") == paths.run_dir()
    assert paths.resolve(Path("artifacts")) == art and paths.runs_dir() == art / "runs"
    assert paths.resolve(paths.resolve("artifacts/runs/x")) == art / "runs" / "x"  # resolving twice changes nothing


def test_other_paths_are_kept(roots, tmp_path):
    assert paths.resolve(tmp_path / "artifacts" / "runs" / "cpu") == tmp_path / "artifacts" / "runs" / "cpu"
    assert paths.resolve("runs/cpu") == Path("runs/cpu")  # relative to the working folder, as before
    assert paths.resolve("artifacts2/runs/cpu") == Path("artifacts2/runs/cpu")


def test_reports_name_a_path_in_the_artifacts_root_as_the_commands_take_it(roots, tmp_path):
    art, _, cwd = roots
    (art / "runs").mkdir(parents=True)
    assert paths.shown(art / "runs" / "cpu" / "last.ckpt") == "artifacts/runs/cpu/last.ckpt"
    assert paths.resolve(paths.shown(art / "runs" / "rl")) == art / "runs" / "rl"
    (tmp_path / "link").symlink_to(art)
    assert paths.shown(tmp_path / "link" / "runs" / "cpu") == "artifacts/runs/cpu"  # another way to the root
    assert paths.shown(tmp_path / "elsewhere" / "run") == str(tmp_path / "elsewhere" / "run")
    assert paths.shown("runs/cpu") == "runs/cpu"  # relative to the working folder, not the root: as given


def test_defaults_without_the_variables(monkeypatch, tmp_path):
    monkeypatch.delenv("MMREASON_ARTIFACTS", raising=False)
    monkeypatch.delenv("MMREASON_RESULTS", raising=False)
    monkeypatch.chdir(tmp_path)  # the repository decides, not the working folder
    assert paths.resolve("artifacts/runs/cpu") == paths.REPO_ROOT / "artifacts" / "runs" / "cpu"
    assert paths.results_dir("cpu") == paths.REPO_ROOT / "results" / "cpu"


def test_relative_artifacts_root_is_taken_from_the_working_folder(monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MMREASON_ARTIFACTS", "artifacts/sub")
    assert paths.resolve("artifacts/runs/cpu") == tmp_path / "artifacts" / "sub" / "runs" / "cpu"
    assert paths.resolve(paths.resolve("artifacts/runs/cpu")) == paths.resolve("artifacts/runs/cpu")


def test_command_defaults_follow_the_roots(roots):
    art, res, _ = roots
    a, _ = rl.get_parser().parse([])
    assert (Path(a.run), Path(a.out)) == (art / "runs" / "cpu", art / "runs" / "rl")
    assert Path(rl.get_parser().parse(["--run", "artifacts/runs/dp"])[0].run) == art / "runs" / "dp"
    assert Path(serve.get_parser().parse([])[0].out) == res / "serve"
    assert paths.results_dir("cpu") == res / "cpu"
    # an RL run recorded its supervised checkpoint as artifacts/runs/...: still the same run, so it resumes
    assert reinforce.same_run("artifacts/runs/cpu/checkpoints/last.ckpt", art / "runs" / "cpu" / "checkpoints" / "last.ckpt")
    assert not reinforce.same_run("artifacts/runs/dp/checkpoints/last.ckpt", art / "runs" / "cpu" / "checkpoints" / "last.ckpt")


def test_train_evaluate_explain_recommend_write_only_under_the_roots(roots, tmp_path, capsys):
    art, res, cwd = roots
    hm = make_hm(tmp_path / "hm", broken_photo=False, missing_photo=False, bad_rows=False)
    # configs/cpu.yaml's default_root_dir (artifacts/runs/cpu) is under the artifacts root
    assert train.main([*TINY, "--data.pipeline.hm_dir", str(hm), "--trainer.max_epochs", "1", "--n_report", "0",
                       "--model.n_samples", "0", "--ckpt_path", "none"]) == 0
    run = art / "runs" / "cpu"
    assert (run / "checkpoints" / "last.ckpt").exists() and list((run / "logs").rglob("metrics.csv"))
    assert systems.load_variant("full") is not None
    assert evaluate.main(["--run", "tiny", "--systems", "template", "full", "--n", "0", "--decode", "greedy",
                          "--no-embedding"]) == 0
    assert (res / "tiny" / "metrics.json").exists()
    assert not (paths.REPO_ROOT / "results" / "tiny").exists()
    pd.read_parquet(hm / "articles.parquet").head(2).to_parquet(tmp_path / "new.parquet")
    assert explain.main(["--articles", str(tmp_path / "new.parquet"), "--images", str(hm / "images"),
                         "--customer", CUSTOMERS[0], "--decode", "greedy",
                         "--out", str(tmp_path / "reasons.json")]) == 0  # the default run
    assert len(json.loads((tmp_path / "reasons.json").read_text())) == 2
    capsys.readouterr()
    assert R.main(["--user", CUSTOMERS[0][:12], "--model", "popularity", "-k", "2", "--explain",
                   "--no-progress"]) == 0  # the default generator
    assert "| reason | filter |" in capsys.readouterr().out
    assert list(cwd.iterdir()) == []  # nothing in the working folder: no ./artifacts, ./results, ./lightning_logs
