"""Decoding with the KV cache on a tiny random ReasonModel and a tiny BPE tokenizer trained here (no hub)."""
from collections import Counter

import pytest
import torch

from mmreason.decoding.generate import PRESETS, DecodeConfig, decode, generate_reasons, preset
from mmreason.model.collate import EOS, SPECIAL_TOKENS, collate, encode_example
from mmreason.model.network import SEG_REASON, ModelConfig, ReasonModel

from conftest import tiny_tokenizer

SENTENCES = [
    "a soft cotton jumper in navy blue", "she often buys dresses, knitwear and trousers",
    "perfect for chilly autumn walks", "relaxed fit jeans with a high waist", "he likes sporty shoes",
    "matches your taste for black trousers: you bought the skinny jeans 3 days ago.",
]
EXAMPLES = [  # prompts of clearly unequal length, so the batch is left-padded
    {"article_id": 1, "user_profile": "she often buys dresses, knitwear and trousers",
     "behaviour": "relaxed fit jeans with a high waist, a soft cotton jumper",
     "product": "a soft cotton jumper in navy blue"},
    {"article_id": 2, "user_profile": "he likes sporty shoes", "behaviour": "", "product": "jeans"},
    {"article_id": 3, "user_profile": "", "behaviour": "perfect for chilly autumn walks", "product": "black trousers"},
]
MAX_NEW = 12


@pytest.fixture(scope="module")
def tokenizer():
    return tiny_tokenizer(SENTENCES)


def tiny_model(tokenizer, use_photo=True, seed=0, n_positions=256):
    torch.manual_seed(seed)
    cfg = ModelConfig(n_layer=2, n_head=2, n_embd=32, clip_dim=8, prefix_len=2, vocab_size=len(tokenizer),
                      use_photo=use_photo, dropout=0.0, n_positions=n_positions)
    model = ReasonModel(cfg).eval()
    with torch.no_grad():  # GPT-2's init (std 0.02) is nearly uniform; wide weights keep argmax ties away
        for p in model.parameters():
            if p.dim() >= 2:
                p.normal_(0, 0.5)
    return model


@pytest.fixture(scope="module")
def model(tokenizer):
    return tiny_model(tokenizer)


@pytest.fixture(scope="module")
def batch(tokenizer):
    encoded = [encode_example(tokenizer, ex, with_reason=False) for ex in EXAMPLES]
    out = collate(encoded, pad_id=tokenizer.pad_token_id, padding_side="left")
    assert out["attention_mask"].eq(0).any()  # unequal lengths: some rows are padded
    g = torch.Generator().manual_seed(1)
    out["photo_embedding"] = torch.randn(len(EXAMPLES), 8, generator=g)
    out["has_photo"] = torch.tensor([True, False, True])
    return out


def run(model, batch, eos_id, **kw):
    return decode(model, batch, DecodeConfig(max_new_tokens=MAX_NEW, **kw), eos_id)


def ids_of(result):
    return [[ids for ids, _ in cands] for cands in result]


# Scores are fp32 sums of up to MAX_NEW log-probabilities. Two searches with other batch shapes (or another
# CPU's kernels, or thread count) sum in another order: on an AMD EPYC they differed by 2e-7, not 0. 1e-4
# leaves room for that and still fails a different hypothesis, which differs by a whole token's log-probability.
SCORE_ATOL = 1e-4


def assert_same_candidates(a, b):
    """Same token ids exactly, same scores within SCORE_ATOL."""
    assert ids_of(a) == ids_of(b)
    assert [s for cands in a for _, s in cands] == pytest.approx([s for cands in b for _, s in cands], abs=SCORE_ATOL)


def naive_greedy(model, batch, eos_id, steps):
    """Greedy without the cache: the full forward over prompt + generated tokens at every step."""
    ids, segs, mask = batch["input_ids"], batch["segment_ids"], batch["attention_mask"]
    B = ids.size(0)
    out, total, done = [[] for _ in range(B)], [0.0] * B, [False] * B
    with torch.no_grad():
        for _ in range(steps):
            logits = model(batch["photo_embedding"], batch["has_photo"], ids, segs, mask)["logits"][:, -1]
            lp = logits.float().log_softmax(-1)
            nxt = lp.argmax(-1)
            for b in range(B):
                if not done[b]:
                    total[b] += float(lp[b, nxt[b]])
                    done[b] = int(nxt[b]) == eos_id
                    if not done[b]:
                        out[b].append(int(nxt[b]))
            if all(done):
                break
            ids = torch.cat([ids, nxt[:, None]], 1)
            segs = torch.cat([segs, torch.full((B, 1), SEG_REASON)], 1)
            mask = torch.cat([mask, torch.ones(B, 1, dtype=mask.dtype)], 1)
    return out, total


def first_new_token(tokens, start=2):
    """(position, token) of the first token at index >= start that has not occurred before it."""
    for i in range(start, len(tokens)):
        if tokens[i] not in tokens[:i]:
            return i, tokens[i]
    raise AssertionError("no fresh token in the greedy output")


@pytest.mark.parametrize("use_photo", [True, False])
def test_greedy_with_cache_equals_full_forward(tokenizer, batch, use_photo):
    model = tiny_model(tokenizer, use_photo=use_photo)
    eos = tokenizer.eos_token_id
    cached = run(model, batch, eos, strategy="greedy", length_penalty=0.0)
    ref_ids, ref_scores = naive_greedy(model, batch, eos, MAX_NEW)
    assert ids_of(cached) == [[ids] for ids in ref_ids]
    assert [c[0][1] for c in cached] == pytest.approx(ref_scores, abs=SCORE_ATOL)
    assert len({tuple(ids) for ids in ref_ids}) > 1  # the rows really differ


def test_greedy_stops_each_row_at_eos(model, batch, tokenizer):
    free = ids_of(run(model, batch, tokenizer.eos_token_id))
    pos, stop = first_new_token(free[0][0])
    stopped = run(model, batch, stop, strategy="greedy")
    assert stopped[0][0][0] == free[0][0][:pos]  # row 0 ends just before its "EOS", which is dropped
    ref_ids, _ = naive_greedy(model, batch, stop, MAX_NEW)
    assert ids_of(stopped) == [[ids] for ids in ref_ids]  # other rows stop (or not) on their own


def test_decoding_stops_when_all_rows_are_done(model, batch, tokenizer):
    single = {k: v[:1] for k, v in batch.items()}
    free = ids_of(run(model, single, tokenizer.eos_token_id))[0][0]
    pos, stop = first_new_token(free)
    calls = Counter()
    # the final layer norm runs once per model call, whichever KV-cache path decodes
    hook = model.gpt2.transformer.ln_f.register_forward_hook(lambda *a: calls.update(["forward"]))
    try:
        for strategy in ("greedy", "beam"):
            calls.clear()
            out = run(model, single, stop, strategy=strategy, num_beams=1, length_penalty=0.0)
            assert out[0][0][0] == free[:pos]
            assert calls["forward"] == 1 + pos  # the prompt, then one step per token before EOS
    finally:
        hook.remove()


def test_beam_of_one_equals_greedy(model, batch, tokenizer):
    eos = tokenizer.eos_token_id
    greedy = run(model, batch, eos, strategy="greedy", length_penalty=0.0)
    beam = run(model, batch, eos, strategy="beam", num_beams=1, length_penalty=0.0)
    assert_same_candidates(beam, greedy)
    _, stop = first_new_token(ids_of(greedy)[0][0])  # and with rows ending at EOS
    assert ids_of(run(model, batch, stop, strategy="beam", num_beams=1, length_penalty=0.0)) == \
        ids_of(run(model, batch, stop, strategy="greedy", length_penalty=0.0))


def test_beam_scores_at_least_greedy(tokenizer, batch):
    eos = tokenizer.eos_token_id
    for seed in range(3):
        model = tiny_model(tokenizer, seed=seed)
        greedy = run(model, batch, eos, strategy="greedy", length_penalty=0.0)
        beam = run(model, batch, eos, strategy="beam", num_beams=4, num_return_sequences=4, length_penalty=0.0)
        for g, cands in zip(greedy, beam):
            scores = [s for _, s in cands]
            assert len(cands) == 4 and scores == sorted(scores, reverse=True)
            assert scores[0] >= g[0][1] - 1e-4  # not guaranteed by beam search in general, but holds here
            assert len({tuple(ids) for ids, _ in cands}) == 4


def test_beam_cache_matches_rescoring(model, batch, tokenizer):
    """Each beam candidate's score equals its log-prob recomputed by a full forward: the cache was reordered right."""
    eos = tokenizer.eos_token_id
    beam = run(model, batch, eos, strategy="beam", num_beams=3, num_return_sequences=3, length_penalty=0.0)
    for b, cands in enumerate(beam):
        for ids, score in cands:
            row = {k: v[b:b + 1] for k, v in batch.items()}
            n = len(ids)
            ext = {**row, "input_ids": torch.cat([row["input_ids"], torch.tensor([ids])], 1),
                   "segment_ids": torch.cat([row["segment_ids"], torch.full((1, n), SEG_REASON)], 1),
                   "attention_mask": torch.cat([row["attention_mask"], torch.ones(1, n, dtype=torch.long)], 1)}
            with torch.no_grad():
                logits = model(ext["photo_embedding"], ext["has_photo"], ext["input_ids"], ext["segment_ids"],
                               ext["attention_mask"])["logits"][0, -n - 1:-1]
            expected = logits.float().log_softmax(-1).gather(1, torch.tensor(ids)[:, None]).sum()
            assert n == MAX_NEW and score == pytest.approx(float(expected), abs=1e-3)


def test_top_k_one_and_tiny_top_p_sample_greedily(model, batch, tokenizer):
    eos = tokenizer.eos_token_id
    greedy = ids_of(run(model, batch, eos, strategy="greedy"))
    for kw in ({"top_k": 1}, {"top_p": 1e-6}):
        sampled = run(model, batch, eos, strategy="sample", temperature=2.0, seed=3, num_return_sequences=2, **kw)
        assert ids_of(sampled) == [g * 2 for g in greedy]


def test_same_seed_same_samples(model, batch, tokenizer):
    eos = tokenizer.eos_token_id
    kw = dict(strategy="sample", temperature=3.0, num_return_sequences=3)
    a, b = run(model, batch, eos, seed=7, **kw), run(model, batch, eos, seed=7, **kw)
    c = run(model, batch, eos, seed=8, **kw)
    assert a == b and ids_of(a) != ids_of(c)
    assert all(len(cands) == 3 for cands in a)
    assert len({tuple(ids) for cands in a for ids, _ in cands}) > 3  # samples differ from each other
    assert all([s for _, s in cands] == sorted((s for _, s in cands), reverse=True) for cands in a)  # best first


def repeated_ngrams(ids, n):
    grams = Counter(tuple(ids[i:i + n]) for i in range(len(ids) - n + 1))
    return sum(c - 1 for c in grams.values())


def test_no_repeat_ngram(model, batch, tokenizer):
    eos = tokenizer.eos_token_id
    long = dict(max_new_tokens=24)
    free = decode(model, batch, DecodeConfig(strategy="greedy", **long), eos)
    assert any(repeated_ngrams(ids, 2) for ids in [c[0][0] for c in free])  # the random model loops
    for strategy in ("greedy", "beam", "diverse_beam", "sample"):
        cfg = DecodeConfig(strategy=strategy, no_repeat_ngram_size=2, num_return_sequences=2, seed=0, **long)
        for cands in decode(model, batch, cfg, eos):
            for ids, _ in cands:
                assert repeated_ngrams(ids, 2) == 0, strategy


def test_repetition_penalty_reduces_repeats(model, batch, tokenizer):
    eos = tokenizer.eos_token_id
    plain = decode(model, batch, DecodeConfig(max_new_tokens=24), eos)
    penalised = decode(model, batch, DecodeConfig(max_new_tokens=24, repetition_penalty=3.0), eos)
    assert ids_of(plain) != ids_of(penalised)
    repeats = lambda result: sum(repeated_ngrams(c[0][0], 1) for c in result)  # noqa: E731
    assert repeats(penalised) < repeats(plain)


def test_diverse_beam_returns_distinct_candidates(model, batch, tokenizer):
    eos = tokenizer.eos_token_id
    kw = dict(strategy="diverse_beam", num_beams=4, num_beam_groups=2, num_return_sequences=4)
    same = run(model, batch, eos, diversity_penalty=0.0, **kw)
    diverse = run(model, batch, eos, diversity_penalty=100.0, **kw)
    plain = run(model, batch, eos, strategy="beam", num_beams=2, num_return_sequences=2)
    for s, d, p in zip(same, diverse, plain):
        assert_same_candidates([s], [p])  # without the penalty both groups run the same 2-beam search; duplicates count once
        assert len(d) == 4 and len({tuple(ids) for ids, _ in d}) == 4
        assert [score for _, score in d] == sorted((score for _, score in d), reverse=True)
        assert {tuple(ids) for ids, _ in p} <= {tuple(ids) for ids, _ in d}  # group 1 is plain beam search
    # one beam per group: each group keeps its own first token, and the penalty makes those differ
    singles = run(model, batch, eos, strategy="diverse_beam", num_beams=4, num_beam_groups=4,
                  diversity_penalty=100.0, num_return_sequences=4)
    assert all(len({ids[0] for ids, _ in c}) == 4 for c in singles)


def test_beam_candidates_stop_at_eos(model, batch, tokenizer):
    greedy = ids_of(run(model, batch, tokenizer.eos_token_id))
    _, stop = first_new_token(greedy[0][0])
    out = run(model, batch, stop, strategy="beam", num_beams=4, num_return_sequences=4)
    assert all(stop not in ids for cands in out for ids, _ in cands)
    assert any(len(ids) < MAX_NEW for cands in out for ids, _ in cands)


def test_generation_respects_n_positions(tokenizer, batch):
    n_positions = 40
    model = tiny_model(tokenizer, n_positions=n_positions)
    encoded = [encode_example(tokenizer, ex, max_prompt_tokens=6, with_reason=False) for ex in EXAMPLES]
    short = {**batch, **collate(encoded, pad_id=tokenizer.pad_token_id, padding_side="left")}
    lengths = (short["attention_mask"].sum(1) + 2).tolist()  # + the photo prefix
    for strategy in ("greedy", "beam"):
        cfg = DecodeConfig(strategy=strategy, num_beams=2, max_new_tokens=1000, length_penalty=0.0)
        out = decode(model, short, cfg, tokenizer.eos_token_id)  # no index error past the position table
        room = [len(c[0][0]) - (n_positions - L + 1) for c, L in zip(out, lengths)]
        assert max(room) == 0  # no row ran past its room, and one that never hit EOS filled it
    long = {**batch, **collate([encode_example(tokenizer, EXAMPLES[0], with_reason=False)],
                               pad_id=tokenizer.pad_token_id, padding_side="left")}
    with pytest.raises(ValueError, match="n_positions"):
        decode(model, {**long, "photo_embedding": batch["photo_embedding"][:1], "has_photo": batch["has_photo"][:1]},
               DecodeConfig(), tokenizer.eos_token_id)


def test_generate_reasons_batches_keep_order(model, tokenizer):
    photos, has_photo = torch.randn(len(EXAMPLES), 8), torch.tensor([True, True, False])
    cfg = DecodeConfig(strategy="beam", num_beams=2, num_return_sequences=2, max_new_tokens=8)
    one_by_one = generate_reasons(model, tokenizer, EXAMPLES, photos, has_photo, cfg, batch_size=1, progress=False)
    batched = generate_reasons(model, tokenizer, EXAMPLES, photos, has_photo, cfg, batch_size=2, progress=False)
    assert batched == one_by_one  # left padding and length sorting change nothing
    assert all(len(r) == 2 and all(isinstance(t, str) for t in r) for r in batched)
    assert not any(s in t for r in batched for t in r for s in SPECIAL_TOKENS + [EOS])


def test_config_checks_and_presets():
    with pytest.raises(ValueError, match="multiple"):
        DecodeConfig(strategy="diverse_beam", num_beams=3, num_beam_groups=2)
    with pytest.raises(ValueError, match="strategy"):
        DecodeConfig(strategy="nucleus")
    assert set(PRESETS) == {"greedy", "beam", "diverse_beam", "sample"}
    assert preset("beam", num_beams=8).num_beams == 8 and PRESETS["beam"].num_beams == 4


# --------------------------------------------------------------------------- beam search with a length penalty
# Every test above uses length_penalty=0; the presets use 1. These decode a model with a vocabulary of a few
# tokens (token 0 is EOS), so every continuation can be enumerated, and compare with plain Python.

def small_vocab_model(V, seed):
    torch.manual_seed(seed)
    cfg = ModelConfig(n_layer=1, n_head=2, n_embd=16, clip_dim=4, prefix_len=1, vocab_size=V, dropout=0.0,
                      n_positions=64)
    model = ReasonModel(cfg).eval()
    with torch.no_grad():  # wide weights: peaked next-token distributions, so hypotheses end at different lengths
        for p in model.parameters():
            if p.dim() >= 2:
                p.normal_(0, 1.0)
    return model


def small_prompt(V, seed, T=3):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, V, (1, T), generator=g)
    return {"input_ids": ids, "segment_ids": torch.full_like(ids, SEG_REASON - 1),
            "attention_mask": torch.ones_like(ids), "photo_embedding": torch.randn(1, 4, generator=g), "has_photo": torch.tensor([True])}


@torch.no_grad()
def next_logprobs(model, prompt, tokens):
    """Log-probs of the token after prompt + tokens, by a full forward (no cache)."""
    new = torch.tensor([list(tokens)], dtype=torch.long).view(1, -1)
    ids = torch.cat([prompt["input_ids"], new], 1)
    segs = torch.cat([prompt["segment_ids"], torch.full_like(new, SEG_REASON)], 1)
    logits = model(prompt["photo_embedding"], prompt["has_photo"], ids, segs, torch.ones_like(ids))["logits"]
    return logits[0, -1].float().log_softmax(-1).tolist()


def normalised(total, length, length_penalty):
    return total / length ** length_penalty  # length counts the EOS when there is one


@pytest.mark.parametrize("max_new", [3, 4])
def test_beam_with_length_penalty_finds_the_best_normalised_continuation(max_new):
    """Beams enough to keep every prefix make beam search exhaustive: its top 4 must be the 4 best of all
    continuations by sum of log-probs / len**length_penalty, enumerated here. Most of the 108 beams hold no
    prefix at first (with max_new 3, many never do): such dead beams must never surface as hypotheses."""
    V, eos, beams = 4, 0, 108  # every live prefix and its V continuations fit in 108 beams
    for seed in range(2):
        model, prompt = small_vocab_model(V, seed), small_prompt(V, seed)
        every = []  # (tokens without EOS, summed log-prob, scored length)

        def extend(tokens, total):
            lp = next_logprobs(model, prompt, tokens)
            every.append((tokens, total + lp[eos], len(tokens) + 1))  # ends here with EOS
            for t in range(1, V):
                if len(tokens) + 1 == max_new:
                    every.append((tokens + [t], total + lp[t], max_new))  # truncated at max_new_tokens
                else:
                    extend(tokens + [t], total + lp[t])

        extend([], 0.0)
        assert len(every) == sum(3 ** t for t in range(max_new)) + 3 ** max_new
        for lpen in (1.0, 2.0):
            best = sorted(((normalised(s, n, lpen), ids) for ids, s, n in every), key=lambda c: -c[0])[:4]
            cfg = DecodeConfig("beam", num_beams=beams, num_return_sequences=4, max_new_tokens=max_new,
                               length_penalty=lpen)
            got = decode(model, prompt, cfg, eos)[0]
            assert [ids for ids, _ in got] == [ids for _, ids in best], (seed, lpen)
            # cached float32 steps against full forwards: equal to float32 rounding
            assert [s for _, s in got] == pytest.approx([s for s, _ in best], abs=1e-4)
        assert len({len(ids) for _, ids in best}) > 1  # the winners differ in length: the penalty matters


def reference_beam(model, prompt, eos, K, max_new, lpen):
    """Beam search as decode's, in plain Python, that never stops early: K beams, a hypothesis ends when EOS
    is among the K best of the 2K best continuations, running beams become hypotheses at max_new."""
    beams, hyps = [((), 0.0)], []
    for step in range(max_new):
        cands = sorted(((s + lp, toks, t) for toks, s in beams
                        for t, lp in enumerate(next_logprobs(model, prompt, toks))), key=lambda c: -c[0])[:2 * K]
        hyps += [(normalised(s, step + 1, lpen), list(toks)) for s, toks, t in cands[:K] if t == eos]
        beams = [(toks + (t,), s) for s, toks, t in cands if t != eos][:K]
    hyps += [(normalised(s, max_new, lpen), list(toks)) for toks, s in beams]
    return sorted(hyps, key=lambda h: -h[0])[:K]


def test_beam_early_stop_with_length_penalty_drops_no_better_hypothesis():
    """With length_penalty > 0 a longer hypothesis can still overtake the finished ones (its sum is divided
    by more), so decode may stop only when none can: its result equals a search run to max_new_tokens."""
    stopped_early = 0
    for V, K, max_new in [(4, 2, 12), (5, 2, 8)]:
        for seed in range(10):
            model, prompt = small_vocab_model(V, seed), small_prompt(V, seed)
            calls = Counter()
            hook = model.gpt2.transformer.ln_f.register_forward_hook(lambda *a: calls.update(["forward"]))
            try:
                cfg = DecodeConfig("beam", num_beams=K, num_return_sequences=K, max_new_tokens=max_new,
                                   length_penalty=1.0)
                got = decode(model, prompt, cfg, eos_id=0)[0]
            finally:
                hook.remove()
            stopped_early += calls["forward"] < max_new  # the prompt, then one step per token but the last
            want = reference_beam(model, prompt, 0, K, max_new, 1.0)
            assert [ids for ids, _ in got] == [ids for _, ids in want], (V, K, seed)
            assert [s for _, s in got] == pytest.approx([s for s, _ in want], abs=1e-4)  # float32 rounding
    assert stopped_early >= 3  # the early stop did happen, so the equality above tested it


# --------------------------------------------------------------------------- the copy head (pointer-generator)

def copy_model(tokenizer, seed=0, n_positions=256):
    torch.manual_seed(seed)
    cfg = ModelConfig(n_layer=2, n_head=2, n_embd=32, clip_dim=8, prefix_len=2, vocab_size=len(tokenizer),
                      dropout=0.0, n_positions=n_positions, copy_head=True, copy_dim=16)
    model = ReasonModel(cfg).eval()
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() >= 2:
                p.normal_(0, 0.5)
        model.copy.gate.bias.fill_(0.0)  # half generate, half copy: both paths matter in the scores below
    return model


def extended(batch, b, ids):
    """Row b of a left-padded prompt batch followed by the generated ids, labelled on them."""
    row = {k: v[b:b + 1] for k, v in batch.items()}
    n = len(ids)
    labels = torch.cat([torch.full_like(row["input_ids"], -100), torch.tensor([ids])], 1)
    return {**row, "input_ids": torch.cat([row["input_ids"], torch.tensor([ids])], 1),
            "segment_ids": torch.cat([row["segment_ids"], torch.full((1, n), SEG_REASON)], 1),
            "attention_mask": torch.cat([row["attention_mask"], torch.ones(1, n, dtype=torch.long)], 1),
            "labels": labels}


@pytest.mark.parametrize("strategy", ["greedy", "beam"])
def test_copy_head_decoding_scores_match_teacher_forcing(tokenizer, batch, strategy):
    """Every candidate's score is the sum of the model's (generate + copy) log-probs of its tokens, recomputed on
    the whole sequence by the training path: the decoder's copy state (prompt keys, beams) is right."""
    model = copy_model(tokenizer)
    eos = tokenizer.eos_token_id
    res = run(model, batch, eos, strategy=strategy, num_beams=3, num_return_sequences=3, length_penalty=0.0,
              no_repeat_ngram_size=0, repetition_penalty=1.0)
    copied = 0
    for b, cands in enumerate(res):
        prompt = set(batch["input_ids"][b][batch["attention_mask"][b].bool()].tolist())
        for ids, score in cands:
            ex = extended(batch, b, ids)
            with torch.no_grad():
                lp, targets, _ = model.scored_logprobs(ex["photo_embedding"], ex["has_photo"], ex["input_ids"],
                                                       ex["segment_ids"], ex["attention_mask"], ex["labels"])
            assert targets.tolist() == ids
            assert score == pytest.approx(float(lp.sum()), abs=1e-3)
            copied += sum(t in prompt for t in ids)
    assert copied > 0  # the copy path was exercised


def test_copy_head_full_distribution_is_normalised_and_matches_targets(tokenizer, batch):
    model = copy_model(tokenizer)
    ex = extended(batch, 0, [5, 6, 7, 8])
    with torch.no_grad():
        full, targets, _ = model.scored_logprobs(ex["photo_embedding"], ex["has_photo"], ex["input_ids"],
                                                 ex["segment_ids"], ex["attention_mask"], ex["labels"], full=True)
        lp, _, _ = model.scored_logprobs(ex["photo_embedding"], ex["has_photo"], ex["input_ids"],
                                         ex["segment_ids"], ex["attention_mask"], ex["labels"])
    assert full.exp().sum(-1) == pytest.approx(torch.ones(4), abs=1e-4)
    assert full.gather(1, targets[:, None]).squeeze(1) == pytest.approx(lp, abs=1e-5)


def test_copy_head_batch_scores_equal_each_rows_own():
    """The copy head's queries are gathered at each row's scored positions (rows with unequal reasons, right
    padding as in training): a batch gives every token the log-prob its row gets alone, in the same order."""
    V = 40
    torch.manual_seed(0)
    model = ReasonModel(ModelConfig(n_layer=2, n_head=2, n_embd=32, vocab_size=V, n_positions=64, dropout=0.0,
                                    use_photo=False, copy_head=True, copy_dim=16)).eval()
    g = torch.Generator().manual_seed(3)
    rows = []
    for prompt_len, reason_len in ((7, 5), (4, 9), (10, 2)):
        ids = torch.randint(4, V, (prompt_len + reason_len,), generator=g)
        segs = torch.tensor([1] * prompt_len + [SEG_REASON] * reason_len)
        labels = torch.cat([torch.full((prompt_len,), -100), ids[prompt_len:]])
        rows.append((ids, segs, labels))
    T = max(len(r[0]) for r in rows)
    pad = lambda x, v: torch.cat([x, torch.full((T - len(x),), v, dtype=x.dtype)])  # noqa: E731
    ids, segs, labels = (torch.stack([pad(r[i], v) for r in rows]) for i, v in ((0, 0), (1, SEG_REASON), (2, -100)))
    mask = torch.stack([pad(torch.ones(len(r[0]), dtype=torch.long), 0) for r in rows])
    with torch.no_grad():
        batch_lp, batch_targets, _ = model.scored_logprobs(None, None, ids, segs, mask, labels)
        alone = [model.scored_logprobs(None, None, i[None], s[None], torch.ones(1, len(i), dtype=torch.long), lab[None])
                 for i, s, lab in rows]
    assert batch_targets.tolist() == [t for _, targets, _ in alone for t in targets.tolist()]
    assert batch_lp == pytest.approx(torch.cat([lp for lp, _, _ in alone]), abs=1e-5)


def test_copy_head_decoding_mix_equals_the_training_mix():
    """Decoding mixes in probability space (``CopyHead.mix_logits``), training in log space (``mix``): the same
    log-probs, for gates from all-generate to all-copy, wide logits, and source ids repeated in a row."""
    from mmreason.model.network import CopyHead
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(6, 50, generator=g) * 8                                  # log-probs down to ~ -60
    gate = torch.tensor([-12.0, -2.0, 0.0, 0.5, 3.0, 12.0])
    log_attn = torch.randn(6, 9, generator=g).log_softmax(-1)
    src = torch.randint(0, 5, (6, 9), generator=g)                                # few ids: repeats add up
    want = CopyHead.mix(logits.log_softmax(-1), gate, log_attn, src)
    got = CopyHead.mix_logits(logits, gate, log_attn, src)
    likely = want > -30  # fp32 probabilities: below e^-30 only the order matters to decoding
    assert torch.allclose(got[likely], want[likely], atol=1e-4)
    assert got.exp().sum(-1) == pytest.approx(torch.ones(6), abs=1e-5)
    assert torch.equal(got.argmax(-1), want.argmax(-1))


def test_copy_head_learns_to_copy_fast():
    """The reason is a random 6-token string that also stands in the prompt. 150 steps: with the copy head the
    loss falls to a fraction of the model without it (which cannot copy an unseen string yet)."""
    V, n = 64, 6
    losses = {}
    for copy_head in (False, True):
        torch.manual_seed(0)
        model = ReasonModel(ModelConfig(n_layer=2, n_head=2, n_embd=32, vocab_size=V, n_positions=64, dropout=0.0,
                                        use_photo=False, copy_head=copy_head, copy_dim=16))
        opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
        g = torch.Generator().manual_seed(1)
        for step in range(150):
            s = torch.randint(4, V, (32, n), generator=g)
            noise = torch.randint(4, V, (32, 5), generator=g)
            ids = torch.cat([noise, s, torch.full((32, 1), 3), s], 1)           # prompt: noise, s, marker | s
            segs = torch.cat([torch.full((32, 12), 3), torch.full((32, n), SEG_REASON)], 1)
            labels = torch.cat([torch.full((32, 12), -100), s], 1)
            loss, _ = model.reason_loss(None, None, ids, segs, torch.ones_like(ids), labels)
            opt.zero_grad()
            loss.backward()
            opt.step()
        losses[copy_head] = loss.item()
    assert losses[True] < 0.3 * losses[False], losses
