"""The one path from a prompt to the reason a person is shown: decode -> constrain -> fill -> filter -> choose.

    decode     generate.generate_reasons with the run's tokenizer, prompt caps and photo embeddings;
    constrain  (constrain=True, the default) constraints.build per example: cited names only from the
               evidence (a trie), no colour / type / pattern word that contradicts the article;
    fill       a run trained on delexicalised targets (ReasonDataModule(slots=True)) writes
               collate.NAME_SLOT where the hook names a purchase: it becomes the evidence's name;
    filter     filters.Filter.check on every candidate, best-ranked first; with the row's evidence hook (the
               row's "hook", prompts.evidence_fields) a candidate must open with it (``unsupported_hook``);
    choose     the first candidate that passes; if none does, the best-ranked one, flagged.
    repair     (rows with an evidence hook) where no candidate passes, each candidate again with the evidence's
               own hook sentence in place of its first sentence(s) (``rehooked``): the model's copy after the
               hook the rule writes from the same facts; the offer below leads with the evidence's hook too
               where the shown reason's is not it. ``Shown.hook`` says whose hook is shown. Measured on
               the default run's test sets (README, Evaluation): the model writes the evidence's hook itself
               in 94.7% (unseen) / 94.3% (temporal) of shown reasons (90.3% / 88.3% with the purchase names
               written out in the targets instead of the slot); the others spliced a subject
               ("LightSocks is a regular in your wardrobe"), named a section the user was never counted in,
               added a time, or cut a name, and no beam held the right one.
    offer      (offer_retrieved=k; deployed: OFFER_RETRIEVED where the run's prompt has retrieved copies) the
               chosen reason's hook followed by each of the prompt's first k retrieved copies (other products'
               copy, ``retrieval.neighbour_texts``) is filtered first, ahead of the generated candidates: the
               retrieved copy is shown where it passes the filter for this article (no contradicting colour /
               type / pattern), the generated one where it does not. A candidate's ``source`` says which.
               A run that sees the photo (``use_photo``) offers, as deployed, the copy its photo chose instead
               of the prompt's first (``Artifacts.photo_offers``: the text's 8 nearest distinct copies
               re-ranked by the photo, the first whose sleeves, neckline and fabric the photo does not veto;
               ``features.photodetails``); an article outside that table keeps the prompt's first, unless
               the caller offers the photo's choice for it (``offer_copies``: the Explainer's new articles,
               ``photodetails.new_offers``). Training's samples offer the prompt's first (``sample_reasons``).
    fallback   (a cascade, e.g. ``decoding("greedy+beam")``) the rows whose candidates all fail the filter
               are decoded again with the fallback config and shown as it decodes them: greedy's speed
               where greedy's reason passes, beam search's reason where it does not (serving).

Evaluation (evaluate.model_reasons and the personalisation probe), the notebooks' sweeps and case studies
(analysis), RL's before/after scores, the Explainer (``recommend --explain``, serving) and training
samples all call ``shown_reasons``; nothing else turns candidates into a shown reason.
"""
from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Literal, get_args

from mmreason.decoding.constraints import build as build_constraint
from mmreason.decoding.filters import Filter, hook_span, vocab_from_items
from mmreason.decoding.generate import DecodeConfig, generate_reasons, preset
from mmreason.metrics import split_sentences
from mmreason.model.collate import NAME_SLOT, RETRIEVED_SEPARATOR

_SLOT_RE = re.compile(r"\s*".join(re.escape(ch) for ch in NAME_SLOT))  # the slot as decoded, spaces or not


def decoding(name: str) -> tuple[DecodeConfig, DecodeConfig | None]:
    """A decoding name of the commands -> (config, fallback): a ``generate.PRESETS`` name (beam search and
    sampling offer 4 candidates to the filter), or a cascade "A+B" (decode with A; rows whose candidates all
    fail the filter again with B). Unknown name: ValueError listing the choices."""
    first, _, second = name.partition("+")
    try:
        configs = [preset(n, num_return_sequences=4) if n in ("beam", "diverse_beam", "sample") else preset(n)
                   for n in ([first, second] if second else [first])]
    except KeyError:
        raise ValueError(f"unknown decoding {name!r}: use one of {', '.join(DECODINGS)}") from None
    return configs[0], (configs[1] if second else None)


Decoding = Literal["beam", "greedy", "diverse_beam", "sample", "greedy+beam"]  # what the commands offer
DECODINGS = get_args(Decoding)


# The deployed offer (``offer_retrieved=None``), chosen on the validation sets (default run, 300 examples each, beam +
# constraint + filter; copy CIDEr): the hook + the 1st retrieved copy offered ahead of the generated candidates gave
# unseen 2.337 against 1.851 for the generated copy alone, temporal 2.151 against 2.170. On products never seen in
# training the generator paraphrases and merges its two retrieved copies; the nearest product's copy, where it does
# not contradict the article, is the better copy. Ranking generated and offered reasons together by the model's
# own mean log-probability (measured on the test sets, not kept) showed the retrieved copy in 9% of reasons only:
# unseen 1.780.
OFFER_RETRIEVED = 1
# ... and for a run that sees the photo, the copy the photo chose among the text's candidates (``photo_offer``).
# Chosen on the validation sets (``python -m mmreason.retrieval``, results/cpu/retrieval.md: mean copy CIDEr 2.312
# against 2.236 for the text's nearest, contradictions of the article's own copy 12.0% / 20.3% against 25.7% /
# 35.3%; with the fabric fix, metrics.FABRIC_IMPLIES, 2.319 and 10.7% / 17.7% against 23.3% / 33.7%); measured
# with the default run on the test sets in the README (Evaluation, the photo's copy).
PHOTO_OFFER = True


def sees_photo(model) -> bool:
    """Does the generator read the photo prefix (``ModelConfig.use_photo``)?"""
    return bool(getattr(getattr(getattr(model, "model", model), "config", None), "use_photo", False))


def photo_offer(data, rows: Sequence[Mapping], prompts: Sequence[Mapping]) -> list[str]:
    """Per row the copy its article's photo chose (``data.artifacts.photo_offers``), else its prompt's first
    retrieved copy (an article the table does not hold: a new one); nothing where the prompt retrieves nothing
    (a run without the retrieved segment: ``prompt_example`` gives it as "")."""
    if not any(p.get("retrieved") for p in prompts):
        return [""] * len(prompts)  # no table is built for a run that offers nothing
    offers = data.artifacts.photo_offers
    return [(offers.get(int(r["article_id"])) or p["retrieved"].split(RETRIEVED_SEPARATOR)[0]) if p.get("retrieved")
            else "" for r, p in zip(rows, prompts)]


def uses_photo_offers(model, data, offer_retrieved: int | None = None) -> bool:
    """Will ``shown_reasons`` (with this ``offer_retrieved``) read ``Artifacts.photo_offers`` for this run's
    catalogue articles? The deployed offer of a run that sees the photo and whose prompt retrieves copies."""
    return (offer_retrieved is None and PHOTO_OFFER and sees_photo(getattr(model, "model", model))
            and "retrieved" in (getattr(data, "prompt_fields", None) or ()))


@dataclass
class Shown:
    reason: str                  # what is shown: the first candidate that passes, else the best-ranked one
    passed: bool                 # False: no candidate passed (the best-ranked one is shown, flagged)
    rejected: list[tuple[str, list[str]]] = field(default_factory=list)  # candidates before it, with causes
    candidates: list[str] = field(default_factory=list)  # every candidate, ranked, slots filled
    source: str = "generated"    # "retrieved": the generated hook + a retrieved copy (offer_retrieved)
    hook: str = "model"          # "evidence": no candidate's own hook passed; the evidence's is shown (repair)

    @property
    def selected(self) -> tuple[str | None, list[tuple[str, list[str]]]]:
        """(chosen or None, rejected): ``Filter.select``'s result, for ``filters.rejection_report``."""
        return (self.reason if self.passed else None), self.rejected


def history_sets(history) -> dict:
    """Purchases (``reasons.Purchase``) -> what the filter checks history claims against."""
    return {"n": len(history), "colours": {p.colour_group_name.lower() for p in history},
            "types": {p.product_type_name.lower() for p in history},
            "patterns": {p.graphical_appearance_name.lower() for p in history},
            "names": {p.prod_name.lower() for p in history}}


def evidence_names(row: Mapping) -> list[str]:
    """The earlier purchases a reason for ``row`` may name: the one its evidence cites (``cited_name``)."""
    name = row.get("cited_name")
    return [name] if isinstance(name, str) and name else []


def fill_slots(text: str, names: Sequence[str]) -> str:
    """NAME_SLOT -> the evidence's name (nothing to fill it with: dropped, and the filter judges the rest)."""
    return _SLOT_RE.sub(names[0] if names else "", text) if NAME_SLOT[0] in text else text


def rehooked(reason: str, hook: str) -> str | None:
    """``reason`` with the evidence's ``hook`` in place of its own: the sentences after its first k follow ``hook``
    (k: the hook's sentence count; trained on targets that open with their hook, the model writes it there).
    None when nothing follows: a hook alone is no reason."""
    rest = split_sentences(reason)[len(split_sentences(hook)):]
    return " ".join([hook.strip(), *rest]) if rest else None


def offered(reason: str, retrieved: str, k: int, hook: str | None = None) -> list[str]:
    """A hook followed by each of the first ``k`` retrieved copies. The hook: the sentences of ``reason`` that state
    the evidence's ``hook`` (``filters.hook_span``; a cited name may hold a full stop), else ``hook`` itself (the
    repair), else, with no evidence hook, ``reason``'s first sentence."""
    hook = hook.strip() if isinstance(hook, str) else ""
    lead = hook_span(reason, hook) if hook else None
    if lead is None:
        sentences = split_sentences(reason)
        lead = hook or (sentences[0] if sentences else "")
    return [f"{lead} {copy}".strip() for copy in (retrieved or "").split(RETRIEVED_SEPARATOR)[:k] if copy.strip()]


def shown_reasons(model, data, rows: Sequence[Mapping], articles: Sequence[Mapping], decode: DecodeConfig,
                  filt: Filter, histories: Sequence[Mapping | None] | None = None, constrain: bool = True,
                  photo=None, has_photo=None, batch_size: int = 48, progress: bool = False,
                  offer_retrieved: int | None = None, fallback: DecodeConfig | None = None,
                  offer_copies: Sequence[str] | None = None) -> list[Shown]:
    """The shown reason for every row.

    model: a ``ReasonModel`` (or a module holding one as ``.model``); data: the run's ``ReasonDataModule``
    (tokenizer, prompt fields and caps, slots, photo embeddings); rows: dicts with article_id and the
    prompt fields (user_profile, evidence, behaviour, product), cited_name and hook (the evidence's hook
    sentence; a row without one is not held to it); articles: the article's
    columns per row; histories: per row what ``filters.Filter.check`` reads (None: claims unchecked).
    photo / has_photo: row-aligned embeddings, looked up by article_id when not given.
    offer_retrieved: how many of the prompt's retrieved copies to offer after the generated hook (module
    docstring); needs a run whose prompt has the retrieved segment. None: the deployed OFFER_RETRIEVED where the
    run's prompt has that segment, else 0, and a run that sees the photo offers the copy its photo chose
    (``photo_offer``; explicitly 1: the prompt's first retrieved copy); 0: the generated candidates alone.
    fallback: rows whose shown reason failed the filter are decoded again with it, and its reason is shown.
    offer_copies: row-aligned copies to offer instead of the prompt's retrieved ones (e.g. those the photo vetted:
    ``features.photodetails.vetted_copies``); the prompt, hence the generated candidates, is unchanged.
    """
    model = getattr(model, "model", model)
    histories = list(histories) if histories is not None else [None] * len(rows)
    if not len(rows) == len(articles) == len(histories):
        raise ValueError(f"{len(rows)} rows, {len(articles)} articles, {len(histories)} histories")
    if photo is None:
        photo, has_photo = data.artifacts.photo_lookup([int(r["article_id"]) for r in rows])
    names = [evidence_names(r) for r in rows]
    hooks = [r.get("hook") if isinstance(r.get("hook"), str) else None for r in rows]  # None: not compared
    slots = bool(getattr(data, "slots", False))
    constraints = None
    if constrain:
        # a slot run spells the slot where the hook names a purchase: that is what the trie allows
        constraints = [build_constraint(data.tokenizer, a, [NAME_SLOT] if (slots and n) else n, filt)
                       for a, n in zip(articles, names)]
    prompts = [data.prompt_example(dict(r)) for r in rows]
    if offer_copies is not None and len(offer_copies) != len(rows):
        raise ValueError(f"{len(offer_copies)} copies to offer for {len(rows)} rows")
    # a run without the retrieved segment: ``prompt_example`` gives it as "" (a stand-in may leave it out)
    retrieves = all(p.get("retrieved") for p in prompts)
    if offer_retrieved is None:
        offer_retrieved = OFFER_RETRIEVED if retrieves else 0
        if offer_retrieved and offer_copies is None and PHOTO_OFFER and sees_photo(model):
            offer_copies = photo_offer(data, rows, prompts)
    if offer_retrieved and not retrieves:
        raise ValueError("offer_retrieved needs a run whose prompt_fields include 'retrieved'")
    cands = generate_reasons(model, data.tokenizer, prompts, photo, has_photo,
                             decode, batch_size=batch_size, max_prompt_tokens=data.max_prompt_tokens,
                             progress=progress, constraints=constraints)
    out = []
    offer_from = list(offer_copies) if offer_copies is not None else [p.get("retrieved", "") for p in prompts]
    for c, a, h, n, e, r in zip(cands, articles, histories, names, hooks, offer_from):
        c = [fill_slots(t, n) for t in c]
        # no candidate at all (every beam ended under the constraint) is filtered as one empty reason, so
        # every caller sees why ("empty") instead of an empty rejection list
        chosen, rejected = filt.select(c or [""], a, h, e)
        shown = Shown(chosen if chosen is not None else rejected[0][0], chosen is not None, rejected, c)
        if chosen is None and c and e:  # repair: the evidence's hook instead
            fixed = [f for f in (rehooked(t, e) for t in c) if f is not None]
            chosen, refused = filt.select(fixed, a, h, e)
            if chosen is not None:
                shown = Shown(chosen, True, rejected + refused, c, hook="evidence")  # candidates: as decoded
        if offer_retrieved:
            offers = offered(shown.reason, r, offer_retrieved, e)
            pick, refused = filt.select(offers, a, h, e)
            whose = shown.hook if hook_span(shown.reason, e or "") is not None else "evidence"  # offered's lead
            shown = (Shown(pick, True, refused, offers + shown.candidates, "retrieved", whose) if pick is not None
                     else Shown(shown.reason, shown.passed, refused + shown.rejected, offers + shown.candidates,
                                hook=shown.hook))
        out.append(shown)
    again = [i for i, s in enumerate(out) if not s.passed] if fallback is not None else []
    if again:
        pick = lambda xs: [xs[i] for i in again]  # noqa: E731
        redo = shown_reasons(model, data, pick(rows), pick(articles), fallback, filt, pick(histories), constrain,
                             photo[again], has_photo[again], batch_size, progress, offer_retrieved,
                             offer_copies=pick(offer_copies) if offer_copies is not None else None)
        for i, s in zip(again, redo):
            out[i] = s
    return out


def sample_reasons(model, data, frame, decode: DecodeConfig, constrain: bool = True,
                   offer_retrieved: int | None = None, photo: bool = False) -> list[Shown]:
    """Shown reasons for a few rows of a data module's frame (training samples): articles from the run's
    items table, history claims unchecked (the training tables carry no purchase lists). ``offer_retrieved``:
    as ``shown_reasons`` (0: the generated candidates alone), except that a run that sees the photo offers its
    prompt's first retrieved copy unless ``photo`` asks for the photo's: a training run's samples must not build
    the photo's table (``Artifacts.photo_offers``: the ImageNet features of every photo first, tens of minutes
    on a fresh checkout, in the middle of ``python -m mmreason.train``)."""
    if offer_retrieved is None and not photo and uses_photo_offers(model, data):
        offer_retrieved = OFFER_RETRIEVED
    items = data.artifacts.items
    by_id = items.set_index("article_id")
    rows = frame.to_dict("records")
    arts = [by_id.loc[int(r["article_id"])].to_dict() | {"article_id": int(r["article_id"])} for r in rows]
    return shown_reasons(model, data, rows, arts, decode, Filter(vocab_from_items(items)), constrain=constrain,
                         offer_retrieved=offer_retrieved)
