"""Tidy generated reasons and reject the low-quality ones before anyone reads them.

`Filter.check` lists why a reason is rejected (empty list = accepted):
  empty          no words, or fewer than min_words
  truncated      does not end in . ! or ? (decoding ran out of tokens)
  repetitive     a 3-gram occurs three times (Filter(max_repeats=1): twice), a sentence is said twice,
                 a hook phrase said once in every silver reason is said twice (ONCE_PHRASES: "most
                 recently for most recently with ..."), or distinct-1 < 0.5 over >= 8 tokens
  wrong_colour   names a colour / product type / pattern of the vocabulary that contradicts the article
  wrong_type
  wrong_pattern
  false_history  claims past purchases (metrics.history_claims, with CLAIM_PATTERNS) for a user who has
                 none, or the claim names colours (or types) none of which the user ever bought, or it
                 names an earlier purchase ("most recently the Luna skinny") that is not among the user's
                 (history["names"], when given); the evidence's own hook, stated as it is, names only true
                 values (the data audit) and is not held to the colours and types she bought
  unsupported_hook  (when the prompt's evidence hook is given: ``hook=``) the reason does not open with the
                 hook sentence its evidence states (reasons.build_hook: the facts, count, time and name the
                 prompt shows, in their template). The evidence holds one hook's facts and nothing else the
                 user did, so any other hook states something the model cannot see: a colour it spliced
                 ("LightSocks is a regular in your wardrobe"), a section the user was never counted in, a
                 time or count of its own. Compared on metrics.tokenize tokens (case and punctuation free),
                 sentence for sentence: a hook with a trailing claim or a cut name is not the hook.

When is a named value *not* a contradiction (so the filter errs towards keeping a reason)?
  * it is compatible with the article's own value: equal, or one's words contain the other's
    ("blue" for Light Blue, "top" for Vest top), plurals folded; colour also accepts the article's
    perceived_colour_master_name;
  * it is one of the article's values in another field ("transparent" is a colour and a pattern) or
    appears in the article's own words (OWN_TEXT_FIELDS: name, copy, section... "Socks & Tights");
  * it is in a sentence that claims history and names an earlier purchase that has it: "like the Wrap
    dress you bought" describes that purchase, not this article. "Has it" means the value is in the
    purchase's name (history["names"]), or, when no names are given, in the history's set for the field;
    with history=None, values in such sentences are not held against the reason;
  * it is too generic to mean anything (GENERIC_VALUES, below).
A value is also named by its aliases (metrics.VALUE_ALIASES: "jumpsuit" names Jumpsuit/Playsuit), and the
article's own words may use either.
"""
from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence

from mmreason.metrics import (HISTORY_CLAIM_PATTERNS, cited_purchases, cites_a_purchase, history_claims,
                              mentioned_values, split_sentences, tokenize, value_index)

CAUSES = ("empty", "truncated", "repetitive", "wrong_colour", "wrong_type", "wrong_pattern", "false_history",
          "unsupported_hook")

# field -> the article columns holding its true value(s)
FIELDS = {
    "colour": ("colour_group_name", "perceived_colour_master_name"),
    "type": ("product_type_name",),
    "pattern": ("graphical_appearance_name",),
}

# Values never held against a reason, by field (normalised as metrics.tokenize + " ".join). Why:
GENERIC_VALUES = {
    # placeholders, and "metal" / "mole" (perceived colours) which copy uses for trims and means little
    "colour": {"other", "unknown", "undefined", "metal", "mole"},
    # placeholders; hypernyms that fit many types ("top", "bag"); words that in H&M copy usually name a
    # part or trim of another garment ("cap sleeves", "belt loops", "tie fastening", "block heels",
    # "adjustable braces", "wedge heel") or are everyday verbs ("watch", "ring", "pumps")
    "type": {"unknown", "other accessories", "top", "bag", "cap", "belt", "tie", "heels", "wedge", "braces",
             "watch", "ring", "pumps", "toy", "costumes", "garment set", "accessories set"},
    # placeholders; "solid" ("a solid choice"), "check" (the verb), "contrast" ("contrast stitching" on
    # anything) and "treatment" are common words that say nothing about the article's appearance
    "pattern": {"other", "unknown", "other pattern", "other structure", "solid", "check", "contrast", "treatment",
                "mixed solid pattern"},
}

# metrics' claim phrases plus the other ways the silver hooks (reasons.build_hook) cite past purchases
# Phrases of the hook templates (reasons.build_hook) that no silver reason says twice (0 of 28,516 H&M
# reasons each; said once in 3,041-14,926 of them): a reason saying one twice is a looping hook.
ONCE_PHRASES = ("most recently", "you bought", "you have bought", "you have chosen", "ago", "matches your taste",
                "is a regular in your wardrobe")

CLAIM_PATTERNS = HISTORY_CLAIM_PATTERNS + (
    r"\byou have chosen\b", r"\byou've chosen\b", r"\byou chose\b", r"\byou keep choosing\b", r"\byou went for\b",
    r"\byou have shopped\b", r"\bwhere you found\b", r"\byou come back to\b", r"\byour earlier\b",
    r"\byour wardrobe\b", r"\bmost recently\b",
)

SENTENCE_END = re.compile(r"[.!?][\"')\]]*$")  # a finished reason ends so (else: truncated); constraints' "ends"


# --------------------------------------------------------------------------- tidy-up
def clean(text: str, drop_unfinished: bool = False) -> str:
    """Collapse whitespace, fix spacing around punctuation, capitalise the first letter.

    drop_unfinished=True also cuts an unfinished last sentence, but only after a finished one; by default
    it stays, so that `check` can still call the reason truncated.
    """
    text = re.sub(r"\s+", " ", text or "").strip()
    text = re.sub(r"\s+([.,!?;:])", r"\1", text)                 # "fabric ." -> "fabric."
    text = re.sub(r"([.,!?;:])\1+", r"\1", text)                 # "!!" -> "!"
    text = re.sub(r",([.!?])", r"\1", text)                      # ",." -> "."
    text = re.sub(r"([a-z][.!?])([A-Z])", r"\1 \2", text)        # "ago.Wide" -> "ago. Wide"
    text = re.sub(r"^[\s.,;:!?\-]+", "", text)                   # stray leading punctuation
    if drop_unfinished and not SENTENCE_END.search(text):
        ends = list(re.finditer(r"[.!?][\"')\]]*(?=\s)", text))
        if ends:
            text = text[:ends[-1].end()]
    if text[:1].isalpha():
        text = text[0].upper() + text[1:]
    return text


# --------------------------------------------------------------------------- vocabularies
def _norm(value) -> str:
    return " ".join(tokenize(value)) if isinstance(value, str) else ""


_GENERIC_NORMALISED = {field: {_norm(g) for g in values} for field, values in GENERIC_VALUES.items()}


def vocab_from_items(items_df) -> dict[str, set[str]]:
    """{"colour", "type", "pattern"} -> lowercased, normalised values found in an items/articles table."""
    vocab = {}
    for field, columns in FIELDS.items():
        values = set()
        for col in columns:
            if col in items_df:
                values |= {_norm(v) for v in items_df[col].dropna().unique()}
        vocab[field] = values - {""}
    return vocab


def is_generic(field: str, value: str) -> bool:
    """Whether a value of ``field`` is one of GENERIC_VALUES (compared normalised), never held against a reason."""
    return _norm(value) in _GENERIC_NORMALISED.get(field, ())


def specific_values(vocab: Mapping[str, Iterable[str]]) -> dict[str, set[str]]:
    """vocab without the generic values: what a reason can be held to. The filter and the grounding metrics
    use the same list, so "a metal buckle" is neither rejected nor scored as the colour Metal."""
    return {field: {v for v in values if not is_generic(field, v)} for field, values in vocab.items()}


def _index(values: Iterable[str], generic: Iterable[str]) -> dict[tuple[str, ...], str]:
    """Token tuple -> normalised value (metrics' index, with its aliases), generic values left out."""
    generic = {_norm(g) for g in generic}
    return {key: v for key, v in value_index(values).items() if v not in generic}


def _same_word(a: str, b: str) -> bool:
    return a == b or a + "s" == b or b + "s" == a or a + "es" == b or b + "es" == a


def _compatible(named: str, truth: str) -> bool:
    """Equal, or one's words all occur in the other ("blue" ~ "light blue", "top" ~ "vest top"); a hyphen
    joins words ("shirt" ~ "t-shirt": decoding spells "T-shirt" as "T", "-", "shirt", and the constraint
    must not stop the "shirt")."""
    a, b = named.replace("-", " ").split(), truth.replace("-", " ").split()
    return all(any(_same_word(x, y) for y in b) for x in a) or all(any(_same_word(y, x) for x in a) for y in b)


# --------------------------------------------------------------------------- checks
# the article's own words: a value they use is not a contradiction ("Socks & Tights" section, "tie belt")
OWN_TEXT_FIELDS = ("prod_name", "detail_desc", "section_name", "garment_group_name", "department_name")


def _own_text(article: Mapping) -> str:
    """The article's own name, copy and labels as " tok tok | tok ... ", for phrase look-ups on word boundaries."""
    parts = [" ".join(tokenize(article[k])) for k in OWN_TEXT_FIELDS if isinstance(article.get(k), str)]
    return " " + " | ".join(parts) + " "


def _repetitive(tokens: list[str], n: int, max_repeats: int) -> bool:
    """An n-gram more than max_repeats times, or distinct-1 < 0.5 over >= 8 tokens."""
    grams = Counter(tuple(tokens[i:i + n]) for i in range(len(tokens) - n + 1))
    if grams and max(grams.values()) > max_repeats:
        return True
    return len(tokens) >= 8 and len(set(tokens)) / len(tokens) < 0.5


def _repeated_sentence(sentences: list[str]) -> bool:
    long = [s for s in sentences if len(s.split()) >= 3]
    return len(set(long)) < len(long)


def _article_truths(article: Mapping) -> tuple[dict[str, set[str]], set[str], str]:
    """(the article's values per field, all of them, its own words) as `check` compares against them."""
    truths = {f: {_norm(article.get(c)) for c in cols} - {""} for f, cols in FIELDS.items()}
    return truths, set().union(*truths.values()), _own_text(article)


# every column _article_truths reads: what contradicting's results are kept by
_ARTICLE_COLUMNS = tuple(c for cols in FIELDS.values() for c in cols) + OWN_TEXT_FIELDS


def _fits_article(value: str, truths: set[str], all_truths: set[str], own_text: str,
                  phrases: Iterable[str] = ()) -> bool:
    """A named value that is no contradiction of the article (see the module docstring); ``phrases``: the
    value's aliases (metrics.VALUE_ALIASES), which the article's own words may use instead of the value."""
    return (not truths                                  # the article's value is unknown
            or any(_compatible(value, t) for t in truths)
            or value in all_truths
            or any(f" {p} " in own_text for p in (value, *phrases)))


def hook_span(reason: str, hook: str) -> str | None:
    """The leading sentences of ``reason`` that state ``hook`` (the evidence's hook sentence, which may hold
    more than one sentence when a cited name has a full stop: "the Ibiza Vis. TRS"), or None when they do not
    state it token for token. An empty ``hook`` (no section, no history) is stated by no sentences: "".
    Sentences are counted on the hook as ``clean`` writes it, as the reason was: cleaning spaces a name's
    "Aza.Low" into "Aza. Low", a sentence more."""
    if not isinstance(hook, str) or not hook.strip():
        return ""
    k = len(split_sentences(clean(hook)))
    lead = " ".join(split_sentences(reason)[:k])
    return lead if tokenize(lead) == tokenize(hook) else None


class _Bought:
    """What the user's earlier purchases back up, per field: a value in the history's set for the field,
    or words of an earlier purchase's name ("names", optional: hooks cite them, e.g. "the Denim TRS").
    A field whose set is empty or missing is unknown, and then backs everything."""

    def __init__(self, history: Mapping):
        self.n = history.get("n") or 0
        self.sets = {f: {_norm(v) for v in history.get(key) or ()} - {""}
                     for f, key in (("colour", "colours"), ("type", "types"), ("pattern", "patterns"))}
        names = [" ".join(tokenize(n)) for n in history.get("names") or () if isinstance(n, str)]
        self.name_list = [n for n in names if n]
        self.names = " " + " | ".join(names) + " "

    def _in_names(self, value: str, phrases: Iterable[str]) -> bool:
        return any(f" {p} " in self.names for p in (value, *phrases))

    def backs(self, field: str, value: str, phrases: Iterable[str] = ()) -> bool:
        """``phrases``: the value's aliases, which a name may use ("the Julia jumpsuit" for Jumpsuit/Playsuit)."""
        return not self.sets[field] or value in self.sets[field] or self._in_names(value, phrases)

    def names_it(self, field: str, value: str, phrases: Iterable[str] = ()) -> bool:
        """Could value describe an earlier purchase named in a claim? With names given, only if a name
        has it: "white" in "you bought white trousers" describes this article if no white thing was named."""
        return self._in_names(value, phrases) if self.names.strip() else self.backs(field, value, phrases)


class Filter:
    """Checks reasons against an attribute vocabulary; `select` keeps the best candidate that passes.

    Repetition: max_repeats=1 rejects any 3-gram said twice; the default 2 is because 5.2% of the H&M
    silver reasons repeat a 3-gram in H&M's own copy ("at the back" twice), while 0.1% repeat one thrice.
    """

    def __init__(self, vocab: Mapping[str, Iterable[str]], min_words: int = 3,
                 generic: Mapping[str, Iterable[str]] = GENERIC_VALUES, repeat_ngram: int = 3, max_repeats: int = 2,
                 claim_patterns: Sequence[str] = CLAIM_PATTERNS, drop_unfinished: bool = False):
        self.min_words, self.drop_unfinished = min_words, drop_unfinished
        self.repeat_ngram, self.max_repeats, self.claim_patterns = repeat_ngram, max_repeats, tuple(claim_patterns)
        self.index = {field: _index(vocab.get(field, ()), generic.get(field, ())) for field in FIELDS}
        self.phrases = {field: {} for field in FIELDS}  # field -> value -> every phrase the index reads as it
        for field, index in self.index.items():
            for key, value in index.items():
                self.phrases[field].setdefault(value, []).append(" ".join(key))
        self._contradicting: dict = {}  # contradicting's results by the article's columns

    def check(self, reason: str, article: Mapping, history: Mapping | None, hook: str | None = None) -> list[str]:
        """Rejection causes, in CAUSES order; [] = accepted.

        history: the user's purchases before this one, {"n": how many, "colours", "types", "patterns":
        sets of their values, optionally "names": their prod_names}; None when unknown (then claims are
        not checked).
        hook: the hook sentence the prompt's evidence states (the row's "hook", prompts.evidence_fields);
        None when unknown (then the hook is not compared).
        """
        tokens = tokenize(reason or "")
        if len(tokens) < self.min_words:
            return ["empty"]
        causes = []
        sentences = [" ".join(tokenize(s)) for s in split_sentences(reason)]
        if not SENTENCE_END.search(reason.strip()):
            causes.append("truncated")
        joined = f" {' '.join(tokens)} "
        if (_repetitive(tokens, self.repeat_ngram, self.max_repeats) or _repeated_sentence(sentences)
                or any(joined.count(f" {p} ") > 1 for p in ONCE_PHRASES)):
            causes.append("repetitive")

        claims = set(history_claims(reason, self.claim_patterns))  # tokenised, space-joined sentences
        lead = hook_span(reason, hook) if hook is not None else None
        # The evidence's hook, stated as it is, is true by construction (the data audit): the values it names are
        # the evidence's, not claims to back ("More Socks and Tights, a group you have shopped twice, most recently
        # for the ... Tights" names the group's "socks", which she never bought).
        stated = set(sentences[:len(split_sentences(lead))]) if lead else set()
        bought = _Bought(history) if history is not None else None
        truths, all_truths, own_text = _article_truths(article)
        named_in_claims = {f: set() for f in FIELDS}
        for field in FIELDS:
            wrong = False
            for s in sentences:
                in_claim = s in claims
                for value in mentioned_values(s.split(), self.index[field]):
                    if in_claim and s not in stated:
                        named_in_claims[field].add(value)
                    phrases = self.phrases[field][value]
                    excused = (_fits_article(value, truths[field], all_truths, own_text, phrases)
                               or (in_claim and (bought is None or bought.names_it(field, value, phrases))))
                    wrong |= not excused
            if wrong:
                causes.append(f"wrong_{field}")

        if claims and bought is not None:
            # claims name the new article too, so one backed value per field is enough; patterns are left
            # out: they are read off names ("Lace", "Denim") more often than off the pattern field
            unbacked = any(named_in_claims[f]
                           and not any(bought.backs(f, v, self.phrases[f][v]) for v in named_in_claims[f])
                           for f in ("colour", "type"))
            # an earlier purchase named in a claim must be one of the user's (when their names are known)
            made_up = bool(bought.name_list) and any(not cites_a_purchase(c, bought.name_list)
                                                     for s in claims for c in cited_purchases(s))
            if not bought.n or unbacked or made_up:
                causes.append("false_history")
        if hook is not None and lead is None:
            causes.append("unsupported_hook")
        return causes

    CONTRADICTING = 4096  # articles whose ``contradicting`` values are kept

    def contradicting(self, article: Mapping) -> dict[str, frozenset[str]]:
        """Per field, the phrases naming vocabulary values (with their aliases: "jumpsuit" for Jumpsuit/Playsuit)
        that ``check`` holds against any sentence that claims no history: what constrained decoding
        (mmreason/constraints.py) must never let a reason say. Kept per
        article (the columns it reads): ~4 ms of word matching each, and a server explains one article to
        many customers."""
        key = tuple(article.get(c) for c in _ARTICLE_COLUMNS)
        hit = self._contradicting.get(key)
        if hit is None:
            truths, all_truths, own_text = _article_truths(article)
            hit = {f: frozenset(p for v, ps in self.phrases[f].items()
                                if not _fits_article(v, truths[f], all_truths, own_text, ps) for p in ps)
                   for f in FIELDS}
            if len(self._contradicting) >= self.CONTRADICTING:
                self._contradicting.pop(next(iter(self._contradicting)))
            self._contradicting[key] = hit
        return hit

    def select(self, candidates: Sequence[str], article: Mapping, history: Mapping | None,
               hook: str | None = None) -> tuple[str | None, list[tuple[str, list[str]]]]:
        """(chosen, rejected): the first (best-ranked) cleaned candidate that passes, and every cleaned
        candidate rejected before it with its causes. chosen is None when no candidate passes; then
        rejected holds all of them, and rejected[0][0] is the best-ranked text to fall back on."""
        rejected = []
        for text in candidates:
            text = clean(text, drop_unfinished=self.drop_unfinished)
            causes = self.check(text, article, history, hook)
            if not causes:
                return text, rejected
            rejected.append((text, causes))
        return None, rejected


def rejection_report(results: Iterable[tuple[str | None, list[tuple[str, list[str]]]]]) -> dict:
    """Counts over Filter.select results: candidates checked and rejected, by cause, and how often the
    top-ranked candidate failed or no candidate passed."""
    by_cause = Counter()
    n_examples = checked = rejected = first_failed = none_passed = 0
    for chosen, rej in results:
        n_examples += 1
        checked += len(rej) + (chosen is not None)
        rejected += len(rej)
        first_failed += bool(rej)
        none_passed += chosen is None
        for _, causes in rej:
            by_cause.update(causes)

    def rate(a, b):
        return a / b if b else float("nan")

    return {
        "examples": n_examples,
        "candidates_checked": checked,
        "rejected": rejected,
        "rejection_rate": rate(rejected, checked),
        "first_choice_rejected_rate": rate(first_failed, n_examples),
        "no_candidate_passed": none_passed,
        "no_candidate_passed_rate": rate(none_passed, n_examples),
        "by_cause": {c: by_cause[c] for c in CAUSES},
        "by_cause_rate": {c: rate(by_cause[c], checked) for c in CAUSES},
    }
