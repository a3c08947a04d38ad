"""Run the numbered notebooks top to bottom: ``python -m mmreason.notebooks [--fast] [--only 01 03]``.

Each notebook executes in a fresh kernel, in order (02 trains or loads the run that 03 and 04 use), and
writes its figures to ``figures/`` (full mode) or to ``$MMREASON_FIGURES`` (default
``artifacts/figures_fast`` in fast mode, so a smoke run never overwrites the committed figures).
The executed copies, with their outputs, go to ``--out`` (default ``artifacts/notebooks``), never back
into ``notebooks/``: the committed notebooks stay without outputs.

Fast mode (``--fast``, or ``MMREASON_FAST=1`` for a notebook run by hand) is a smoke test: a few
examples, a tiny model trained for a few steps into ``artifacts/runs/fast``. The tests run it on a
tiny H&M-shaped fixture.
"""
from __future__ import annotations

import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from mmreason import cli, paths
from mmreason.io import check_ranges

NOTEBOOK_DIR = paths.REPO_ROOT / "notebooks"


def notebooks(only: list[str] | None = None) -> list[Path]:
    """The numbered notebooks (``NN-name.ipynb``) in order, or those whose number or name is in ``only``."""
    found = sorted(NOTEBOOK_DIR.glob("[0-9][0-9]-*.ipynb"))
    if only:
        found = [p for p in found if p.name[:2] in only or p.stem in only or p.name in only]
    return found


def execute(path: Path, out_dir: Path, timeout: int = 1800, cwd: Path | None = None,
            env: dict[str, str] | None = None) -> Path:
    """Run one notebook in a fresh ``python3`` kernel and save the executed copy (also when a cell fails).

    ``env``: the kernel's environment (default: this process's), e.g. with ``MMREASON_FAST=1``.
    """
    import nbformat
    from nbclient import NotebookClient

    nb = nbformat.read(path, as_version=4)
    client = NotebookClient(nb, timeout=timeout, kernel_name="python3",
                            resources={"metadata": {"path": str(cwd or path.parent)}})
    t0 = time.time()
    try:
        client.execute(env=dict(os.environ if env is None else env))
    finally:
        out_dir.mkdir(parents=True, exist_ok=True)
        out = out_dir / path.name
        nbformat.write(nb, out)
    print(f"[notebooks] {path.name}: {time.time() - t0:.0f} s -> {out}", flush=True)
    return out


@dataclass
class NotebooksOptions:
    """Run the numbered notebooks top to bottom: ``python -m mmreason.notebooks``.

    Args:
        fast: fast mode: tiny subset, few steps (sets MMREASON_FAST=1)
        only: notebook numbers or names, e.g. 01 03 (default: all)
        out: executed copies (default artifacts/notebooks[_fast])
        timeout: seconds per cell
    """
    fast: bool = False
    only: list[str] | None = None
    out: Path | None = None
    timeout: int = 1800

    def __post_init__(self):
        check_ranges(self, timeout=">=1")


def get_parser() -> cli.ArgumentParser:
    return cli.parser(NotebooksOptions, prog="python -m mmreason.notebooks", description=__doc__.split("\n")[0])


def main(argv=None) -> int:
    args, = get_parser().parse(argv)
    env = {**os.environ, "MMREASON_FAST": "1" if args.fast else "0"}
    out = args.out or paths.artifacts_dir() / ("notebooks_fast" if args.fast else "notebooks")
    todo = notebooks(args.only)
    if not todo:
        print(f"error: no notebooks matching {args.only} in {NOTEBOOK_DIR.relative_to(paths.REPO_ROOT)}/", file=sys.stderr)
        return 2
    from nbclient.exceptions import CellExecutionError

    for path in todo:
        try:
            execute(path, out, args.timeout, env=env)
        except CellExecutionError as e:  # the later notebooks build on this one: stop here, in one line
            evalue = (e.evalue.strip().splitlines() or [""])[0]
            print(f"error: {path.name} stopped in a cell with {e.ename}: {evalue} (traceback in the executed copy, "
                  f"{paths.shown(out / path.name)})", file=sys.stderr)
            return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
