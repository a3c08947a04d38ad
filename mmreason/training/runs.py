"""Finding a run's checkpoint (``find_checkpoint``) and loading the model with the data module it
was trained with (``load_run``).
"""
from __future__ import annotations

from pathlib import Path

import torch

from mmreason import paths
from mmreason.io import DataError
from mmreason.training.datamodule import ReasonDataModule
from mmreason.training.module import ReasonModule
from mmreason.training.pipeline import artifacts_content


def _settings(ckpt: dict) -> tuple:
    """What makes two checkpoints one run: model and data settings, and the artifacts trained on."""
    hp = {k: v for k, v in (ckpt.get("hyper_parameters") or {}).items() if not k.startswith("_")}
    data = {k: v for k, v in (ckpt.get("datamodule_hyper_parameters") or {}).items() if not k.startswith("_")}
    # the artifacts by content: a run resumed after a code change rebuilt its tables under a new folder name
    # (training.cli.resolve_ckpt) writes its later checkpoints with that name, its earlier best with the old one
    arts = artifacts_content((ckpt.get(ReasonDataModule.__qualname__) or {}).get("artifacts"))
    return repr(sorted(hp.items())), repr(sorted(data.items())), repr(sorted(arts.items()))


def _best_model_name(ckpt: dict) -> str | None:
    """The file name of the best checkpoint that the run's ``ModelCheckpoint`` recorded, if any."""
    for key, state in (ckpt.get("callbacks") or {}).items():
        if str(key).startswith(("ModelCheckpoint", "Checkpoint")) and state.get("best_model_path"):
            return Path(state["best_model_path"]).name
    return None


def find_checkpoint(path) -> Path | None:
    """A checkpoint file as given, or a run folder's best checkpoint (its last one if none); None if absent.

    In a folder the newest run decides, whatever the file names: its ``last.ckpt`` (or else the most
    recently written checkpoint) records which file its ``ModelCheckpoint`` kept as best. A best file
    written with other settings than that run's (an older run's, left behind in a reused folder) is refused.
    A relative ``artifacts/runs/<name>`` is under the artifacts root (``paths.resolve``).
    """
    path = paths.resolve(path)
    if path.is_file():
        return path
    d = path / "checkpoints" if (path / "checkpoints").is_dir() else path
    ckpts = sorted(d.glob("*.ckpt"), key=lambda p: (p.name == "last.ckpt", p.stat().st_mtime_ns))
    if not ckpts:
        return None
    newest = ckpts[-1]
    ref = torch.load(newest, map_location="cpu", weights_only=False, mmap=True)
    best = _best_model_name(ref)
    if best is None or best == newest.name:
        return newest
    best_path = d / best
    if not best_path.exists():
        print(f"[lit] {newest.name} names {best} as best, but it is gone: using {newest.name}")
        return newest
    if _settings(torch.load(best_path, map_location="cpu", weights_only=False, mmap=True)) != _settings(ref):
        raise DataError(f"{best_path} was written with other settings than {newest}: "
                        f"not loading it (pass the checkpoint file you mean, or retrain in a fresh folder)")
    return best_path


def load_run(path) -> tuple[ReasonModule, ReasonDataModule]:
    """The model (in eval mode) and the data module it was trained with, from a checkpoint or run folder.

    The data module reads exactly the artifacts the run recorded (see ``pipeline.load_recorded``); a run
    from before artifacts were recorded falls back to the artifacts its settings name today.
    """
    ckpt_path = find_checkpoint(path)
    if ckpt_path is None:
        raise FileNotFoundError(f"no checkpoint in {path} (train one with `python -m mmreason.train`)")
    ckpt = torch.load(ckpt_path, map_location="cpu", weights_only=False)
    module = ReasonModule.from_checkpoint(ckpt_path)
    data = ReasonDataModule(**{k: v for k, v in ckpt["datamodule_hyper_parameters"].items() if not k.startswith("_")})
    state = ckpt.get(ReasonDataModule.__qualname__)
    if state:
        data.recorded = state | {"run": str(ckpt_path)}
    else:
        print(f"[lit] {ckpt_path} records no artifacts (trained before they were recorded): using today's for its settings")
    module.eval()
    return module, data
