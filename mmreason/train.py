"""Train the reason generator: ``python -m mmreason.train [--config configs/cpu.yaml] [--key value ...]``.

The command of ``mmreason.training.cli`` (its docstring: the steps a fresh clone runs, where logs and
checkpoints go, resuming).
"""
from __future__ import annotations

import sys

from mmreason.training.cli import fit


def main(argv=None) -> int:
    return fit(argv)


if __name__ == "__main__":
    sys.exit(main())
