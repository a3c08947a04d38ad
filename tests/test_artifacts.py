"""Artifacts keyed by what made them, runs that record them, and ``find_checkpoint`` in a reused folder.

One run must never change another run's inputs: a second configuration builds its own tables, tokenizer,
CLIP and photo embeddings beside the first one's, and a trained run loads exactly what it was trained on.
"""
from __future__ import annotations

import json
import os
import time
from pathlib import Path

import pytest
import torch

from mmreason import evaluate, paths, train
from mmreason.io import DataError
from mmreason.training import cli
from mmreason.training.runs import find_checkpoint, load_run
from mmreason.training.pipeline import same_content

from conftest import make_hm, work_in
from test_train import TINY

# ----------------------------------------------------------------------------- keyed paths and links


def test_keyed_path_and_latest_link(tmp_path):
    a, b = paths.keyed(tmp_path, "bpe-8000", "aaaa"), paths.keyed(tmp_path, "bpe-8000", "bbbb")
    assert a.name == "bpe-8000-aaaa" and paths.keyed(tmp_path, "m", "k", ".pt").name == "m-k.pt"
    a.mkdir(), b.mkdir()
    (a / "f").write_text("a"), (b / "f").write_text("b")
    link = tmp_path / "bpe-8000"
    paths.point_latest(link, a)
    assert os.readlink(link) == "bpe-8000-aaaa" and (link / "f").read_text() == "a"  # relative: the folder can move
    paths.point_latest(link, b)
    assert (link / "f").read_text() == "b" and (a / "f").read_text() == "a"  # the older artifact is untouched
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bpe-8000", "bpe-8000-aaaa", "bpe-8000-bbbb"]


def test_an_unkeyed_artifact_from_an_older_version_is_moved_aside_not_lost(tmp_path, capsys):
    old = tmp_path / "mmr-vit-tiny"
    old.mkdir()
    (old / "weights").write_text("old")
    new = paths.keyed(tmp_path, "mmr-vit-tiny", "cccc")
    new.mkdir()
    paths.point_latest(old, new)
    assert old.is_symlink() and (tmp_path / "mmr-vit-tiny-unkeyed" / "weights").read_text() == "old"
    assert "moving the unkeyed" in capsys.readouterr().out
    # a second one (a command told to write at the link's place) goes beside the first, which stays
    old.unlink()
    old.mkdir()
    (old / "weights").write_text("older")
    paths.point_latest(old, new)
    assert old.is_symlink() and os.readlink(old) == new.name
    assert (tmp_path / "mmr-vit-tiny-unkeyed" / "weights").read_text() == "old"
    assert (tmp_path / "mmr-vit-tiny-unkeyed-2" / "weights").read_text() == "older"


def test_a_recorded_place_is_found_after_the_artifacts_folder_moves(tmp_path, monkeypatch):
    old_root, new_root = tmp_path / "a" / "artifacts", tmp_path / "b" / "artifacts"
    (old_root / "clip" / "m-k").mkdir(parents=True)
    monkeypatch.setenv("MMREASON_ARTIFACTS", str(old_root))
    where = paths.in_artifacts(old_root / "clip" / "m-k")
    assert where["in_artifacts"] == "clip/m-k" and paths.from_artifacts(where) == (old_root / "clip" / "m-k").resolve()
    (old_root.parent).rename(tmp_path / "moved")  # the old place is gone ...
    (new_root / "clip" / "m-k").mkdir(parents=True)
    monkeypatch.setenv("MMREASON_ARTIFACTS", str(new_root))
    assert paths.from_artifacts(where) == new_root / "clip" / "m-k"  # ... the same place under today's root
    assert paths.in_artifacts(tmp_path / "elsewhere")["in_artifacts"] is None


# ----------------------------------------------------------------------------- find_checkpoint

def fake_ckpt(path: Path, settings: dict, best: str | None = None, step: int = 0, split: str = "temporal") -> Path:
    """A checkpoint as Lightning writes it, as far as ``find_checkpoint`` reads it."""
    ckpt = {"hyper_parameters": {"config": settings}, "datamodule_hyper_parameters": {"split": split},
            "global_step": step}
    if best is not None:
        ckpt["callbacks"] = {"ModelCheckpoint{'monitor': 'val/loss', 'mode': 'min'}": {
            "best_model_path": f"artifacts/runs/cpu/checkpoints/{best}", "best_model_score": torch.tensor(1.0)}}
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(ckpt, path)
    return path


def age(path: Path, seconds: float) -> None:
    t = time.time() - seconds
    os.utime(path, (t, t))


@pytest.mark.parametrize("old_name,new_name", [("best-epoch=0-step=90.ckpt", "best-epoch=0-step=360.ckpt"),
                                               ("best-epoch=0-step=360.ckpt", "best-epoch=0-step=90.ckpt")])
def test_find_checkpoint_takes_the_newest_runs_best_whatever_the_names(tmp_path, old_name, new_name):
    d = tmp_path / "run" / "checkpoints"
    age(fake_ckpt(d / old_name, {"n_embd": 64}, best=old_name), 3600)  # an older run's best, left behind
    fake_ckpt(d / new_name, {"n_embd": 128}, best=new_name)
    fake_ckpt(d / "last.ckpt", {"n_embd": 128}, best=new_name)
    assert find_checkpoint(tmp_path / "run") == d / new_name
    assert find_checkpoint(d) == d / new_name  # the checkpoints folder itself
    assert find_checkpoint(d / old_name) == d / old_name  # a file is taken as given


def test_find_checkpoint_refuses_a_best_file_of_other_settings(tmp_path):
    d = tmp_path / "checkpoints"
    name = "best-epoch=0-step=90.ckpt"
    fake_ckpt(d / name, {"n_embd": 64}, best=name)  # same name, but written by another configuration
    fake_ckpt(d / "last.ckpt", {"n_embd": 128}, best=name)
    with pytest.raises(DataError, match="written with other settings"):
        find_checkpoint(tmp_path)
    fake_ckpt(d / name, {"n_embd": 128}, best=name, split="unseen")  # the same model, other data settings
    with pytest.raises(DataError, match="written with other settings"):
        find_checkpoint(tmp_path)


def test_find_checkpoint_takes_the_best_of_a_run_resumed_on_the_same_tables_in_a_new_folder(tmp_path):
    """A run resumed after a code change rebuilt its tables under a new fingerprint folder (same checksums):
    its best file records the old folder, its last.ckpt the new one; they are one run. Other checksums are not."""
    d = tmp_path / "checkpoints"
    name = "best-epoch=0-step=90.ckpt"
    tables = {"path": "/a/data/hm-1", "in_artifacts": "data/hm-1", "sha256": {"items": "x"}}
    rec = lambda **t: {"ReasonDataModule": {"artifacts": {"tables": tables | t}}}  # noqa: E731
    for f, r in ((name, rec()), ("last.ckpt", rec(path="/a/data/hm-2", in_artifacts="data/hm-2"))):
        fake_ckpt(d / f, {"n_embd": 64}, best=name)
        torch.save(torch.load(d / f, weights_only=False) | r, d / f)
    assert find_checkpoint(tmp_path) == d / name
    torch.save(torch.load(d / "last.ckpt", weights_only=False) | rec(sha256={"items": "y"}), d / "last.ckpt")
    with pytest.raises(DataError, match="written with other settings"):
        find_checkpoint(tmp_path)


def test_find_checkpoint_without_a_recorded_best_takes_last_or_the_newest(tmp_path, capsys):
    d = tmp_path / "checkpoints"
    age(fake_ckpt(d / "best-epoch=0-step=9.ckpt", {"n_embd": 64}), 3600)
    fake_ckpt(d / "last.ckpt", {"n_embd": 64})  # an RL run: last.ckpt only, no ModelCheckpoint state
    assert find_checkpoint(tmp_path) == d / "last.ckpt"
    age(d / "last.ckpt", 60)
    fake_ckpt(d / "best-epoch=0-step=10.ckpt", {"n_embd": 64})  # written after it: last.ckpt still decides
    assert find_checkpoint(tmp_path) == d / "last.ckpt"
    (d / "best-epoch=0-step=10.ckpt").unlink()
    (d / "last.ckpt").unlink()
    fake_ckpt(d / "best-epoch=1-step=2.ckpt", {"n_embd": 64})
    assert find_checkpoint(tmp_path) == d / "best-epoch=1-step=2.ckpt"  # the most recently written
    fake_ckpt(d / "last.ckpt", {"n_embd": 64}, best="best-gone.ckpt")  # recorded best deleted by hand
    assert find_checkpoint(tmp_path) == d / "last.ckpt" and "is gone" in capsys.readouterr().out
    assert find_checkpoint(tmp_path / "nothing") is None


# ----------------------------------------------------------------------------- runs keep their inputs

@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    root = tmp_path_factory.mktemp("artifacts")
    make_hm(root / "hm", broken_photo=False, missing_photo=False, bad_rows=False)
    return root


@pytest.fixture
def in_work(workdir, monkeypatch):
    return work_in(monkeypatch, workdir)


QUIET = ["--model.n_samples", "0", "--n_report", "0"]


def evaluated_reasons(root: Path, name: str) -> list[dict]:
    """What ``python -m mmreason.evaluate`` writes for the default run (greedy, every test example)."""
    out = root / "results" / name
    assert evaluate.main(["--out", str(out), "--systems", "full", "--n", "0", "--decode", "greedy",
                          "--no-embedding"]) == 0
    return json.loads((out / "metrics.json").read_text())["samples"]


def at(where: dict) -> Path:
    return paths.from_artifacts(where)


def recorded(run: Path) -> dict:
    ckpt = torch.load(find_checkpoint(run), map_location="cpu", weights_only=False)
    return ckpt["ReasonDataModule"]["artifacts"]


@pytest.mark.slow
def test_another_configuration_never_changes_the_default_runs_inputs(in_work, capsys):
    hm = str(in_work / "hm")
    # 1. the default run (artifacts/runs/cpu), then its evaluation
    assert train.main([*TINY, "--data.pipeline.hm_dir", hm, "--trainer.max_epochs", "1", "--ckpt_path", "none",
                       *QUIET]) == 0
    run_a = in_work / "artifacts" / "runs" / "cpu"
    rec_a = recorded(run_a)
    before = evaluated_reasons(in_work, "before")
    assert before and all(s["generated"] for s in before)

    # 2. the GPU config on CPU, a few steps, with other CLIP epochs and another tokenizer vocabulary
    gpu_on_cpu = ["--config", str(cli.CONFIG_DIR / "gpu.yaml"), *TINY, "--data.pipeline.hm_dir", hm,
                  "--trainer.accelerator", "cpu", "--trainer.precision", "32-true", "--model.compile", "false",
                  "--data.num_workers", "0", "--data.pipeline.clip_model", "mmr-vit-tiny",
                  "--data.pipeline.clip_epochs", "2", "--data.pipeline.tokenizer_vocab", "420",
                  "--trainer.max_steps", "2", "--trainer.default_root_dir", "artifacts/runs/gpu", *QUIET]
    assert train.main(gpu_on_cpu) == 0
    rec_b = recorded(in_work / "artifacts" / "runs" / "gpu")
    assert rec_b["tables"] == rec_a["tables"]  # same raw data and settings: the same tables, shared
    for kind in ("tokenizer", "clip", "embeddings"):
        assert rec_b[kind]["path"] != rec_a[kind]["path"], kind  # built beside, not over, the default run's
        assert at(rec_a[kind]).exists() and at(rec_b[kind]).exists(), kind
        assert rec_a[kind]["in_artifacts"] and not Path(rec_a[kind]["in_artifacts"]).is_absolute(), kind
    clip_link = in_work / "artifacts" / "clip" / "mmr-vit-tiny"
    assert clip_link.resolve() == at(rec_b["clip"]).resolve().parent  # the link names the newest CLIP

    # 3. the default run, evaluated again: exactly its own inputs, so exactly the same reasons
    assert recorded(run_a) == rec_a
    assert evaluated_reasons(in_work, "after") == before
    module, data = load_run(run_a)
    assert data.artifacts.record() == rec_a

    # 3b. a recorded table or the photo-embedding cache changed in place: refused in one line, used again once restored
    for f, what in ((at(rec_a["tables"]) / "items.parquet", r"has changed \(items.parquet\)"),
                    (at(rec_a["embeddings"]), "differ from the recorded ones")):
        saved = f.read_bytes()
        if f.suffix == ".parquet":
            f.write_bytes(saved + b"\0")
        else:
            cache = torch.load(f, map_location="cpu", weights_only=True)
            cache["embedding"][0] += 1
            torch.save(cache, f)
        _, data = load_run(run_a)
        with pytest.raises(DataError, match=what) as e:
            data.artifacts
        assert "\n" not in str(e.value)
        f.write_bytes(saved)
    _, data = load_run(run_a)
    assert data.artifacts.record() == rec_a

    # 4. its photo-embedding cache deleted: rebuilt from its own CLIP, identical, so accepted
    at(rec_a["embeddings"]).unlink()
    _, data = load_run(run_a)
    assert data.artifacts.record() == rec_a and "recomputing it from the run's CLIP" in capsys.readouterr().out
    assert evaluated_reasons(in_work, "rebuilt") == before

    # 5. cache and CLIP both gone: refused in one line that says what and how
    at(rec_a["embeddings"]).unlink()
    at(rec_a["clip"]).unlink()
    _, data = load_run(run_a)
    with pytest.raises(DataError, match=r"was trained on the CLIP .* which is missing") as e:
        data.artifacts
    assert "\n" not in str(e.value)
    capsys.readouterr()
    assert evaluate.main(["--out", str(in_work / "results" / "x"), "--systems", "full", "--n", "0"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error:") and "which is missing" in err and err.count("\n") == 0


@pytest.mark.slow
def test_retraining_in_a_reused_folder_loads_the_new_run(workdir, tmp_path, monkeypatch):
    work_in(monkeypatch, tmp_path)
    # dropout 0.1 (configs/cpu.yaml has none): without it this tiny model's validation loss is best at step 1, the
    # step the new run below ends at, and the new best file would overwrite the old one (same name)
    base = [*TINY, "--data.pipeline.hm_dir", str(workdir / "hm"), "--trainer.default_root_dir", "artifacts/runs/r",
            *QUIET, "--model.warmup_steps", "1", "--model.config.dropout", "0.1"]
    # an old run that stopped after more steps (so its best file sorts last by name), then a new one of other settings
    assert train.main([*base, "--trainer.max_epochs", "2", "--ckpt_path", "none"]) == 0
    d = tmp_path / "artifacts" / "runs" / "r" / "checkpoints"
    old_best = sorted(d.glob("best-*.ckpt"))
    assert len(old_best) == 1 and "step=1." not in old_best[0].name, old_best  # the premise: a later step's file
    assert train.main([*base, "--trainer.max_steps", "1", "--model.config.n_embd", "48"]) == 0  # auto: afresh
    assert len(list(d.glob("best-*.ckpt"))) == 2 and set(old_best) < set(d.glob("best-*.ckpt"))
    module, _ = load_run(d.parent)
    assert module.config.n_embd == 48 and find_checkpoint(d.parent) not in old_best


@pytest.mark.parametrize("leftover", ["folder", "link", "file"])
def test_atomic_dir_replaces_a_folder_whatever_an_earlier_crash_left(tmp_path, leftover):
    """A run that died between atomic_dir's two renames leaves ``.<name>.old`` behind (a folder, or a link
    when the replaced path was a link): the next run replaces the folder anyway (the notebooks hit a link)."""
    from mmreason.io import atomic_dir

    target, other = tmp_path / "hm", tmp_path / "hm-older"
    target.mkdir(), other.mkdir()
    (target / "a.txt").write_text("old")
    old = tmp_path / ".hm.old"
    if leftover == "folder":
        old.mkdir()
        (old / "x").write_text("x")
    elif leftover == "link":
        old.symlink_to(other.name)
    else:
        old.write_text("x")
    with atomic_dir(target) as tmp:
        (tmp / "a.txt").write_text("new")
    assert (target / "a.txt").read_text() == "new" and not old.exists() and not old.is_symlink()
    assert other.is_dir()  # a link's target is never removed


def test_a_run_resumes_on_the_same_artifacts_wherever_they_live():
    """Resuming compares the recorded artifacts by content: the same tables rebuilt under a new folder name (the
    name fingerprints the code too) are the same inputs; one changed checksum is not."""
    rec = {"tables": {"path": "/a/data/hm-1", "in_artifacts": "data/hm-1", "sha256": {"items": "x", "examples": "y"}},
           "clip": {"model": "mmr-vit-tiny", "path": "/a/clip/c-1/m.bin", "in_artifacts": "clip/c-1/m.bin", "sha256": "c"}}
    moved = {"tables": {**rec["tables"], "path": "/b/data/hm-2", "in_artifacts": "data/hm-2"}, "clip": rec["clip"]}
    assert same_content(rec, moved)
    assert not same_content(rec, {**moved, "tables": {**moved["tables"], "sha256": {"items": "x", "examples": "z"}}})
    assert not same_content(rec, {"tables": rec["tables"]})  # an artifact fewer
    tag = {"clip": {"model": "ViT-B-32", "path": "openai", "sha256": None}}  # a tag: its name is what there is
    assert same_content(tag, tag) and not same_content(tag, {"clip": {**tag["clip"], "path": "laion2b"}})
