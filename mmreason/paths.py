"""Where things live: the shared raw data (read-only), the git-ignored artifacts folder and the results.

This module is the one place that decides; the commands ask it and pass the paths down. Every default can
be overridden by a flag on the CLIs or by an environment variable: ``MMREASON_HM_DIR``,
``MMREASON_AMAZON_DIR``, ``MMREASON_ARTIFACTS`` (prepared data, caches and runs: ``runs/<name>``) and
``MMREASON_RESULTS`` (the committed reports: ``<name>/metrics.md`` ...).

A path on a command line or in a config that starts with ``artifacts/`` (``configs/cpu.yaml``'s
``default_root_dir: artifacts/runs/cpu``, ``--run artifacts/runs/dp``) names a place under the artifacts
root, whatever the working folder (``resolve``); other relative paths are relative to the working folder.
"""
from __future__ import annotations

import os
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent


def hm_dir() -> Path:
    """Raw H&M sample (photos, articles, customers, transactions); never written to."""
    return Path(os.environ.get("MMREASON_HM_DIR", REPO_ROOT.parent / "shared" / "data" / "hm"))


def amazon_dir() -> Path:
    return Path(os.environ.get("MMREASON_AMAZON_DIR", REPO_ROOT.parent / "shared" / "data" / "amazon_fashion5"))


def artifacts_dir() -> Path:
    """Git-ignored root for prepared tables, tokenizers, checkpoints, caches and runs."""
    return Path(os.environ.get("MMREASON_ARTIFACTS", REPO_ROOT / "artifacts"))


DEFAULT_RUN = "cpu"  # configs/cpu.yaml's run: what explain, recommend --explain, serve, rl and bench load


def runs_dir() -> Path:
    """Trained runs, one folder each (``checkpoints/``, ``logs/``, ``tb/``, ``summary.json``)."""
    return artifacts_dir() / "runs"


def run_dir(name: str = DEFAULT_RUN) -> Path:
    return runs_dir() / name


def results_dir(name: str = "") -> Path:
    """The reports that are committed (``results/<name>/``), or ``$MMREASON_RESULTS/<name>``."""
    return Path(os.environ.get("MMREASON_RESULTS", REPO_ROOT / "results")) / name


def resolve(path) -> Path:
    """A path from a command line or a config: a relative ``artifacts/...`` is that place under
    ``artifacts_dir()`` (absolute, so resolving again changes nothing); anything else is kept as given."""
    p = Path(path)
    if not p.is_absolute() and p.parts[:1] == ("artifacts",):
        return artifacts_dir().absolute().joinpath(*p.parts[1:])
    return p


def shown(path) -> str:
    """How reports and answers name a path: ``artifacts/...`` inside the artifacts root (the form every command
    takes, ``resolve`` reads it back), anything else as given; a report then holds no machine's folders."""
    inside = in_artifacts(path)["in_artifacts"]
    return Path("artifacts", inside).as_posix() if inside is not None else str(path)


def offline() -> None:
    """No model hub here: make Hugging Face fail fast instead of retrying for minutes."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")


# ----------------------------------------------------------------------------- keyed artifacts
# Every derived artifact (tables, tokenizer, CLIP, photo embeddings) lives under a key of what made it:
# ``<parent>/<name>-<key>``. Two configurations never write into one folder, so a run trained on one set
# of inputs keeps them whatever is built later. ``<parent>/<name>`` is a symlink to the newest one: the
# readable default path for people and for the CLIs that want "the current" artifact.

def keyed(parent: Path, name: str, key: str, suffix: str = "") -> Path:
    """``parent/<name>-<key><suffix>``, where ``key`` is a short fingerprint of inputs and settings."""
    return Path(parent) / f"{name}-{key}{suffix}"


def in_artifacts(path) -> dict:
    """Where an artifact is, for a run's record: its absolute path, and its path relative to the artifacts
    root when it lies inside (so the run still loads after the folder moves); ``from_artifacts`` reads it."""
    p, root = Path(path).resolve(), artifacts_dir().resolve()
    return {"path": str(p), "in_artifacts": str(p.relative_to(root)) if p.is_relative_to(root) else None}


def from_artifacts(where: dict) -> Path:
    """The recorded absolute path if it is there, else the same place under today's artifacts root."""
    p = Path(where["path"])
    if p.exists() or not where.get("in_artifacts"):
        return p
    return artifacts_dir() / where["in_artifacts"]


def point_latest(pointer: Path, target: Path) -> None:
    """Make ``pointer`` a relative symlink to ``target`` (its sibling), replacing the old link atomically.

    An unkeyed artifact left at ``pointer`` (by an older version, or by a command told to write there) is moved
    aside to ``<pointer>-unkeyed``, or ``-unkeyed-2``, ``-3``, ... where that is taken: nothing is overwritten.
    """
    pointer, target = Path(pointer), Path(target)
    if pointer.is_symlink() and os.readlink(pointer) == target.name:
        return
    if pointer.exists() and not pointer.is_symlink():
        aside, n = pointer.with_name(pointer.name + "-unkeyed"), 1
        while aside.exists() or aside.is_symlink():
            n += 1
            aside = pointer.with_name(f"{pointer.name}-unkeyed-{n}")
        print(f"[paths] moving the unkeyed {pointer} aside to {aside.name}")
        os.replace(pointer, aside)
    tmp = pointer.with_name(f".{pointer.name}.{os.getpid()}.link")
    if tmp.is_symlink():
        tmp.unlink()
    os.symlink(target.name, tmp)
    os.replace(tmp, pointer)
