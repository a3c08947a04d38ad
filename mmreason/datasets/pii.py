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

import gzip
import json
import re
from dataclasses import dataclass
from pathlib import Path

ID_PREFIX = 10
TEXT_SUFFIXES = {".json", ".md", ".txt", ".csv", ".tsv", ".ipynb", ".yaml", ".yml", ".log", ".html", ".svg", ".jsonl"}
PLACEHOLDER_NAMES = {"amazon customer", "kindle customer", "a customer", "customer", "anonymous"}
AGE_PATTERNS = [
    re.compile(r"\b\d{1,3}[- ]?(?:years?|yrs?)[- ]old\b", re.I),
    re.compile(r"\baged?\s*[:=]?\s*\d{1,3}(?:\.0)?\b(?!\s*(?:[-–+]|to\b)\s*\d*)", re.I),  # not a band "age 25-34"
]
JSON_AGE = re.compile(r"\"age\"\s*:\s*\d", re.I)  # a record's field; not in a tokenizer's token -> id map
TOKEN_MAPS = {"tokenizer.json", "vocab.json"}


@dataclass
class Finding:
    where: str
    kind: str      # customer_id | reviewer_name | age
    shown: str     # at most ID_PREFIX characters of the match

    def __str__(self):
        return f"{self.where}: {self.kind} ({self.shown}…)"


class PersonalData:
    """The personal data to look for, built from the raw inputs (``from_data``) or given directly."""

    def __init__(self, customer_ids=(), reviewer_names=(), common_words=()):
        n = ID_PREFIX + 1
        # every (ID_PREFIX+1)-long piece of every id: a longer prefix, or any other piece, contains one
        self.id_pieces = {c[i:i + n] for c in map(str, customer_ids) for i in range(len(c) - n + 1)}
        common = {w.lower() for w in common_words}
        names = set()
        for name in map(str, reviewer_names):
            name = " ".join(name.split())
            low = name.lower()
            # one-word names of 3 letters ("met", "Sws") turn up in ordinary and in garbled text and name no one
            if len(name) < 3 or low in PLACEHOLDER_NAMES or (" " not in name and (low in common or len(name) < 4)):
                continue
            names.add(low)
        self.names = sorted(names, key=len, reverse=True)
        self._names_re = (re.compile(r"(?<!\w)(?:" + "|".join(map(re.escape, self.names)) + r")(?!\w)", re.I)
                          if self.names else None)

    @classmethod
    def from_data(cls, hm_dir: Path | None = None, amazon_file: Path | None = None) -> "PersonalData":
        """Customer ids from ``customers.csv``; reviewer names from the Amazon reviews; common words from
        the H&M articles' names and copy."""
        import pandas as pd

        ids, names, words = [], [], set()
        if hm_dir is not None and (Path(hm_dir) / "customers.csv").exists():
            ids = pd.read_csv(Path(hm_dir) / "customers.csv", usecols=["customer_id"], dtype=str)["customer_id"].dropna()
            arts = pd.read_parquet(Path(hm_dir) / "articles.parquet", columns=["prod_name", "detail_desc"])
            for col in arts:
                for text in arts[col].dropna().astype(str):
                    words.update(re.findall(r"[a-z]+", text.lower()))
        if amazon_file is not None and Path(amazon_file).exists():
            with gzip.open(amazon_file, "rt", encoding="utf-8") as f:
                names = [n for n in (json.loads(line).get("reviewerName") for line in f if line.strip()) if n]
        return cls(ids, names, words)

    def scan_text(self, text: str, where: str = "", json_records: bool = True) -> list[Finding]:
        out = []
        n = ID_PREFIX + 1
        for m in re.finditer(r"[0-9A-Za-z]{%d,}" % n, text):
            run = m.group()
            if any(run[i:i + n] in self.id_pieces for i in range(len(run) - n + 1)):
                out.append(Finding(where, "customer_id", run[:ID_PREFIX]))
        if self._names_re is not None:
            out += [Finding(where, "reviewer_name", m.group()[:ID_PREFIX]) for m in self._names_re.finditer(text)]
        for pat in AGE_PATTERNS + ([JSON_AGE] if json_records else []):
            out += [Finding(where, "age", m.group()[:ID_PREFIX]) for m in pat.finditer(text)]
        return out

    def scan_file(self, path: Path) -> list[Finding]:
        path = Path(path)
        if path.suffix.lower() not in TEXT_SUFFIXES:
            return []
        text = path.read_text(encoding="utf-8", errors="replace")
        if path.suffix.lower() == ".ipynb":  # cells and text outputs; embedded images are base64, not text
            text = re.sub(r'"image/[a-z+]+": "[^"]*"', '""', text)
        # a BPE vocabulary maps the token "age" to its id ('"age": 4'): not a person's age
        return self.scan_text(text, str(path), json_records=path.name not in TOKEN_MAPS)

    def scan_paths(self, paths) -> list[Finding]:
        """Every text file under each path (files or folders, recursively)."""
        out = []
        for p in map(Path, paths):
            files = [p] if p.is_file() else sorted(q for q in p.rglob("*") if q.is_file())
            for f in files:
                out += self.scan_file(f)
        return out

    def scan_figure(self, fig, where: str = "figure") -> list[Finding]:
        """The text of every text artist in a matplotlib figure (titles, labels, ticks, annotations)."""
        from matplotlib.text import Text

        return [f for t in fig.findobj(Text) for f in self.scan_text(t.get_text(), where)]
