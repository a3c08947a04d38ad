"""Personal data in outputs: ``python -m mmreason.pii [PATH ...]`` scans files, exit 1 on any finding.

The command; the library is ``mmreason.datasets.pii``, whose docstring says what it does and why.
"""
from __future__ import annotations

import sys
from dataclasses import dataclass, field
from pathlib import Path

from mmreason import cli, paths
from mmreason.datasets.pii import PersonalData


@dataclass
class PiiOptions:
    """Personal data in outputs: ``python -m mmreason.pii [PATH ...]`` scans files, exit 1 on any finding.

    Args:
        paths: files or folders (default: results/ and figures/ and README.md)
        hm_dir: raw H&M folder (its customer ids)
        amazon: Amazon Fashion reviews file (its reviewer names)
    """
    paths: list[str] = field(default_factory=list)
    hm_dir: str = field(default_factory=lambda: str(paths.REPO_ROOT.parent / "shared" / "data" / "hm"))
    amazon: str = field(default_factory=lambda: str(paths.REPO_ROOT.parent / "shared" / "data" / "amazon_fashion5" /
                                                    "AMAZON_FASHION_5.json.gz"))


def get_parser() -> cli.ArgumentParser:
    return cli.parser(PiiOptions, prog="python -m mmreason.pii", description=__doc__.split("\n")[0],
                      positional={"paths"})


def main(argv=None) -> int:
    args, = get_parser().parse(argv)
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
