"""Where things live: the shared raw data (read-only) and the git-ignored artifacts folder.

Every default can be overridden by a flag on the CLIs or by an environment variable:
``MMREASON_HM_DIR``, ``MMREASON_AMAZON_DIR`` and ``MMREASON_ARTIFACTS``.
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


def offline() -> None:
    """No model hub here: make Hugging Face fail fast instead of retrying for minutes."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
