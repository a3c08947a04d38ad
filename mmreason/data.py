"""Prepare canonical tables from the raw H&M sample: ``python -m mmreason.data``.

The command; the library is ``mmreason.datasets.hm``, whose docstring says what it does and why.
"""
from __future__ import annotations

import sys

from mmreason.datasets.prepare import prepare_tables
from mmreason.io import DataError


def main(argv=None) -> int:
    try:
        prepare_tables(argv)
    except DataError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
