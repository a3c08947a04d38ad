"""Decoding that cannot contradict the prompt: a per-example constraint inside generate's one loop.

Three rules, applied to the log-probs of every strategy alike (greedy, sampling, beam, diverse beam):
  names   after a phrase that cites an earlier purchase (metrics' citation phrases: "most recently the",
          "you bought the", "like the", "where you found the", ...), the next tokens must spell one of the
          evidence's names (a trie over their token ids) to its end; with no name in the evidence, such a
          phrase cannot be completed (its "the" is masked).
  values  colour, type and pattern words of the catalogue vocabulary that contradict the article
          (``filters.Filter.contradicting``) cannot be emitted, in any of their usual spellings (lower,
          Capitalised, Title, plural, with or without a leading space); inside a name the trie decides.
  ends    the reason ends (EOS) only after a finished sentence (``filters.SENTENCE_END``): the filter
          rejects any other ending as truncated; only max_new_tokens can still cut a reason.
A cited name whose last word is a banned value ("the TAZ LONG RN T-SHIRT" for hair ties) is closed like any
name: the values rule once forbade closing it while the names rule forbade continuing it, no token was left,
and the reason stopped there (most of greedy's filter failures on the validation sets).
Measured why (issue 13): at this training budget the full model named a purchase the customer never
made in 240 of 300 unseen-product reasons, and the right colour in 31.5%, although both were in reach.
The rules read token ids, as the model wrote them; a word spelled in non-canonical pieces is not seen
(the model, trained on canonical BPE, rarely writes one).
"""
from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import torch

from mmreason.decoding.filters import SENTENCE_END

# metrics._CITATION_RE's phrases without their final "the" (lowercase, as metrics.tokenize reads them)
CITATION_PREFIXES = ("most recently", "most recently with", "most recently for", "you bought", "like",
                     "where you found", "design with")
_PREFIX_RE = re.compile(r"\b(?:" + "|".join(re.escape(p) for p in CITATION_PREFIXES) + r")$")
_END = "$"  # trie key: a name ends here


@dataclass
class Constraint:
    """One example's rules, as token ids of the run's tokenizer (``build``). The value part (banned,
    banned_after, banned_words) is shared by every constraint with the same contradicting values: read-only."""

    banned: set[int] = field(default_factory=set)                       # never emitted
    banned_after: dict[tuple[int, ...], set[int]] = field(default_factory=dict)  # when the ids end with the key
    banned_words: set[str] = field(default_factory=set)  # words / phrases (lowercase) that may not be completed
    trie: dict = field(default_factory=dict)                            # names, {token: subtrie, "$": True}
    the_ids: set[int] = field(default_factory=set)                      # tokens spelling "the"


def _spellings(value: str) -> set[str]:
    words = value.split()
    forms = set()
    for last in (words[-1], words[-1] + "s", words[-1] + "es"):
        w = " ".join(words[:-1] + [last])
        forms |= {w, w.capitalize(), w.title()}
    return {lead + f for f in forms for lead in ("", " ")}


def _encode(tokenizer, text: str) -> list[int]:
    return tokenizer.encode(text, add_special_tokens=False)


_ENCODINGS: dict[int, tuple[object, dict, dict, dict]] = {}
_PARTS = 2048  # value parts kept per tokenizer (one per distinct set of contradicting values)


def _kept(tokenizer) -> tuple[dict, dict, dict]:
    """The tokenizer's (text -> ids, value -> rules, contradicting values -> the constraint's value part)."""
    hit = _ENCODINGS.get(id(tokenizer))
    if hit is None or hit[0] is not tokenizer:
        hit = _ENCODINGS[id(tokenizer)] = (tokenizer, {}, {}, {})
    return hit[1], hit[2], hit[3]


def _value_rules(value: str, enc) -> tuple[set[int], list[tuple[tuple[int, ...], int]], set[str]]:
    """What banning ``value`` adds: single-token spellings, (prefix, last token) of the longer ones, words."""
    singles, after, words = set(), [], set()
    for form in _spellings(value):
        ids = enc(form)
        if len(ids) == 1:
            singles.add(ids[0])
        elif ids:
            after.append((ids[:-1], ids[-1]))
        words.add(" ".join(_WORD_RE.findall(form.lower())))
    return singles, after, words


def build(tokenizer, article: Mapping, names: Sequence[str], filt, cache: dict | None = None) -> Constraint:
    """The constraint for one example: ``names`` the evidence may cite, ``filt`` a ``filters.Filter``
    (its vocabulary and excuse rules decide what contradicts ``article``). ``cache``: text -> ids; by
    default the tokenizer's own, kept as long as the process runs with each value's rules and each set of
    contradicting values' part: one article encodes ~2,000 spellings of the catalogue's colour and type
    words (160 ms on one core), the same for every article, so a server builds them once."""
    if cache is None:
        cache, rules, parts = _kept(tokenizer)
    else:
        rules, parts = {}, {}

    def enc(text):
        if text not in cache:
            cache[text] = tuple(_encode(tokenizer, text))
        return cache[text]

    bad = frozenset(v for values in filt.contradicting(article).values() for v in values)
    part = parts.get(bad)
    if part is None:  # shared by every article with these contradicting values: read-only from here on
        banned, banned_after, banned_words = set(), {}, set()
        for v in sorted(bad):
            if v not in rules:
                rules[v] = _value_rules(v, enc)
            singles, after, words = rules[v]
            banned |= singles
            for prefix, last in after:
                banned_after.setdefault(prefix, set()).add(last)
            banned_words |= words
        part = (frozenset(banned), {k: frozenset(v) for k, v in banned_after.items()}, frozenset(banned_words))
        if len(parts) >= _PARTS:
            parts.pop(next(iter(parts)))
        parts[bad] = part
    c = Constraint(banned=part[0], banned_after=part[1], banned_words=part[2])
    for name in names:
        name = (name or "").strip().rstrip(".")
        node = c.trie
        for t in enc(" " + name) if name else ():
            node = node.setdefault(t, {})
        if node is not c.trie:
            node[_END] = True
    c.the_ids = {ids[-1] for ids in (enc(" the"), enc("the"), enc(" The"), enc("The")) if ids}
    if not c.trie:  # nothing to cite: no citation phrase may be completed
        c.banned_words = c.banned_words | {p + " the" for p in CITATION_PREFIXES}  # a new set: part is shared
    return c


_WORD_RE = re.compile(r"[a-z0-9]+(?:['\-][a-z0-9]+)*")  # metrics.tokenize's words
_CITE_THE = tuple(p + " the" for p in CITATION_PREFIXES)
_PIECES: dict[int, tuple[object, list[str], torch.Tensor]] = {}


def _pieces(tokenizer, V: int) -> tuple[list[str], torch.Tensor]:
    """Each token's text, and which tokens end a word (start with neither a letter, digit, ' nor -)."""
    hit = _PIECES.get(id(tokenizer))
    if hit is None or hit[0] is not tokenizer or len(hit[1]) != V:
        pieces = [tokenizer.decode([i]) for i in range(V)]
        ends = torch.tensor([not re.match(r"[A-Za-z0-9'\-]", p) for p in pieces], dtype=torch.bool)
        hit = _PIECES[id(tokenizer)] = (tokenizer, pieces, ends)
    return hit[1], hit[2]


class Constrainer:
    """The constraints of a batch during decoding. Row r of the loop belongs to example r // per_example
    (greedy: 1 row per example, sampling: num_return_sequences, beams: num_beams); ``mask`` sets what the
    rules forbid to -inf, ``advance`` records each row's new token (after beams are reordered).

    Words are read off the text as written, whatever the token pieces: a banned word (or a citation
    phrase with no name to cite) that stands complete at the end of the text cannot be closed (no token
    that ends a word may follow), so " bLa"+"ck" cannot become a word; the usual spellings' tokens are
    masked before they start."""

    TAIL = 80  # characters of text kept per row: enough for the longest value or citation phrase

    def __init__(self, constraints: Sequence[Constraint | None], per_example: int, vocab_size: int, tokenizer,
                 device, eos_id: int | None = None):
        self.rows = [constraints[r // per_example] for r in range(len(constraints) * per_example)]
        self.tokens: list[list[int]] = [[] for _ in self.rows]
        self.text: list[str] = [""] * len(self.rows)
        self.node: list[dict | None] = [None] * len(self.rows)   # inside a name: the trie node reached
        self.close = [False] * len(self.rows)                    # a name was just written: end its word
        self.device, self.V = device, vocab_size
        self.pieces, self.ends = _pieces(tokenizer, vocab_size)
        self.ends = self.ends.to(device)
        static = torch.zeros(len(constraints), vocab_size, dtype=torch.bool)
        for i, c in enumerate(constraints):
            if c is not None and c.banned:
                static[i, [t for t in c.banned if t < vocab_size]] = True
        self.static = static.repeat_interleave(per_example, 0).to(device)     # (R, V)
        self.lengths = sorted({len(k) for c in constraints if c is not None for k in c.banned_after})
        self.eos = eos_id  # None: no "ends" rule

    def _last_words(self, r: int, n: int = 4) -> list[str] | None:
        """The last n words of row r's text when its last word is still open (else None)."""
        text = self.text[r]
        if not text or not text[-1].isalnum():
            return None
        return _WORD_RE.findall(text.lower())[-n:]

    def mask(self, lp: torch.Tensor, unbanned: torch.Tensor | None = None) -> torch.Tensor:
        """lp (R, V) -> lp with forbidden tokens at -inf. Inside a name only the trie's next tokens are
        allowed, scored from ``unbanned`` (the log-probs before the repetition bans) when given, so that a
        name said twice can still be spelt."""
        banned = self.static.clone()
        closing = []                                           # rows whose open word may not be closed
        forced, must_close = [], []
        for r, c in enumerate(self.rows):
            if c is None:
                continue
            words = self._last_words(r)
            if self.node[r] is None and c.trie and words and " ".join(words[-4:]).endswith(_CITE_THE) \
                    and any(" ".join(words[-k:]) in _CITE_THE for k in (2, 3, 4)):
                self.node[r] = c.trie                           # "... most recently the": a name follows
            node = self.node[r]
            if node is not None:
                forced.append((r, [t for t in node if t != _END and t < self.V]))
                continue
            if self.close[r]:                                  # "the Luna skinny" + "s": another name
                must_close.append(r)
            toks = self.tokens[r]
            for n in self.lengths:
                if len(toks) >= n:
                    hit = c.banned_after.get(tuple(toks[-n:]))
                    if hit:
                        banned[r, list(hit)] = True
            # a name just written ends here even when its last word is a banned value ("the TAZ LONG RN T-SHIRT"
            # for hair ties): it names the purchase, not the article; closing it too left no token at all
            if not self.close[r] and words and any(" ".join(words[-k:]) in c.banned_words
                                                   for k in range(1, len(words) + 1)):
                closing.append(r)
        if self.eos is not None:  # "ends": no EOS before a finished sentence
            unfinished = [r for r, c in enumerate(self.rows) if c is not None and not SENTENCE_END.search(self.text[r].rstrip())]
            if unfinished:
                banned[unfinished, self.eos] = True
        if closing:
            banned[closing] |= self.ends
        if must_close:
            banned[must_close] |= ~self.ends
        lp = lp.masked_fill(banned, float("-inf"))
        for r, allowed in forced:
            src = unbanned if unbanned is not None else lp
            row = torch.full_like(lp[r], float("-inf"))
            row[allowed] = src[r, allowed]
            lp[r] = row
        return lp

    def keep_rows(self, rows: Sequence[int]) -> None:
        """Drop every row but rows, in that order (finished rows leaving greedy decoding's batch)."""
        self.rows = [self.rows[r] for r in rows]
        self.tokens = [self.tokens[r] for r in rows]
        self.text = [self.text[r] for r in rows]
        self.node = [self.node[r] for r in rows]
        self.close = [self.close[r] for r in rows]
        self.static = self.static[list(rows)]

    def advance(self, new_tokens: Sequence[int], source: Sequence[int] | None = None) -> None:
        """Row r now continues row source[r] (beam reordering; None: itself) with new_tokens[r]."""
        if source is not None:
            self.tokens = [list(self.tokens[s]) for s in source]
            self.text = [self.text[s] for s in source]
            self.node = [self.node[s] for s in source]
            self.close = [self.close[s] for s in source]
        for r, t in enumerate(new_tokens):
            c = self.rows[r]
            if c is None:
                continue
            self.tokens[r].append(t)
            self.text[r] = (self.text[r] + (self.pieces[t] if t < len(self.pieces) else ""))[-self.TAIL:]
            node, self.close[r] = self.node[r], False
            if node is not None:
                nxt = node.get(t)
                done = not nxt or set(nxt) == {_END}
                self.node[r], self.close[r] = (None, True) if done else (nxt, False)  # a whole name: free again
