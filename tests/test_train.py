"""``python -m mmreason.train`` end to end on a tiny fixture: fit, samples, resume, DDP, GPU marker."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch

from mmreason import train
from mmreason.training import cli
from mmreason.training.runs import find_checkpoint

from conftest import make_hm, work_in

TINY = [
    "--data.pipeline.tokenizer_vocab", "400", "--data.pipeline.clip_epochs", "1",
    "--data.batch_size", "4", "--data.eval_batch_size", "4", "--data.limit_val", "0",
    "--model.config.n_layer", "1", "--model.config.n_head", "2", "--model.config.n_embd", "32",
    "--model.config.prefix_len", "2", "--model.warmup_steps", "2", "--model.n_samples", "1",
    "--model.sample_max_new_tokens", "8", "--n_report", "2",
    "--trainer.log_every_n_steps", "1", "--trainer.enable_progress_bar", "false",
    "--trainer.val_check_interval", "1.0", "--trainer.max_steps", "-1",
]


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    """A working folder with its own artifacts and a tiny H&M fixture (bad rows and photos included)."""
    root = tmp_path_factory.mktemp("train")
    make_hm(root / "hm")
    return root


@pytest.fixture
def in_workdir(workdir, monkeypatch):
    return work_in(monkeypatch, workdir)


def args(workdir, *extra):
    return [*TINY, "--data.pipeline.hm_dir", str(workdir / "hm"), *extra]


def test_fit_prints_samples_and_perplexity(in_workdir, capsys):
    assert train.main(args(in_workdir, "--trainer.max_epochs", "2", "--ckpt_path", "none")) == 0
    out = capsys.readouterr().out
    assert "[pipeline] 1/5" in out and "[pipeline] 5/5 retrieval" in out and "generated:" in out and "silver:" in out
    assert "validation perplexity" in out and "unigram baseline" in out
    run = in_workdir / "artifacts" / "runs" / "cpu"
    summary = json.loads((run / "summary.json").read_text())
    assert summary["val_ppl"] > 1 and summary["unigram_val_ppl"] > 1 and summary["samples"]
    best = list((run / "checkpoints").glob("best-*.ckpt"))
    assert (run / "checkpoints" / "last.ckpt").exists() and len(best) == 1
    assert find_checkpoint(run) == best[0]  # last.ckpt's Checkpoint state names the best file
    logs = list((run / "logs").rglob("metrics.csv"))
    assert logs and "train/loss" in logs[0].read_text().splitlines()[0]
    # A rerun reuses every artifact (tables, tokenizer, CLIP, embeddings) and resumes the finished run.
    assert train.main(args(in_workdir, "--trainer.max_epochs", "2")) == 0
    out = capsys.readouterr().out
    assert "reusing" in out and "tokenizer: reusing" in out and "embed: reusing" in out
    assert "[train] resuming" in out


@pytest.mark.parametrize("interrupt", [["--trainer.max_epochs", "1"], ["--trainer.max_steps", "1"]],
                         ids=["at-epoch-end", "mid-epoch"])
def test_interrupted_run_resumed_from_last_ends_where_an_uninterrupted_one_does(in_workdir, interrupt):
    # batch 2 -> 2 batches an epoch, validation (and last.ckpt) after every batch; dropout on (configs/cpu.yaml
    # trains without it), so the resumed run must also replay the dropout masks.
    common = ["--model.lr_decay_steps", "20", "--data.batch_size", "2", "--trainer.limit_val_batches", "1",
              "--model.config.dropout", "0.1",
              "--trainer.val_check_interval", "0.5",
              "--n_report", "0", "--model.n_samples", "0"]

    def run(name, *extra):
        d = f"artifacts/runs/{name}"
        assert train.main(args(in_workdir, *common, "--trainer.default_root_dir", d, *extra)) == 0
        return torch.load(in_workdir / d / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)

    full = run("full", "--trainer.max_epochs", "2", "--ckpt_path", "none")
    name = f"part-{interrupt[0][10:]}"
    first = run(name, *interrupt, "--ckpt_path", "none")  # the run stops here: the interruption
    resumed = run(name, "--trainer.max_epochs", "2", "--ckpt_path", "last")
    assert 0 < first["global_step"] < resumed["global_step"] == full["global_step"] == 4
    for k, v in full["state_dict"].items():
        torch.testing.assert_close(resumed["state_dict"][k], v, msg=f"{k} differs after resume")


@pytest.mark.slow
def test_ddp_two_cpu_processes(in_workdir):
    """Lightning's own DDP strategy (gloo on CPU), chosen by config alone, for a few steps."""
    env = dict(os.environ, MMREASON_ARTIFACTS=str(in_workdir / "artifacts"), PYTHONUNBUFFERED="1")
    cmd = [sys.executable, "-m", "mmreason.train", "--config", str(cli.CONFIG_DIR / "cpu.yaml"),
           "--config", str(cli.CONFIG_DIR / "ddp.yaml"), *args(in_workdir), "--trainer.accelerator", "cpu",
           "--trainer.devices", "2", "--trainer.max_steps", "2", "--data.batch_size", "1",
           "--trainer.default_root_dir", "artifacts/runs/ddp",
           "--ckpt_path", "none",
           "--n_report", "0", "--model.n_samples", "0"]
    p = subprocess.run(cmd, cwd=in_workdir, env=env, capture_output=True, text=True, timeout=600)
    assert p.returncode == 0, p.stderr[-3000:]
    assert "distributed_backend=gloo" in p.stderr + p.stdout
    ckpt = torch.load(in_workdir / "artifacts/runs/ddp/checkpoints/last.ckpt", map_location="cpu", weights_only=False)
    assert ckpt["global_step"] == 2


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_gpu_bf16_compile_steps(in_workdir):
    assert train.main(args(in_workdir, "--trainer.accelerator", "gpu", "--trainer.precision", "bf16-mixed",
                           "--model.compile", "true", "--trainer.max_steps", "4", "--ckpt_path", "none",
                           "--trainer.default_root_dir", "artifacts/runs/gpu")) == 0
