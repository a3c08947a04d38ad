"""Personal data in outputs: ``python -m mmreason.pii [PATH ...]`` scans files, exit 1 on any finding.

What counts (the README's "Personal data" section says what the project reads and stores, and where):

* a customer id, whole or any piece of it longer than ``ID_PREFIX`` characters (the README and the logs
  show 10, e.g. ``e2c46634eb``, to name a case study; H&M's ids are 64 hex characters, already hashed);
* an Amazon ``reviewerName`` (a person's display name), as a whole word or phrase, any case. Skipped:
  placeholders that name no one ("Amazon Customer"), names under 3 characters, one-word names under 4
  ("met", "Sws": they occur in ordinary text and in a tiny model's garbled samples), and one-word names that
  are ordinary words of the catalogue's own text (``common_words``: "Wildcat" is a name, "Mark" a word);
* an age: "34 years old", "aged 34", "age 34", "age: 34". The age bands of the profile text
  ("age 25-34", "age 65+") are coarse on purpose and allowed.

Outputs are the text the commands write: results (``.json``, ``.md``, ``.csv``), run summaries and logs,
executed notebooks, and the text drawn in figures (``scan_figure``: every text artist of a matplotlib
figure). A finding shows where, the kind and at most ``ID_PREFIX`` characters of what it matched, so the
report itself leaks nothing.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from mmreason import paths
from mmreason.datasets.pii import PersonalData


def get_parser():
    p = argparse.ArgumentParser(prog="python -m mmreason.pii", description=__doc__.split("\n")[0])
    p.add_argument("paths", nargs="*", help="files or folders (default: results/ and figures/ and README.md)")
    p.add_argument("--hm-dir", default=str(paths.REPO_ROOT.parent / "shared" / "data" / "hm"))
    p.add_argument("--amazon", default=str(paths.REPO_ROOT.parent / "shared" / "data" / "amazon_fashion5" /
                                           "AMAZON_FASHION_5.json.gz"))
    return p


def main(argv=None) -> int:
    args = get_parser().parse_args(argv)
    targets = args.paths or [paths.results_dir(), paths.REPO_ROOT / "figures", paths.REPO_ROOT / "README.md"]
    missing = [t for t in targets if not Path(t).exists()]
    if missing:
        print(f"error: {missing[0]}: not found", file=sys.stderr)
        return 2
    pd_ = PersonalData.from_data(Path(args.hm_dir), Path(args.amazon))
    findings = pd_.scan_paths(targets)
    for f in findings:
        print(f)
    print(f"[pii] {len(findings)} finding(s) in {', '.join(map(str, targets))} (looked for customer ids, "
          f"{len(pd_.names)} reviewer names and ages)")
    return 1 if findings else 0


if __name__ == "__main__":
    sys.exit(main())
