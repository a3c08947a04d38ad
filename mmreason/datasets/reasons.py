"""Silver reason targets: a personalised hook from the user's real history + the article's real copy.

H&M has no user-written text, so a target is assembled from real fields only, and every claim in it
can be traced back: the hook names attributes that this article shares with purchases the user made
*before* the example's day (recorded in ``hook_fields`` and ``hook_evidence``), and the copy is H&M's
own ``detail_desc`` for the article. The wording follows the evidence (which attributes are shared,
how many earlier buys, how long ago), never a coin flip, so the same evidence always reads the same.

Priority of evidence (the first that holds is used):
  type+colour  > type+pattern > type > pattern > colour > garment group > section
then, for users with history that shares nothing, or no history at all, an impersonal section hook.

The same rule writes the prompt's *evidence* (``Hook.evidence_text``): the article's citeable values and
the purchases the hook rests on, in the hook's own words (count, name, "2 months ago"). A target is then
only ever about facts its prompt holds: the hook once cited the most recent matching purchase from the
whole history while the behaviour listed only the last 5 (49.7% of cited names were in the prompt).
``Hook.facts`` lists every fact the hook states, for the audit in ``data.audit``.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, replace

# Attribute fields a hook may rest on: (field in the items table, short name used in records).
HOOK_FIELDS = {
    "product_type_name": "type",
    "colour_group_name": "colour",
    "graphical_appearance_name": "pattern",
    "garment_group_name": "garment_group",
    "section_name": "section",
}
# Appearances too common to be a taste worth mentioning on their own.
PLAIN_PATTERNS = {"Solid", "Unknown", ""}
# Values the catalogue uses for "not recorded": no fact about the article, so no hook or evidence names them
# ("More Unknown, like the ..." was 22 targets until 2026-12-03).
UNRECORDED = {"Unknown", "undefined", ""}


@dataclass(frozen=True)
class Purchase:
    """One earlier purchase as the hook sees it."""

    article_id: int
    days_ago: int
    prod_name: str
    product_type_name: str
    colour_group_name: str
    graphical_appearance_name: str
    garment_group_name: str
    section_name: str


@dataclass(frozen=True)
class Hook:
    text: str
    kind: str  # e.g. "type+colour", "section", "none"
    fields: tuple[str, ...]  # short field names the claim rests on
    evidence: tuple[int, ...]  # article_ids of the earlier purchases it cites (most recent first)
    personalised: bool
    evidence_text: str = ""  # the prompt's evidence segment: what the hook may state, in its words
    facts: tuple[str, ...] = ()  # every fact the hook states (a name, "twice", "2 months ago", "black")
    cited_name: str = ""  # the earlier purchase the hook names ("" if none)


def when(days: int) -> str:
    if days <= 1:
        return "yesterday"
    if days < 7:
        return f"{days} days ago"
    if days < 14:
        return "last week"
    if days < 60:
        return f"{days // 7} weeks ago"
    if days < 365:
        return f"{days // 30} months ago"
    return "over a year ago"


def _lower(v: str) -> str:
    return v.lower()


def _a(phrase: str) -> str:
    """The indefinite article for ``phrase``: "an all over pattern", "a stripe" (by its first letter; the
    catalogue's values hold no silent h or "you" sound). "a all over pattern" was 213 targets until 2026-12-03, "a"
    before any vowel 261."""
    return f"{'an' if phrase[:1].lower() in 'aeiou' else 'a'} {phrase}"


def _times(n: int) -> str:
    return "once" if n == 1 else ("twice" if n == 2 else f"{n} times")


def _dedupe(values) -> list[str]:
    out, seen = [], set()
    for v in values:
        if v and v.lower() not in seen:
            seen.add(v.lower())
            out.append(v)
    return out


# the article's values a target may name (data.FEATURE_COLUMNS), in the order the evidence lists them
ARTICLE_FACT_FIELDS = ("product_type_name", "colour_group_name", "graphical_appearance_name",
                       "perceived_colour_master_name", "garment_group_name", "section_name")


def article_evidence(article: dict) -> str:
    """The article's citeable values, short: "Trousers, Black, Solid, Ladies Denim"."""
    values = (str(article.get(f) or "").strip() for f in ARTICLE_FACT_FIELDS)
    return ", ".join(_dedupe(v for v in values if v not in UNRECORDED))


def _stated(text: str, candidates) -> tuple[str, ...]:
    """The candidate facts that ``text`` states (case-insensitive, on word boundaries)."""
    low = text.lower()
    return tuple(c for c in _dedupe(candidates)
                 if re.search(rf"(?<!\w){re.escape(c.lower())}(?!\w)", low))


def build_hook(article: dict, history: list[Purchase]) -> Hook:
    """The hook (and the evidence it rests on, see ``Hook``) for ``article`` and earlier purchases ``history``."""
    hook = _build_hook(article, history)
    art = article_evidence(article)
    if hook.personalised:
        name = hook.cited_name
        evidence = f"{art}. {hook.facts[0]} bought {hook.facts[1]}, most recently the {name} {hook.facts[2]}."
        facts = _stated(hook.text, [name, *hook.facts])
    else:
        evidence = f"{art}. " + ("nothing shared with earlier buys." if history else "first purchase.")
        facts = _stated(hook.text, [article.get("section_name") or ""])
    return replace(hook, evidence_text=evidence, facts=facts)


def _build_hook(article: dict, history: list[Purchase]) -> Hook:
    """The hook for recommending ``article`` to a user whose earlier purchases are ``history``.

    ``history`` holds only purchases strictly before the example's day, most recent first.
    """
    a = article
    section = a.get("section_name") or ""

    def same(*fields):
        return [p for p in history if all(getattr(p, f) == a[f] and a[f] not in UNRECORDED for f in fields)]

    typ, col, pat = a["product_type_name"], a["colour_group_name"], a["graphical_appearance_name"]
    patterned = pat not in PLAIN_PATTERNS
    rules = [
        (("product_type_name", "colour_group_name"), "type+colour"),
        (("product_type_name", "graphical_appearance_name"), "type+pattern") if patterned else None,
        (("product_type_name",), "type"),
        (("graphical_appearance_name",), "pattern") if patterned else None,
        (("colour_group_name",), "colour"),
        (("garment_group_name",), "garment_group"),
        (("section_name",), "section"),
    ]
    for rule in filter(None, rules):
        fields, kind = rule
        hits = same(*fields)
        if not hits:
            continue
        n, last = len(hits), hits[0]
        name, ago = last.prod_name.strip().rstrip("."), when(last.days_ago)
        if kind == "type+colour":
            text = (f"Matches your taste for {_lower(col)} {_lower(typ)}: you bought the {name} {ago}." if n == 1 else
                    f"Matches your taste for {_lower(col)} {_lower(typ)}: you have bought them {_times(n)}, most recently the {name} {ago}.")
        elif kind == "type+pattern":
            text = (f"Another {_lower(pat)} {_lower(typ)}, like the {name} you bought {ago}." if n == 1 else
                    f"You keep choosing {_lower(pat)} {_lower(typ)}: {_times(n)} so far, most recently the {name}.")
        elif kind == "type":
            text = (f"You bought the {name} ({_lower(typ)}) {ago}, so here is another {_lower(typ)} for you." if n == 1 else
                    f"{typ} is one of your staples: you have bought it {_times(n)}, most recently the {name} {ago}.")
        elif kind == "pattern":
            text = (f"You went for {_a(_lower(pat))} design with the {name} {ago}; this one has it too." if n == 1 else
                    f"{pat} is a look you come back to: {_times(n)} in your earlier buys, most recently the {name}.")
        elif kind == "colour":
            text = (f"In {_lower(col)}, like the {name} you bought {ago}." if n == 1 else
                    f"{col} is a regular in your wardrobe: you have chosen it {_times(n)}, most recently with the {name}.")
        elif kind == "garment_group":
            text = f"More {a['garment_group_name']}, like the {name} you bought {ago}." if n == 1 else \
                f"More {a['garment_group_name']}, a group you have shopped {_times(n)}, most recently for the {name}."
        else:  # section
            text = f"From {section}, where you found the {name} {ago}." if n == 1 else \
                f"More from {section}, where you have shopped {_times(n)}, most recently for the {name}."
        short = tuple(HOOK_FIELDS[f] for f in fields)
        values = " ".join(str(a[f]) for f in fields[::-1])  # "black trousers", "striped dress"
        # facts (for build_hook): the values as the evidence says them, the count, the time, then each value
        facts = (values.lower() if kind not in ("garment_group", "section") else values, _times(n), ago,
                 *(str(a[f]) for f in fields))
        return Hook(text, kind, short, tuple(p.article_id for p in hits[:5]), True, facts=facts, cited_name=name)
    if history:
        return Hook(f"Something new for you from {section}." if section else "Something new for you.",
                    "new_section" if section else "none", ("section",) if section else (), (), False)
    return Hook(f"A pick from {section} to start with." if section else "", "cold_section" if section else "none",
                ("section",) if section else (), (), False)


def product_copy(article: dict) -> tuple[str, str]:
    """(copy, source): H&M's own ``detail_desc``, or a plain attribute sentence where it is missing."""
    desc = (article.get("detail_desc") or "").strip()
    if desc:
        return desc, "detail_desc"
    return f"{article['prod_name']}: {article['product_type_name'].lower()} in {article['colour_group_name'].lower()}.", "attributes"
