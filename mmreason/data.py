"""Prepare canonical tables from the raw H&M sample: ``python -m mmreason.data``.

The command; the library is ``mmreason.datasets.hm``, whose docstring says what it does and why.
"""
from __future__ import annotations

import sys

from mmreason import cli
from mmreason.datasets.prepare import PrepareConfig, prepare_tables
from mmreason.io import DataError


def get_parser() -> cli.ArgumentParser:
    return cli.parser(PrepareConfig, prog="python -m mmreason.data", description=__doc__.split("\n")[0])


def main(argv=None) -> int:
    config, = get_parser().parse(argv)
    try:
        prepare_tables(config)
    except DataError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
