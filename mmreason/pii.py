"""Personal data in outputs: ``python -m mmreason.pii [PATH ...]`` scans files, exit 1 on any finding.

The command; the library is ``mmreason.datasets.pii``, whose docstring says what it does and why.
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
