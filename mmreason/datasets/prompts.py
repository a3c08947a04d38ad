"""The texts of a prompt, built from the prepared tables: the user profile, the behaviour (earlier
purchases), the evidence and the product, each within its token budget (``PROMPT_BUDGET``).
"""
from __future__ import annotations

import re
from collections import Counter

import numpy as np
import pandas as pd

from mmreason.datasets.reasons import Purchase, build_hook

# Token ceilings of the prompt segments (collate.DEFAULT_MAX_PROMPT_TOKENS, configs/*.yaml), set from the
# data. The evidence segment holds every fact a target states (reasons.build_hook), so it is never cut: its
# ceiling is above its longest text in bytes (204 on the full H&M data), and a byte-level BPE spends at
# least one byte per token (one more for an added prefix space). The audit below checks exactly that.
PROMPT_BUDGET = {"user_profile": 64, "evidence": 224, "behaviour": 48, "product": 48}
PROMPT_SEGMENTS = ("user_profile", "evidence", "behaviour", "product")  # in prompt order
PROFILE_FIELDS = {  # items column -> label in the profile text
    "product_type_name": "types", "colour_group_name": "colours", "graphical_appearance_name": "patterns",
    "section_name": "sections", "garment_group_name": "garment groups",
}


# --------------------------------------------------------------------------- serialising model inputs

def product_text(a: dict) -> str:
    """The product segment of the prompt: name and attributes. The copy (detail_desc) is the target."""
    parts = [
        ("name", a["prod_name"]), ("type", a["product_type_name"]), ("group", a["product_group_name"]),
        ("pattern", a["graphical_appearance_name"]),
        ("colour", f"{a['colour_group_name']} ({a['perceived_colour_value_name']} {a['perceived_colour_master_name']})"),
        ("department", a["department_name"]), ("section", a["section_name"]),
        ("garment group", a["garment_group_name"]), ("index", a["index_group_name"]),
    ]
    return "; ".join(f"{k}: {v}" for k, v in parts if v)


def age_band(age) -> str:
    if age is None or pd.isna(age):
        return "age unknown"
    for hi, label in [(24, "16-24"), (34, "25-34"), (44, "35-44"), (54, "45-54"), (64, "55-64")]:
        if age <= hi:
            return f"age {label}"
    return "age 65+"


def price_level(mean_price: float, cuts: tuple[float, float]) -> str:
    return "budget" if mean_price <= cuts[0] else ("mid-price" if mean_price <= cuts[1] else "premium")


def profile_text(customer: dict, counts: dict[str, Counter], n_before: int, channels: Counter,
                 price_sum: float, cuts: tuple[float, float], top: int = 3) -> str:
    head = [age_band(customer["age"]), f"club {customer['club_member_status'].lower()}",
            f"news {customer['fashion_news_frequency'].lower()}"]
    if n_before == 0:
        return "; ".join(head + ["no earlier purchases"])
    online = channels[2] / max(1, sum(channels.values()))
    head += ["shops online" if online > 0.5 else "shops in store", price_level(price_sum / n_before, cuts),
             f"{n_before} earlier purchases"]
    for col, label in PROFILE_FIELDS.items():
        head.append(f"{label}: " + ", ".join(f"{v} {n}" for v, n in counts[col].most_common(top) if v))
    return "; ".join(head)


def behaviour_text(history: list[Purchase], n: int) -> str:
    if not history:
        return "no earlier purchases"
    return "; ".join(f"{p.prod_name} ({p.product_type_name}, {p.colour_group_name}, {p.days_ago} days ago)"
                     for p in history[:n])


# --------------------------------------------------------------------------- building the tables

def price_cuts(interactions: pd.DataFrame) -> tuple[float, float]:
    """Budget / mid-price / premium cut points: terciles of training-period purchase prices."""
    train = interactions.loc[interactions["split_temporal"] == "train", "price"]
    return tuple(np.quantile(train if len(train) else interactions["price"], [1 / 3, 2 / 3]).tolist())


def user_context(tables: dict[str, pd.DataFrame], customer_id: str, day, n_behaviour: int = 5,
                 cuts: tuple[float, float] | None = None) -> dict:
    """A customer's prompt segments as of the start of ``day`` (any date, e.g. the day after the data ends).

    -> {"user_profile", "behaviour", "history": [Purchase, most recent first]}: the same text
    ``build_tables`` writes for an example on that day (purchases strictly before ``day`` only).
    ``tables``: users, items, interactions as ``load_tables`` returns them. Unknown customer: KeyError.
    """
    users = tables["users"]
    row = users[users["customer_id"] == customer_id]
    if row.empty:
        raise KeyError(f"unknown customer_id {customer_id!r}")
    day = pd.Timestamp(day)
    inter = tables["interactions"]
    cuts = cuts or price_cuts(inter)
    past = _past(inter, customer_id, day)
    items = tables["items"].set_index("article_id")
    bought = items.loc[past["article_id"].to_numpy(), list(PROFILE_FIELDS)]  # one row per purchase, in order
    # counted in purchase order, as build_tables counts them (most_common breaks ties by first seen)
    counts = {col: Counter(bought[col].tolist()) for col in PROFILE_FIELDS}
    channels = Counter(past["sales_channel_id"].tolist())
    price_sum = sum(past["price"].tolist(), 0.0)  # left to right, as a loop adds them
    history = _purchases(past, items, day)
    customer = row.iloc[0].to_dict()
    return {"user_profile": profile_text(customer, counts, len(past), channels, price_sum, cuts),
            "behaviour": behaviour_text(history, n_behaviour), "history": history}


def _past(interactions: pd.DataFrame, customer_id: str, day: pd.Timestamp) -> pd.DataFrame:
    past = interactions[(interactions["customer_id"] == customer_id) & (interactions["t_dat"] < day)]
    return past.sort_values(["t_dat", "article_id"], kind="stable")            # the order build_tables adds them


_PURCHASE_FIELDS = ("prod_name", "product_type_name", "colour_group_name", "graphical_appearance_name",
                    "garment_group_name", "section_name")


def _purchases(past: pd.DataFrame, items: pd.DataFrame, day: pd.Timestamp) -> list[Purchase]:
    """``past`` (oldest first) as Purchases, most recent first; ``items`` indexed by article_id."""
    past = past.iloc[::-1]
    ids = past["article_id"].to_numpy()
    cols = items.loc[ids, list(_PURCHASE_FIELDS)]
    days = (day - past["t_dat"]).dt.days.tolist()
    return [Purchase(int(a), int(d), *vals) for a, d, *vals in
            zip(ids.tolist(), days, *(cols[f].tolist() for f in _PURCHASE_FIELDS))]


def history_before(interactions: pd.DataFrame, items: pd.DataFrame, customer_id: str, day) -> list[Purchase]:
    """A customer's purchases strictly before ``day``, most recent first (``items`` indexed by article_id)."""
    day = pd.Timestamp(day)
    return _purchases(_past(interactions, customer_id, day), items, day)


def evidence_fields(article: dict, history: list[Purchase]) -> dict:
    """The prompt's evidence for ``article`` and a customer's earlier purchases, as ``build_tables`` writes
    it: {"evidence", "cited_name", "hook"} (reasons.build_hook's rule; "hook" is the sentence those facts make,
    which the filter holds a shown reason's hook to)."""
    hook = build_hook(article, history)
    return {"evidence": hook.evidence_text, "cited_name": hook.cited_name, "hook": hook.text}


FEATURE_COLUMNS = ["product_type_name", "colour_group_name", "graphical_appearance_name",
                   "perceived_colour_master_name", "garment_group_name", "section_name"]


def target_features(reason: str, article: dict) -> list[str]:
    """PETER-style features: the article's attribute values that the target text names."""
    low = reason.lower()
    out = []
    for col in FEATURE_COLUMNS:
        v = article[col].lower()
        if v and not any(v in o for o in out) and re.search(rf"(?<!\w){re.escape(v)}(?!\w)", low):
            out.append(v)
    return out


# --------------------------------------------------------------------------- audit: every stated fact is in the prompt

def visible_prompt(example: dict, caps: dict[str, int] = PROMPT_BUDGET, tokenizer=None,
                   fields=PROMPT_SEGMENTS) -> str:
    """The prompt text the model receives after each segment is cut to ``caps[segment]`` tokens.

    With a tokenizer (anything with ``encode(text, add_special_tokens=False)`` and ``decode(ids)``): exactly
    its first cap tokens. Without one: the first cap - 1 bytes, which is what any byte-level BPE keeps at
    least (each token spells >= 1 byte; one may be an added prefix space), so a fact found there is visible
    whatever tokenizer the run trains. A segment without a cap is not in the prompt.
    """
    parts = []
    for field in fields:
        text, cap = example.get(field) or "", caps.get(field)
        if cap is None or not isinstance(text, str):
            continue
        if tokenizer is None:
            parts.append(text.encode()[:max(cap - 1, 0)].decode("utf-8", "ignore"))
        else:
            parts.append(tokenizer.decode(tokenizer.encode(text, add_special_tokens=False)[:cap]))
    return " | ".join(parts)


def target_facts(example: dict) -> list[str]:
    """Every fact a silver target states: the hook's (name, count, time, values) and the article's values
    that the whole target names (``features``)."""
    hook = example.get("hook_facts")
    feats = example.get("features")
    return [str(f) for f in (list(hook) if hook is not None else []) + (list(feats) if feats is not None else [])]


def audit(examples: pd.DataFrame, caps: dict[str, int] = PROMPT_BUDGET, tokenizer=None,
          fields=PROMPT_SEGMENTS, max_listed: int = 5) -> dict:
    """Is each fact each target states readable in the prompt the model receives (``visible_prompt``)?

    -> {"targets", "targets_all_visible" (share), "facts", "facts_visible" (share), "mode", "invisible": the
    first few (example_id, fact)}. Case-insensitive, on word boundaries.
    """
    n_targets = all_ok = n_facts = seen = 0
    invisible = []
    for r in examples.to_dict("records"):
        facts = target_facts(r)
        low = visible_prompt(r, caps, tokenizer, fields).lower()
        ok = [bool(re.search(rf"(?<!\w){re.escape(f.lower())}(?!\w)", low)) for f in facts]
        n_targets += 1
        n_facts += len(facts)
        seen += sum(ok)
        all_ok += all(ok)
        if not all(ok) and len(invisible) < max_listed:
            invisible += [(int(r.get("example_id", -1)), f) for f, o in zip(facts, ok) if not o][:max_listed - len(invisible)]
    return {"targets": n_targets, "targets_all_visible_n": all_ok, "facts_visible_n": seen,
            "targets_all_visible": all_ok / n_targets if n_targets else float("nan"),
            "facts": n_facts, "facts_visible": seen / n_facts if n_facts else float("nan"),
            "mode": "tokens" if tokenizer is not None else "bytes (any byte-level BPE)", "caps": dict(caps),
            "invisible": invisible}
