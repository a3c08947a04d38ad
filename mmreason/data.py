"""Prepare canonical tables from the raw H&M sample: ``python -m mmreason.data``.

Reads ``transactions.csv``, ``customers.csv``, ``articles.parquet`` and the photos (read-only), validates
them, and writes four parquet tables into ``artifacts/data/hm-<key>/`` (or ``--out``), where the key is a
fingerprint of the input files and the settings; ``artifacts/data/hm`` points to the newest:

* ``users``        one row per customer: profile fields, purchase counts.
* ``items``        one row per article: attributes, copy, photo path, serialised ``product`` text, and the
                   unseen-products split (whole ``product_code`` groups held out).
* ``interactions`` one row per (customer, article, day) with the quantity bought.
* ``examples``     one row per interaction with the model inputs (``user_profile``, ``evidence``,
                   ``behaviour``, ``product``), the silver ``reason`` target and its provenance (``hook_facts``:
                   every fact the hook states; ``cited_name``: the purchase it names), and both splits.

The summary carries the audit (``audit``): every fact each target states is readable in the prompt the
model receives, after truncation.

Profiles and behaviour use only purchases strictly *before* the example's day. See ``reasons.py`` for
how silver targets are built. A rerun over unchanged input reuses the tables (``manifest.json``).
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
