"""The prepared tables as a ``Context`` (ids, as-of purchase counts) and the ``Task`` of a split:
which customers, their history before the day, the articles bought on it.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np
import pandas as pd

from mmreason.datasets.hm import load_tables
from mmreason.io import DataError

ATTRIBUTES = ["product_type_name", "colour_group_name", "graphical_appearance_name", "section_name",
              "garment_group_name", "index_group_name"]
USER_FIELDS = ["age_band", "club_member_status", "fashion_news_frequency"]
ALLOWED = {"val": ("train",), "test": ("train", "val"), "next": ("train", "val", "test")}
RECENT_DAYS = 28


class UnknownUser(KeyError):
    pass


def day_number(values) -> np.ndarray:
    """Days since 1970-01-01 as int64 (from datetimes)."""
    return np.asarray(values).astype("datetime64[D]").astype(np.int64)


# --------------------------------------------------------------------------- the evaluation task

@dataclass
class Task:
    """Who is asked, as of when, with which history, and what the models may count."""

    split: str
    customers: list[str]
    user_rows: np.ndarray  # (U,) rows in Context.users
    cutoff: np.ndarray  # (U,) day number of the asked day
    history: list[np.ndarray]  # item rows bought strictly before the cutoff, oldest first
    history_days: list[np.ndarray]
    targets: list[set]  # item rows bought on the cutoff day (empty for "next")
    pool_item: np.ndarray  # purchases of everyone from the allowed splits, sorted by day
    pool_user: np.ndarray
    pool_day: np.ndarray
    n_cold: int = 0  # customers with an S day but no earlier purchase (not evaluated)


class Context:
    """The prepared tables as integer arrays: items and users by row, interactions by (user, day)."""

    def __init__(self, tables: dict[str, pd.DataFrame], fingerprint: str = ""):
        self.items = tables["items"].reset_index(drop=True)
        self.users = tables["users"].reset_index(drop=True)
        self.fingerprint = fingerprint
        self.item_row = pd.Series(np.arange(len(self.items)), index=self.items["article_id"].to_numpy())
        self.user_row = pd.Series(np.arange(len(self.users)), index=self.users["customer_id"].to_numpy())
        inter = tables["interactions"]
        self.i_user = self.user_row.loc[inter["customer_id"].to_numpy()].to_numpy()
        self.i_item = self.item_row.loc[inter["article_id"].to_numpy()].to_numpy()
        self.i_day = day_number(inter["t_dat"])
        self.i_split = inter["split_temporal"].to_numpy().astype(str)
        order = np.lexsort((self.i_item, self.i_day, self.i_user))  # by user, then day, then item row
        self.i_user, self.i_item = self.i_user[order], self.i_item[order]
        self.i_day, self.i_split = self.i_day[order], self.i_split[order]
        self.user_start = np.searchsorted(self.i_user, np.arange(len(self.users) + 1))
        self.product = pd.factorize(self.items["product_code"])[0]

    @property
    def n_items(self) -> int:
        return len(self.items)

    def resolve_user(self, user_id: str) -> str:
        """A full customer_id, or a unique prefix of one (at least 6 characters)."""
        if user_id in self.user_row.index:
            return user_id
        hits = [c for c in self.user_row.index if len(user_id) >= 6 and c.startswith(user_id)] if user_id else []
        if len(hits) == 1:
            return hits[0]
        many = f" ({len(hits)} customers share that prefix)" if hits else ""
        raise UnknownUser(f"unknown customer_id {user_id!r}{many}")

    def task(self, split: str, customers: list[str] | None = None) -> Task:
        if split not in ALLOWED:
            raise ValueError(f"split must be one of {list(ALLOWED)}, got {split!r}")
        pool = np.isin(self.i_split, ALLOWED[split])
        order = np.argsort(self.i_day[pool], kind="stable")
        pool_item, pool_user, pool_day = self.i_item[pool][order], self.i_user[pool][order], self.i_day[pool][order]
        if split == "next":  # as of the day after the data ends, everything is history
            rows = self.user_row.loc[customers].to_numpy() if customers is not None else np.arange(len(self.users))
            cut = np.full(len(rows), self.i_day.max() + 1)
        else:
            sel = self.i_split == split
            first = pd.Series(self.i_day[sel]).groupby(self.i_user[sel]).min()
            rows, cut = first.index.to_numpy(), first.to_numpy()
            if customers is not None:
                keep = np.isin(rows, self.user_row.loc[customers].to_numpy())
                rows, cut = rows[keep], cut[keep]
        kept, cuts, history, history_days, targets, n_cold = [], [], [], [], [], 0
        for u, c in zip(rows, cut):
            s, e = self.user_start[u], self.user_start[u + 1]
            days, items = self.i_day[s:e], self.i_item[s:e]
            before = days < c
            if split != "next" and not before.any():
                n_cold += 1
                continue
            kept.append(u), cuts.append(c)
            history.append(items[before])
            history_days.append(days[before])
            targets.append(set(items[days == c].tolist()))
        kept, cuts = np.array(kept, dtype=np.int64), np.array(cuts, dtype=np.int64)
        return Task(split, self.users["customer_id"].to_numpy()[kept].tolist(), kept, cuts, history, history_days,
                    targets, pool_item, pool_user, pool_day, n_cold)


# --------------------------------------------------------------------------- one customer

def load_context(data_dir) -> Context:
    """The prepared tables of ``data_dir`` as a ``Context``, cached per folder and manifest fingerprint."""
    manifest = Path(data_dir) / "manifest.json"
    if not manifest.exists():
        raise DataError(f"{data_dir}: no prepared tables; run `python -m mmreason.data` first")
    return _load_context_cached(str(Path(data_dir).resolve()), json.loads(manifest.read_text()).get("fingerprint", ""))


@lru_cache(maxsize=2)
def _load_context_cached(data_dir: str, fingerprint: str) -> Context:
    return Context(load_tables(Path(data_dir), names=("users", "items", "interactions")), fingerprint)
