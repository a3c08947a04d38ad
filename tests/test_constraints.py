"""Constrained decoding (constraints.py inside generate's loop) and the one shown-reason path (shown.py).

A tiny random model is pushed, by a forward hook on its logits, to write what the constraint must stop
(a contradicting colour, a made-up purchase name): unconstrained it does, so each test can fail."""
import json
import re
from dataclasses import replace
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from test_generate import EXAMPLES, SCORE_ATOL, copy_model, tiny_model

from mmreason import metrics as M
from mmreason.decoding.constraints import build
from mmreason.decoding.filters import Filter
from mmreason.decoding.generate import DecodeConfig, decode
from mmreason.decoding.shown import OFFER_RETRIEVED, fill_slots, rehooked, sees_photo, shown_reasons, uses_photo_offers
from mmreason.model.collate import EOS, NAME_SLOT, collate, encode_example, token_id

from conftest import tiny_tokenizer

SENTENCES = [
    "matches your taste for red dress: you have bought them twice, most recently the Luna skinny 2 months ago.",
    "black trousers in navy blue or striped; a red dress like the Lotta top you bought.",
    "soft cotton jersey with a round neckline and long sleeves.",
]
FILTER = Filter({"colour": {"black", "red", "navy blue"}, "type": {"trousers", "dress"}, "pattern": {"striped"}})
ARTICLE = {"colour_group_name": "Red", "perceived_colour_master_name": "Red", "product_type_name": "Dress",
           "graphical_appearance_name": "Solid", "prod_name": "Wrap", "detail_desc": "A wrap dress in jersey."}
STRATEGIES = [DecodeConfig("greedy", max_new_tokens=24),
              DecodeConfig("beam", num_beams=3, num_return_sequences=3, max_new_tokens=24),
              DecodeConfig("diverse_beam", num_beams=4, num_beam_groups=2, num_return_sequences=4, max_new_tokens=24),
              DecodeConfig("sample", num_return_sequences=3, seed=0, max_new_tokens=24)]


@pytest.fixture(scope="module")
def tokenizer():
    return tiny_tokenizer(SENTENCES)


@pytest.fixture(scope="module")
def model(tokenizer):
    return tiny_model(tokenizer)


@pytest.fixture
def batch(tokenizer):
    encoded = [encode_example(tokenizer, ex, with_reason=False) for ex in EXAMPLES]
    out = collate(encoded, pad_id=tokenizer.pad_token_id, padding_side="left")
    out["photo_embedding"] = torch.randn(len(EXAMPLES), 8, generator=torch.Generator().manual_seed(1))
    out["has_photo"] = torch.tensor([True, False, True])
    return out


class Script:
    """A forward hook that adds +40 to the logit of script[t] at generation step t (then of ".", then of
    EOS), so the model writes ``text`` unless something stops it."""

    def __init__(self, model, tokenizer, text):
        dot = tokenizer.encode(".", add_special_tokens=False)
        self.ids = tokenizer.encode(text, add_special_tokens=False) + dot * 4 + [token_id(tokenizer, EOS)]
        self.step = 0
        # the LM head runs once per model call, on the positions decoding reads, whichever KV cache decodes
        self.handle = model.gpt2.lm_head.register_forward_hook(self)

    def __call__(self, module, args, out):
        out[..., self.ids[min(self.step, len(self.ids) - 1)]] += 40.0
        self.step += 1
        return out

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.handle.remove()


def decoded(model, tokenizer, batch, config, text, constraints=None):
    with Script(model, tokenizer, text):
        result = decode(model, batch, config, token_id(tokenizer, EOS), constraints=constraints, tokenizer=tokenizer)
    return [[tokenizer.decode(ids, skip_special_tokens=True) for ids, _ in cands] for cands in result]


def words(text):
    return set(M.tokenize(text))


@pytest.mark.parametrize("config", STRATEGIES, ids=lambda c: c.strategy)
def test_contradicting_values_cannot_be_written_by_any_strategy(model, tokenizer, batch, config):
    text = " black trousers, striped, in navy blue."
    free = decoded(model, tokenizer, batch, config, text)
    assert all({"black", "trousers"} <= words(c[0]) for c in free)  # pushed: unconstrained it says them
    cons = [build(tokenizer, ARTICLE, [], FILTER)] * len(EXAMPLES)
    for cands in decoded(model, tokenizer, batch, config, text, cons):
        for c in cands:
            assert not words(c) & {"black", "trousers", "striped"}, c
            # masked before they start, not only kept from closing: no word even begins with one
            assert not [w for w in words(c) if w.startswith(("black", "trousers", "striped"))], c
            assert "navy blue" not in " ".join(M.tokenize(c)), c
            assert not {"wrong_colour", "wrong_type", "wrong_pattern"} & set(FILTER.check(c, ARTICLE, None)), c


def test_a_contradicting_word_is_banned_in_its_plural_too():
    """A red dress's reason may not say "black" or "trousers"; a pair of trousers' may say neither "dress" nor
    "dresses" (unless the article's own words do: the fixture dress's copy says "dress")."""
    words = build(tiny_tokenizer(SENTENCES), ARTICLE, [], FILTER).banned_words
    assert {"trousers", "black", "navy blue", "striped"} <= words and not {"dress", "red"} & words
    trouser = ARTICLE | {"product_type_name": "Trousers", "prod_name": "Wide", "detail_desc": "Wide trousers."}
    assert {"dress", "dresses"} <= build(tiny_tokenizer(SENTENCES), trouser, [], FILTER).banned_words


@pytest.mark.parametrize("config", STRATEGIES, ids=lambda c: c.strategy)
def test_cited_names_come_from_the_evidence_trie(model, tokenizer, batch, config):
    text = " most recently the Lotta top 2 months ago."
    free = decoded(model, tokenizer, batch, config, text)
    assert M.name_citation_precision([c[0] for c in free], [["luna skinny"]] * len(free))["name_citation_precision"] == 0
    cons = [build(tokenizer, ARTICLE, ["Luna skinny"], FILTER)] * len(EXAMPLES)
    out = decoded(model, tokenizer, batch, config, text, cons)
    flat = [c for cands in out for c in cands]
    cited = [c for s in flat for c in M.cited_purchases(" ".join(M.tokenize(s)))]
    assert all(M.cites_a_purchase(c, ["luna skinny"]) for c in cited), flat  # every citation is the evidence's
    if config.strategy == "greedy":  # pushed to cite, greedy cites, and only the evidence's name, whole
        assert all(re.match(r" most recently the Luna skinny(?![A-Za-z0-9])", c[0]) for c in out), out
        assert len(cited) == len(flat)


@pytest.mark.parametrize("config", STRATEGIES[:2], ids=lambda c: c.strategy)
def test_a_cited_name_ending_in_a_banned_value_is_closed_and_continued(model, tokenizer, batch, config):
    """The name "Luna trousers" (a purchase) ends in a type that contradicts the article (a dress): after it the
    reason goes on. Before, the name's word could neither be continued (the name was done) nor closed (a banned
    value): no token was left, and the reason stopped there with score -inf (most greedy failures on the real run)."""
    text = " Red dress, most recently the Luna trousers 2 months ago. A wrap dress."
    cons = [build(tokenizer, ARTICLE, ["Luna trousers"], FILTER)] * len(EXAMPLES)
    with Script(model, tokenizer, text):  # the tiny tokenizer spells most words letter by letter: room for 64
        res = decode(model, batch, replace(config, max_new_tokens=64), token_id(tokenizer, EOS), constraints=cons,
                     tokenizer=tokenizer)
    for cands in res:
        ids, score = cands[0]
        reason = tokenizer.decode(ids, skip_special_tokens=True)
        assert "most recently the Luna trousers 2 months ago." in reason and score > float("-inf"), reason
        assert reason.strip().endswith(".")


@pytest.mark.parametrize("config", STRATEGIES[:2], ids=lambda c: c.strategy)
def test_a_reason_ends_only_after_a_finished_sentence(model, tokenizer, batch, config):
    """"ends": EOS is masked until the text ends with ".", "!" or "?" (the filter's truncated cause)."""
    script = Script(model, tokenizer, " Red dress for you")
    script.ids = script.ids[:-5] + [token_id(tokenizer, EOS)]  # the text, then EOS: no final dot
    with script:
        free = decode(model, batch, config, token_id(tokenizer, EOS), tokenizer=tokenizer)
    script.step = 0
    with Script(model, tokenizer, " Red dress for you") as again:
        again.ids = again.ids[:-5] + [token_id(tokenizer, EOS)]
        cons = decode(model, batch, config, token_id(tokenizer, EOS), tokenizer=tokenizer,
                      constraints=[build(tokenizer, ARTICLE, [], FILTER)] * len(EXAMPLES))
    for f, c in zip(free, cons):
        assert tokenizer.decode(f[0][0], skip_special_tokens=True).strip() == "Red dress for you"  # cut, unchecked
        text = tokenizer.decode(c[0][0], skip_special_tokens=True).strip()
        assert text.startswith("Red dress for you") and (text[-1] in ".!?" or len(c[0][0]) == config.max_new_tokens), text


def test_without_evidence_names_a_citation_cannot_be_completed(model, tokenizer, batch):
    text = " most recently the Lotta top."
    cons = [build(tokenizer, ARTICLE, [], FILTER)] * len(EXAMPLES)
    for config in STRATEGIES:
        for cands in decoded(model, tokenizer, batch, config, text, cons):
            for c in cands:
                assert not M.cited_purchases(" ".join(M.tokenize(c))), c


def test_constraint_off_or_none_decodes_as_before(model, tokenizer, batch):
    eos = token_id(tokenizer, EOS)
    for config in STRATEGIES:
        config = replace(config, max_new_tokens=8)
        plain = decode(model, batch, config, eos)
        none = decode(model, batch, config, eos, constraints=[None] * len(EXAMPLES), tokenizer=tokenizer)
        assert [[ids for ids, _ in c] for c in plain] == [[ids for ids, _ in c] for c in none]


def test_a_tokenizers_encodings_are_kept_across_builds():
    """The server builds one constraint per request: the catalogue's spellings are encoded once per tokenizer
    (they were 160 ms of a 500 ms one-article request), and a cached build is the same constraint."""
    calls = []

    class Counting:
        def __init__(self, tok):
            self.tok = tok

        def encode(self, text, **kw):
            calls.append(text)
            return self.tok.encode(text, **kw)

    tok = Counting(tiny_tokenizer(SENTENCES))
    first = build(tok, ARTICLE, ["Luna skinny"], FILTER)
    n = len(calls)
    assert n > 20
    again = build(tok, ARTICLE, ["Luna skinny"], FILTER)
    assert len(calls) == n and again == first
    build(tok, ARTICLE, ["Lotta top"], FILTER)
    assert calls[n:] == [" Lotta top"]  # only the new name
    assert build(tok, ARTICLE, ["Luna skinny"], FILTER, cache={}) == first  # a fresh cache: same rules
    # the value part is shared between the article's constraints: one with nothing to cite adds its citation
    # phrases to its own words, never to the shared ones
    nothing = build(tok, ARTICLE, [], FILTER)
    assert "like the" in nothing.banned_words and "like the" not in again.banned_words
    assert nothing.banned is again.banned


@pytest.mark.parametrize("strategy", ["greedy", "beam"])
def test_eos_penalty_lengthens_reasons_and_is_scored_once(model, tokenizer, batch, strategy):
    """eos_penalty lowers EOS's log-prob at every step: a mild one ends where the model ends, the candidate's
    score lower by exactly the penalty; one larger than the model's preference never ends before max_new_tokens."""
    eos = token_id(tokenizer, EOS)
    cfg = DecodeConfig(strategy, num_beams=2, max_new_tokens=24, length_penalty=0.0)

    def top(c):
        with Script(model, tokenizer, " Red dress for you."):
            return [cands[0] for cands in decode(model, batch, c, eos, tokenizer=tokenizer)]

    plain, mild, pushed = top(cfg), top(replace(cfg, eos_penalty=1.0)), top(replace(cfg, eos_penalty=100.0))
    assert all(len(ids) < 24 for ids, _ in plain)                    # the script ends with EOS
    assert [ids for ids, _ in mild] == [ids for ids, _ in plain]
    assert [s for _, s in mild] == pytest.approx([s - 1.0 for _, s in plain], abs=1e-4)
    assert all(len(ids) == 24 for ids, _ in pushed)
    with pytest.raises(ValueError, match="eos_penalty"):
        DecodeConfig("greedy", eos_penalty=-1.0)


def test_fill_slots():
    assert fill_slots("most recently the <name> 2 days ago.", ["Luna skinny"]) == "most recently the Luna skinny 2 days ago."
    assert fill_slots("most recently the < name > ago.", ["Luna"]) == "most recently the Luna ago."
    assert fill_slots("no slot here.", []) == "no slot here."


def _data(tokenizer, slots):
    return SimpleNamespace(
        tokenizer=tokenizer, slots=slots, max_prompt_tokens={"user_profile": 48, "evidence": 64, "behaviour": 64,
                                                             "product": 48},
        prompt_example=lambda r: {k: r.get(k, "") for k in ("user_profile", "evidence", "behaviour", "product")}
        | {"article_id": r["article_id"]},
        artifacts=SimpleNamespace(photo_lookup=lambda ids: (torch.zeros(len(ids), 8), torch.zeros(len(ids), dtype=torch.bool))))


@pytest.mark.parametrize("slots", [False, True])
def test_shown_path_constrains_fills_filters_and_chooses(model, tokenizer, slots):
    rows = [dict(ex, cited_name="Luna skinny", evidence="red dress bought twice, most recently the Luna skinny")
            for ex in EXAMPLES]
    hist = {"n": 2, "colours": {"red"}, "types": {"dress"}, "patterns": {"solid"}, "names": {"luna skinny"}}
    # pushed to name a purchase the user never made; with slots the trie allows only the slot, filled after
    text = " Red dress, most recently the Lotta top."
    with Script(model, tokenizer, text):
        shown = shown_reasons(model, _data(tokenizer, slots), rows, [ARTICLE] * 3, DecodeConfig("greedy", max_new_tokens=40),
                              FILTER, [hist] * 3)
    for s in shown:
        assert "most recently the Luna skinny" in s.reason and NAME_SLOT not in s.reason, s
        assert s.passed and FILTER.check(s.reason, ARTICLE, hist) == []
    with Script(model, tokenizer, text):
        free = shown_reasons(model, _data(tokenizer, slots), rows, [ARTICLE] * 3, DecodeConfig("greedy", max_new_tokens=40),
                             FILTER, [hist] * 3, constrain=False)
    assert all(not s.passed and "false_history" in s.rejected[0][1] for s in free)


def test_one_path_from_candidates_to_the_shown_reason():
    """Only shown.py turns candidates into a shown reason: no other module decodes reasons with
    generate_reasons or chooses with Filter.select (RL's policy sampling calls decode for gradients), in any
    subpackage or notebook."""
    repo = Path(__file__).resolve().parents[1]
    sources = {f.relative_to(repo).as_posix(): f.read_text() for f in sorted((repo / "mmreason").rglob("*.py"))}
    for nb in sorted((repo / "notebooks").glob("*.ipynb")):
        cells = json.loads(nb.read_text())["cells"]
        sources[nb.relative_to(repo).as_posix()] = "\n".join("".join(c["source"]) for c in cells
                                                              if c["cell_type"] == "code")
    assert "mmreason/decoding/shown.py" in sources and "mmreason/serving/explainer.py" in sources
    allowed = {f"mmreason/decoding/{n}.py" for n in ("shown", "generate", "filters")}
    offenders = [name for name, text in sources.items()
                 if name not in allowed and re.search(r"\bgenerate_reasons\(|\.select\(", text)]
    assert offenders == []


def test_retrieved_copy_is_offered_after_the_generated_hook_and_filtered():
    """offer_retrieved=1: the generated hook + the first retrieved copy is shown when it passes the filter
    for this article; a retrieved copy naming another colour (a neighbour's) is refused and the generated
    reason is shown; with offer_retrieved=0 the retrieved copy is never shown. The default (None) offers
    shown.OFFER_RETRIEVED copies where the prompts have the retrieved segment, none where they do not; a run that
    sees the photo offers the copy its photo chose (``artifacts.photo_offers``), a text-only run the prompt's."""
    tokenizer = tiny_tokenizer(SENTENCES)
    model = tiny_model(tokenizer)
    fits, wrong = "Soft cotton jersey with a round neckline.", "Black trousers in navy blue."
    rows = [dict(EXAMPLES[0], cited_name="", evidence="", retrieved=f"{r} | Another copy.") for r in (fits, wrong)]
    data = _data(tokenizer, False)
    data.prompt_example = lambda r: {k: r.get(k, "") for k in ("user_profile", "evidence", "behaviour", "product",
                                                                "retrieved")} | {"article_id": r["article_id"]}
    data.artifacts.photo_offers = {}  # no article of these rows: the prompt's first retrieved copy is offered
    decode_cfg = DecodeConfig("greedy", max_new_tokens=30)
    assert sees_photo(model) and not sees_photo(tiny_model(tokenizer, use_photo=False))
    with Script(model, tokenizer, " Red dress for you. A wrap dress."):
        off = shown_reasons(model, data, rows, [ARTICLE] * 2, decode_cfg, FILTER, [None] * 2, offer_retrieved=0)
    with Script(model, tokenizer, " Red dress for you. A wrap dress."):
        deployed = shown_reasons(model, data, rows, [ARTICLE] * 2, decode_cfg, FILTER, [None] * 2)
    with Script(model, tokenizer, " Red dress for you. A wrap dress."):
        on = shown_reasons(model, data, rows, [ARTICLE] * 2, decode_cfg, FILTER, [None] * 2, offer_retrieved=1)
    assert all(s.source == "generated" and fits not in s.reason for s in off)
    hook = M.split_sentences(off[0].reason)[0]
    assert on[0].source == "retrieved" and on[0].reason == f"{hook} {fits}" and on[0].passed
    assert on[0].candidates[0] == on[0].reason and "Another copy." not in " ".join(on[0].candidates)
    assert on[1].source == "generated" and on[1].reason == off[1].reason
    assert on[1].rejected[0] == (f"{hook} {wrong}", ["wrong_colour", "wrong_type"])
    assert OFFER_RETRIEVED == 1 and [(s.reason, s.source) for s in deployed] == [(s.reason, s.source) for s in on]
    with pytest.raises(ValueError, match="retrieved"):
        shown_reasons(model, _data(tokenizer, False), rows, [ARTICLE] * 2, decode_cfg, FILTER, offer_retrieved=1)
    with Script(model, tokenizer, " Red dress for you. A wrap dress."):  # no retrieved segment: nothing offered
        plain = shown_reasons(model, _data(tokenizer, False), rows, [ARTICLE] * 2, decode_cfg, FILTER, [None] * 2)
    assert [s.reason for s in plain] == [s.reason for s in off] and all(s.source == "generated" for s in plain)
    # offer_copies: these copies are offered instead of the prompt's (the photo's vetted ones); the prompt is unchanged
    with Script(model, tokenizer, " Red dress for you. A wrap dress."):
        given = shown_reasons(model, data, rows, [ARTICLE] * 2, decode_cfg, FILTER, [None] * 2, offer_copies=[wrong, fits])
    assert [(s.reason, s.source) for s in given] == [(off[0].reason, "generated"), (f"{hook} {fits}", "retrieved")]
    assert given[0].rejected[0] == (f"{hook} {wrong}", ["wrong_colour", "wrong_type"])
    assert [s.candidates[1:] for s in given] == [s.candidates[1:] for s in on]  # the same generated candidates
    with pytest.raises(ValueError, match="1 copies to offer for 2 rows"):
        shown_reasons(model, data, rows, [ARTICLE] * 2, decode_cfg, FILTER, [None] * 2, offer_copies=[fits])
    # deployed, a run that sees the photo offers the copy the photo chose for the article, in place of the prompt's
    data.artifacts.photo_offers = {rows[0]["article_id"]: wrong}
    with Script(model, tokenizer, " Red dress for you. A wrap dress."):
        photo = shown_reasons(model, data, rows, [ARTICLE] * 2, decode_cfg, FILTER, [None] * 2)
    assert all(s.source == "generated" and s.rejected[0] == (f"{hook} {wrong}", ["wrong_colour", "wrong_type"])
               for s in photo)
    data.artifacts.photo_offers = {rows[0]["article_id"]: fits}
    with Script(model, tokenizer, " Red dress for you. A wrap dress."):
        photo = shown_reasons(model, data, rows, [ARTICLE] * 2, decode_cfg, FILTER, [None] * 2)
    with Script(model, tokenizer, " Red dress for you. A wrap dress."):
        explicit = shown_reasons(model, data, rows, [ARTICLE] * 2, decode_cfg, FILTER, [None] * 2, offer_retrieved=1)
    assert [(s.reason, s.source) for s in photo] == [(f"{hook} {fits}", "retrieved")] * 2
    assert [(s.reason, s.source) for s in explicit] == [(s.reason, s.source) for s in on]  # 1: the prompt's first
    # a run that sees the photo but whose prompt retrieves nothing (no_retrieval, photo_only: ``prompt_example``
    # gives the segment as "") offers nothing, whatever the table holds
    bare = _data(tokenizer, False)
    bare.prompt_example = lambda r: data.prompt_example(r) | {"retrieved": ""}
    bare.artifacts.photo_offers = {rows[0]["article_id"]: fits}
    with Script(model, tokenizer, " Red dress for you. A wrap dress."):
        none = shown_reasons(model, bare, rows, [ARTICLE] * 2, decode_cfg, FILTER, [None] * 2)
    assert [(s.reason, s.source) for s in none] == [(s.reason, s.source) for s in off]
    with pytest.raises(ValueError, match="retrieved"):  # asked for explicitly, it is refused, not silently dropped
        shown_reasons(model, bare, rows, [ARTICLE] * 2, decode_cfg, FILTER, [None] * 2, offer_retrieved=1)
    # the Explainer reads the table when it starts exactly where the deployed offer will read it
    data.prompt_fields = ["user_profile", "product", "retrieved"]
    assert uses_photo_offers(model, data) and not uses_photo_offers(model, data, 1)
    assert not uses_photo_offers(tiny_model(tokenizer, use_photo=False), data)
    assert not uses_photo_offers(model, SimpleNamespace(prompt_fields=["user_profile", "product"]))
    text_model = tiny_model(tokenizer, use_photo=False)
    with Script(text_model, tokenizer, " Red dress for you. A wrap dress."):
        text = shown_reasons(text_model, data, rows, [ARTICLE] * 2, decode_cfg, FILTER, [None] * 2)
    assert [s.source for s in text] == ["retrieved", "generated"]  # the prompt's first copies: fits, then wrong
    assert text[1].rejected[0][0].endswith(wrong)


def test_cascade_decodes_again_only_where_the_first_reason_fails(monkeypatch):
    """fallback (serving's "greedy+beam"): a reason that passes is kept as decoded; the rows whose candidates
    all fail the filter, and only those, are decoded again with the fallback, whose reason is shown."""
    import mmreason.decoding.shown as shown_mod
    from mmreason.decoding.shown import decoding

    tokenizer = tiny_tokenizer(SENTENCES)
    first, then = DecodeConfig("greedy", max_new_tokens=4), DecodeConfig("beam", num_beams=2, max_new_tokens=30)
    calls = []

    def fake(model, tok, prompts, photo, has_photo, decode, **kw):  # first pass: rows 0 and 2 write a cut reason
        calls.append((decode, [p["article_id"] for p in prompts], photo.shape[0]))
        if decode is first:
            return [["Red dress for you"] if p["article_id"] != EXAMPLES[1]["article_id"] else ["Red dress. Soft."]
                    for p in prompts]
        return [["Cut off in the middle of", "A red dress for you. Wrap dress."] for _ in prompts]

    monkeypatch.setattr(shown_mod, "generate_reasons", fake)
    got = shown_reasons(None, _data(tokenizer, False), EXAMPLES, [ARTICLE] * 3, first, FILTER, fallback=then)
    ids = [e["article_id"] for e in EXAMPLES]
    assert [(c[0], c[1], c[2]) for c in calls] == [(first, ids, 3), (then, [ids[0], ids[2]], 2)]
    assert [s.reason for s in got] == ["A red dress for you. Wrap dress.", "Red dress. Soft.",
                                       "A red dress for you. Wrap dress."]
    assert all(s.passed for s in got) and got[0].rejected[0] == ("Cut off in the middle of", ["truncated"])
    calls.clear()
    assert [s.reason for s in shown_reasons(None, _data(tokenizer, False), EXAMPLES, [ARTICLE] * 3, first,
                                            FILTER)][0] == "Red dress for you" and len(calls) == 1  # no fallback
    a, b = decoding("greedy+beam")
    assert (a.strategy, b.strategy, b.num_return_sequences) == ("greedy", "beam", 4)
    assert decoding("beam")[1] is None and decoding("beam")[0].num_return_sequences == 4
    with pytest.raises(ValueError, match="greedy\\+beam"):
        decoding("greedy+nucleus")


def test_sampling_survives_a_row_the_constraint_leaves_no_token(model, tokenizer, batch):
    """A row whose every token is forbidden scores -inf (as greedy scores it) instead of crashing the sampler
    (torch.multinomial on an all -inf row: the notebooks' decoding sweep hit it on the default run)."""
    from mmreason.decoding.constraints import Constraint

    everything = Constraint(banned=set(range(len(tokenizer))))
    out = decode(model, batch, DecodeConfig("sample", num_return_sequences=2, seed=0, max_new_tokens=8),
                 token_id(tokenizer, EOS), constraints=[everything, None, None], tokenizer=tokenizer)
    assert len(out) == 3 and all(len(c) == 2 for c in out)
    assert all(score == float("-inf") for _, score in out[0])
    assert all(score > float("-inf") for c in out[1:] for _, score in c)


def test_greedy_drops_finished_rows_and_each_row_decodes_as_alone(tokenizer, batch):
    """Greedy drops finished rows from its batch (once a quarter of it is done; the KV cache, the copy head's
    prompt state and the constraint's rows go with them): every row's reason and score are what it gets decoded
    on its own. Short position tables give the rows (prompts of unequal length) unequal room, so they finish
    at different steps."""
    model = copy_model(tokenizer, n_positions=40)
    encoded = [encode_example(tokenizer, ex, max_prompt_tokens=6, with_reason=False) for ex in EXAMPLES]
    short = {**batch, **collate(encoded, pad_id=tokenizer.pad_token_id, padding_side="left")}
    short.pop("labels")
    cons = [build(tokenizer, ARTICLE, ["Luna skinny"], FILTER), None, build(tokenizer, ARTICLE, [], FILTER)]
    cfg, eos = DecodeConfig("greedy", max_new_tokens=1000, no_repeat_ngram_size=2), token_id(tokenizer, EOS)
    rows = []  # rows of every model call: the prompt (B, T, C), then one (R, C) per step
    hook = model.gpt2.transformer.ln_f.register_forward_hook(lambda m, args, out: rows.append(args[0].size(0)))
    try:
        together = decode(model, short, cfg, eos, constraints=cons, tokenizer=tokenizer)
    finally:
        hook.remove()
    assert rows[0] == len(EXAMPLES) and rows[-1] < len(EXAMPLES)  # the batch shrank as rows finished
    lengths = [len(c[0][0]) for c in together]
    assert len(set(lengths)) > 1
    for b in range(len(EXAMPLES)):
        one = {k: v[b:b + 1] for k, v in short.items()}
        alone = decode(model, one, cfg, eos, constraints=[cons[b]], tokenizer=tokenizer)
        assert alone[0][0][0] == together[b][0][0]
        assert alone[0][0][1] == pytest.approx(together[b][0][1], abs=SCORE_ATOL)


def test_a_hook_the_evidence_does_not_state_is_repaired_with_the_evidence_hook(monkeypatch):
    """Rows with an evidence hook: a candidate that opens with it is shown as the model wrote it; where no
    candidate does (a spliced subject, a time of the model's own), the evidence's hook takes the place of the
    model's first sentence and the model's copy follows it (``Shown.hook == "evidence"``); the retrieved copy
    is then offered after that hook. A row without a hook is not held to one."""
    import mmreason.decoding.shown as shown_mod

    tokenizer = tiny_tokenizer(SENTENCES)
    hook = "Red is a regular in your wardrobe: you have chosen it twice, most recently with the Luna skinny."
    hist = {"n": 2, "colours": {"red"}, "types": {"dress"}, "patterns": {"solid"}, "names": {"luna skinny"}}
    spliced, timed = hook.replace("Red", "LightSocks"), hook.replace("skinny.", "skinny 2 months ago.")
    cands = {0: [f"{spliced} A wrap dress.", f"{hook} A wrap dress in jersey."],   # the 2nd beam holds the hook
             1: [f"{spliced} A wrap dress.", f"{timed} Soft wrap dress."],        # no beam does
             2: [f"{spliced} A wrap dress."]}                                      # no hook to hold it to
    monkeypatch.setattr(shown_mod, "generate_reasons",  # EXAMPLES' article ids are 1, 2, 3
                        lambda model, tok, prompts, *a, **kw: [cands[p["article_id"] - 1] for p in prompts])
    rows = [dict(EXAMPLES[i], hook=h) for i, h in enumerate((hook, hook, None))]
    got = shown_reasons(None, _data(tokenizer, False), rows, [ARTICLE] * 3, DecodeConfig("beam"), FILTER, [hist] * 3)
    assert [(s.reason, s.hook, s.passed) for s in got] == [
        (f"{hook} A wrap dress in jersey.", "model", True),
        (f"{hook} A wrap dress.", "evidence", True),     # the best-ranked candidate's copy after the evidence's hook
        (f"{spliced} A wrap dress.", "model", True)]
    assert got[1].rejected[0] == (f"{spliced} A wrap dress.", ["unsupported_hook"])
    data = _data(tokenizer, False)
    data.prompt_example = lambda r: {"retrieved": "Soft jersey dress. | Other.", "article_id": r["article_id"]}
    offered = shown_reasons(None, data, rows[1:2], [ARTICLE], DecodeConfig("beam"), FILTER, [hist])[0]
    assert (offered.reason, offered.source, offered.hook) == (f"{hook} Soft jersey dress.", "retrieved", "evidence")
    # the repair finds nothing (a hook and no copy) but the offer passes: it leads with the evidence's hook, so says so
    cands[1] = [spliced]
    offered = shown_reasons(None, data, rows[1:2], [ARTICLE], DecodeConfig("beam"), FILTER, [hist])[0]
    assert (offered.reason, offered.source, offered.hook) == (f"{hook} Soft jersey dress.", "retrieved", "evidence")


def test_rehooked_puts_the_evidence_hook_in_place_of_as_many_sentences_as_it_has():
    """A cited name with a full stop ("Greta Hipster Ch. (Poppy)", 55 H&M names) makes a two-sentence hook."""
    hook = "You bought the Greta Hipster Ch. (Poppy) 3 days ago."
    assert rehooked(f"{hook.replace('3 days', 'a week')} Soft briefs.", hook) == f"{hook} Soft briefs."
    assert rehooked("Red is your colour. Soft briefs.", "Red is your colour.") == "Red is your colour. Soft briefs."
    assert rehooked(hook, hook) is None  # nothing after the hook: no reason


def test_every_multi_candidate_decoding_offers_four_and_the_history_holds_names():
    from mmreason.datasets.reasons import Purchase
    from mmreason.decoding.shown import decoding, evidence_names, history_sets
    assert [decoding(n)[0].num_return_sequences for n in ("beam", "diverse_beam", "sample", "greedy")] == [4, 4, 4, 1]
    first, fallback = decoding("greedy+beam")
    assert first.strategy == "greedy" and fallback.strategy == "beam" and fallback.num_return_sequences == 4
    sets = history_sets([Purchase(1, 3, "Luna Skinny", "Trousers", "Black", "Denim", "Trousers", "Womens")])
    assert sets == {"n": 1, "colours": {"black"}, "types": {"trousers"}, "patterns": {"denim"}, "names": {"luna skinny"}}
    assert evidence_names({"cited_name": "Luna Skinny"}) == ["Luna Skinny"]
    assert evidence_names({"cited_name": ""}) == evidence_names({"cited_name": float("nan")}) == evidence_names({}) == []


def test_training_samples_never_build_the_photos_table(monkeypatch):
    """sample_reasons (training's samples): a run that sees the photo offers its prompt's first copy, so
    ``python -m mmreason.train`` never builds the photo's table (the ImageNet features of every photo) midway;
    photo=True asks for the deployed offer; a run without retrieval keeps the deployed default (nothing)."""
    import pandas as pd

    import mmreason.decoding.shown as shown_mod

    seen = []
    monkeypatch.setattr(shown_mod, "shown_reasons", lambda *a, **kw: seen.append(kw["offer_retrieved"]) or [])
    tokenizer = tiny_tokenizer(SENTENCES)
    items = pd.DataFrame([dict(ARTICLE, article_id=1)])
    data = SimpleNamespace(prompt_fields=["user_profile", "product", "retrieved"],
                           artifacts=SimpleNamespace(items=items))
    frame = pd.DataFrame([{"article_id": 1}])
    shown_mod.sample_reasons(tiny_model(tokenizer), data, frame, DecodeConfig("greedy"))
    shown_mod.sample_reasons(tiny_model(tokenizer), data, frame, DecodeConfig("greedy"), photo=True)
    shown_mod.sample_reasons(tiny_model(tokenizer), data, frame, DecodeConfig("greedy"), offer_retrieved=0)
    shown_mod.sample_reasons(tiny_model(tokenizer, use_photo=False), data, frame, DecodeConfig("greedy"))
    data.prompt_fields = ["user_profile", "product"]
    shown_mod.sample_reasons(tiny_model(tokenizer), data, frame, DecodeConfig("greedy"))
    assert seen == [OFFER_RETRIEVED, None, 0, None, None]
