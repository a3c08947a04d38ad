"""Small I/O helpers shared by the CLIs: one-line data and setting errors, a problem report, atomic writes."""
from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import tempfile
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd


class DataError(ValueError):
    """Bad input that stops a run. The message is one line naming the file and the row or id."""


class SettingError(ValueError):
    """A setting the command cannot use (``check_ranges``): ``train``, whose options LightningCLI instantiates
    together with the data pipeline, says these in one line and lets any other error keep its traceback."""


# The ranges a numeric option may be given (``check_ranges``): the test, and how the error says it
RANGES = {">=0": (lambda v: v >= 0, "0 or more"), ">=1": (lambda v: v >= 1, "at least 1"),
          ">=2": (lambda v: v >= 2, "at least 2"), ">0": (lambda v: v > 0, "above 0"),
          "[0,1)": (lambda v: 0 <= v < 1, "in [0, 1)"), "(0,1)": (lambda v: 0 < v < 1, "in (0, 1)"),
          "[0,1]": (lambda v: 0 <= v <= 1, "in [0, 1]"),
          "port": (lambda v: 0 <= v <= 65535, "a port is 0-65535 (0: any free one)")}


def check_ranges(obj, flag_prefix: str | None = None, **rules: str) -> None:
    """For a ``__post_init__``: ``SettingError`` (a ``ValueError``) naming, as flags, every field of ``obj``
    outside its range (``rules``: field name -> a key of ``RANGES``), so ``cli``'s parse stops in one line before
    the command does anything. None passes (a field whose None means "the default" or "none"). ``flag_prefix``:
    LightningCLI's spelling, e.g. "--data." for ``--data.batch_size`` (default: ``--batch-size``)."""
    flag = (lambda n: flag_prefix + n) if flag_prefix else (lambda n: "--" + n.replace("_", "-"))
    bad = [f"{flag(name)} {v}: {RANGES[rule][1]}" for name, rule in rules.items()
           if (v := getattr(obj, name)) is not None and not RANGES[rule][0](v)]
    if bad:
        raise SettingError("; ".join(bad))


@dataclass
class Report:
    """Collects one-line problems found in the input.

    ``on_error="skip"`` drops the offending row (or photo) and carries on; ``"fail"`` raises on the
    first *error*. Notes (real, expected gaps such as a missing ``detail_desc``) never fail a run.
    """

    on_error: str = "skip"
    errors: list[tuple[str, str]] = field(default_factory=list)
    notes: list[tuple[str, str]] = field(default_factory=list)

    def error(self, kind: str, message: str) -> None:
        if self.on_error == "fail":
            raise DataError(message)
        self.errors.append((kind, message))

    def note(self, kind: str, message: str) -> None:
        self.notes.append((kind, message))

    def counts(self) -> dict[str, int]:
        return dict(Counter(k for k, _ in self.errors)) | {f"note:{k}": n for k, n in Counter(k for k, _ in self.notes).items()}

    def lines(self, limit: int = 10) -> list[str]:
        """The first ``limit`` problems of each kind, then how many more."""
        out, seen = [], Counter()
        for kind, msg in self.errors + self.notes:
            seen[kind] += 1
            if seen[kind] <= limit:
                out.append(msg)
        for kind, n in seen.items():
            if n > limit:
                out.append(f"... and {n - limit} more of kind '{kind}'")
        return out

    def to_frame(self) -> pd.DataFrame:
        rows = [("error", k, m) for k, m in self.errors] + [("note", k, m) for k, m in self.notes]
        return pd.DataFrame(rows, columns=["level", "kind", "message"])


def fingerprint(*parts) -> str:
    """sha256 of a JSON dump of ``parts``: pass file contents' hashes (``sha256_file``), never file times; a path
    only where the artifact itself holds it (the H&M tables name their photos by absolute path)."""
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:16]


def sha256_file(path: str | os.PathLike) -> str:
    """The file's content as sha256 hex: how runs, stores and checkpoints are told apart by their inputs."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def atomic_write_bytes(path: Path, data: bytes) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.chmod(tmp, 0o644)  # mkstemp makes 0600; artifacts are ordinary readable files
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def atomic_write_json(path: Path, obj) -> None:
    atomic_write_bytes(path, (json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n").encode())


def write_report(out_dir: Path, stem: str, payload: dict, table: str) -> None:
    """``<out_dir>/<stem>.json`` (the numbers) and ``<stem>.md`` (the table people read), each atomically."""
    atomic_write_json(Path(out_dir) / f"{stem}.json", payload)
    atomic_write_bytes(Path(out_dir) / f"{stem}.md", table.encode())


@contextlib.contextmanager
def atomic_dir(path: Path):
    """Yield a temporary sibling folder; on success it replaces ``path`` whole, on failure it vanishes.

    So a run that dies half-way never leaves a mixture of old and new tables behind.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp"))
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    os.chmod(tmp, 0o755)  # mkdtemp makes 0700
    old = path.with_name(f".{path.name}.old")
    _remove(old)  # left by a run that died between the two renames: a folder, or a link (rmtree refuses links)
    if path.exists() or path.is_symlink():
        os.replace(path, old)
    os.replace(tmp, path)
    _remove(old)


def _remove(path: Path) -> None:
    if path.is_symlink() or path.is_file():
        path.unlink()
    elif path.exists():
        shutil.rmtree(path, ignore_errors=True)
