"""Batched decoding of reasons with GPT-2's KV cache: greedy, sampling, beam and diverse (group) beam search.

Our own loop, because the model is fed through `inputs_embeds` (photo prefix + segment embeddings) and
transformers 5 no longer ships group beam search. The prompt (prefix + left-padded text) runs once;
each step then feeds one token per row with `model.token_embeddings(ids, SEG_REASON)`.

Scores are sums of *processed* log-probabilities (after the repetition penalty, n-gram ban and the
constraint, before temperature / top-k / top-p and before the diversity penalty), divided by
len**length_penalty, where len counts the scored tokens including EOS. So a score means the same thing
whatever the strategy. Per-example constraints (``constraints.py``: cited names from a trie of the
evidence's names, no colour / type / pattern word that contradicts the article) mask the same log-probs
for every strategy.

Longer than 400 lines: the config and presets, the shared step and log-prob processing, and the two loops
(greedy/sampling, beam/diverse beam) that use them, all private to this module.
"""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass, replace

import torch
from tqdm.auto import tqdm

from mmreason.decoding import kvcache
from mmreason.model.collate import DEFAULT_MAX_PROMPT_TOKENS, EOS, collate, encode_example, token_id
from mmreason.decoding.constraints import Constrainer, Constraint
from mmreason.model.network import SEG_REASON

log = logging.getLogger(__name__)

STRATEGIES = ("greedy", "sample", "beam", "diverse_beam")


@dataclass
class DecodeConfig:
    strategy: str = "greedy"          # "greedy" | "sample" | "beam" | "diverse_beam"
    max_new_tokens: int = 96
    temperature: float = 1.0          # sampling only
    top_k: int = 0                    # sampling only; 0 = off
    top_p: float = 1.0                # sampling only (nucleus); 1.0 = off
    num_beams: int = 4
    num_beam_groups: int = 2          # diverse_beam: num_beams is split into this many groups
    diversity_penalty: float = 0.5    # Hamming diversity (Vijayakumar et al. 2016), per earlier-group pick
    no_repeat_ngram_size: int = 0     # 0 = off; n-grams are banned within the generated reason only
    repetition_penalty: float = 1.0   # CTRL-style, on tokens already generated; 1.0 = off
    length_penalty: float = 1.0       # score = sum logprob / len**length_penalty
    eos_penalty: float = 0.0          # subtracted from EOS's log-prob at every step: > 0 writes longer reasons
    num_return_sequences: int = 1     # samples per example, or up to num_beams beam candidates
    seed: int | None = None           # sampling; None = torch's global RNG state

    def __post_init__(self):
        if self.strategy not in STRATEGIES:
            raise ValueError(f"unknown strategy {self.strategy!r}: use one of {STRATEGIES}")
        if self.temperature <= 0:
            raise ValueError("temperature must be > 0 (use strategy='greedy' for argmax decoding)")
        if not 0 < self.top_p <= 1:
            raise ValueError("top_p must be in (0, 1]")
        if self.strategy == "diverse_beam" and self.num_beams % self.num_beam_groups:
            raise ValueError(f"num_beams ({self.num_beams}) must be a multiple of "
                             f"num_beam_groups ({self.num_beam_groups})")
        if self.eos_penalty < 0:
            raise ValueError("eos_penalty must be >= 0 (0 = off)")
        if self.num_beams < 1 or self.num_return_sequences < 1 or self.max_new_tokens < 1:
            raise ValueError("num_beams, num_return_sequences and max_new_tokens must be >= 1")


# Named settings for the CLIs and notebooks; change one with dataclasses.replace(PRESETS[name], ...).
# EOS_PENALTY, chosen on the validation sets (default run, 300 examples, beam + constraint + filter): the
# model ends its copy early (17 words against the references' 24); penalties 0 / 1 / 2 / 3 gave unseen copy
# CIDEr 1.59 / 1.61 / 1.71 / 1.70 (BLEU-4 25.5 / 27.0 / 28.9 / 30.8), temporal 1.83 -> 1.95 at 2, with colour
# and type precision unchanged. The sampling preset keeps the model's own distribution.
EOS_PENALTY = 2.0
PRESETS = {
    "greedy": DecodeConfig("greedy", no_repeat_ngram_size=3, eos_penalty=EOS_PENALTY),
    "beam": DecodeConfig("beam", num_beams=4, no_repeat_ngram_size=3, eos_penalty=EOS_PENALTY),
    "diverse_beam": DecodeConfig("diverse_beam", num_beams=4, num_beam_groups=2, diversity_penalty=0.5,
                                 no_repeat_ngram_size=3, num_return_sequences=4, eos_penalty=EOS_PENALTY),
    "sample": DecodeConfig("sample", temperature=0.8, top_p=0.9, no_repeat_ngram_size=3, num_return_sequences=4,
                           seed=0),
}


def preset(name: str, **overrides) -> DecodeConfig:
    return replace(PRESETS[name], **overrides)


# --------------------------------------------------------------------------- model steps
def _start(model, batch, max_new_tokens: int):
    """Run the whole prompt once (``kvcache``'s shared-prompt cache; Hugging Face's for GPT-2 variants it
    does not reproduce).

    -> last logits (B, V), cache, mask (B, L), next position (B,), room (B,) = most tokens each row may
    generate within n_positions, and the largest position id (n_positions - 1).
    """
    x, mask, pos = model.embed_prefix(batch.get("photo_embedding"), batch.get("has_photo"), batch["input_ids"],
                                      batch["segment_ids"], batch["attention_mask"])
    n_positions = getattr(model.gpt2.config, "n_positions", None) or 10 ** 9
    lengths = mask.sum(1)                                                      # (B,) attended tokens
    if int(lengths.max()) > n_positions:
        raise ValueError(f"prompt of {int(lengths.max())} tokens (prefix included) exceeds n_positions={n_positions}; "
                         "lower max_prompt_tokens")
    if getattr(model, "copy", None) is not None:  # the copy head needs every prompt position's hidden state
        if not kvcache.supports(model.gpt2):
            raise ValueError("decoding with the copy head needs a plain GPT-2 (kvcache.supports)")
        h, cache, every = kvcache.prompt_hidden(model.gpt2, x, mask, pos, max_new_tokens, every_position=True)
        cache.copy = model.copy_state(every, batch["input_ids"], batch["segment_ids"], batch["attention_mask"])
        logits = model.next_logprobs(h, batch["input_ids"][:, -1], cache.copy)  # log-probs: log_softmax keeps them
    elif kvcache.supports(model.gpt2):
        logits, cache = kvcache.prompt_forward(model.gpt2, x, mask, pos, max_new_tokens)
    else:
        out = model.gpt2(inputs_embeds=x, attention_mask=mask, position_ids=pos, use_cache=True, logits_to_keep=1)
        logits, cache = out.logits[:, -1], out.cache
    # token j (1-based) is fed at position L-1+j, and only if token j+1 is wanted: at most n_positions-L+1 tokens
    room = n_positions - lengths + 1                                           # (B,)
    return logits, cache, mask, pos[:, -1] + 1, room, n_positions - 1


def _step(model, ids, cache, mask, pos, max_pos):
    """Feed one token per row. ids, pos: (R,). -> logits (R, V), cache, mask, next pos (R,).

    The mask grows to (R, L+1) for Hugging Face's cache; ``kvcache`` keeps its own, so it is passed through."""
    x = model.token_embeddings(ids[:, None], SEG_REASON)                       # (R, 1, C)
    # rows that are done may run past n_positions; their output is ignored, so clamp
    if isinstance(cache, kvcache.KVCache) and cache.copy is not None:
        h = kvcache.step_hidden(model.gpt2, cache, x[:, 0], pos.clamp(max=max_pos))
        R = ids.size(0)
        if cache.copy[0].size(0) != R:  # beams / samples: rows b*K .. b*K+K-1 share example b's prompt
            cache.copy = tuple(t.repeat_interleave(R // t.size(0), 0) for t in cache.copy)
        return model.next_logprobs(h, ids, cache.copy), cache, mask, pos + 1
    if isinstance(cache, kvcache.KVCache):
        return kvcache.step_forward(model.gpt2, cache, x[:, 0], pos.clamp(max=max_pos)), cache, mask, pos + 1
    mask = torch.cat([mask, mask.new_ones(mask.size(0), 1)], dim=1)            # (R, L+1)
    out = model.gpt2(inputs_embeds=x, attention_mask=mask, position_ids=pos.clamp(max=max_pos)[:, None],
                     cache=cache, use_cache=True)
    return out.logits[:, -1], out.cache, mask, pos + 1


# --------------------------------------------------------------------------- logit processing
def _logprobs(logits, tokens, config: DecodeConfig, constrainer: Constrainer | None = None, eos_id: int | None = None):
    """(R, V) logits and (R, t) tokens generated so far -> processed log-probs (R, V); EOS's lowered by
    ``config.eos_penalty`` (so a scored candidate's total carries it once, at its end).

    Both penalties look at the generated reason only, not the prompt: the prompt holds the product copy,
    whose colour and type words the reason should be free to repeat.
    """
    logits = logits.float()
    p = config.repetition_penalty
    if p != 1.0 and tokens.size(1):
        seen = logits.gather(1, tokens)                                        # (R, t)
        logits = logits.scatter(1, tokens, torch.where(seen > 0, seen / p, seen * p))
    lp = logits.log_softmax(-1)
    n = config.no_repeat_ngram_size
    if n and tokens.size(1) >= n:
        grams = tokens.unfold(1, n, 1)                                         # (R, W, n)
        if n > 1:  # n-grams whose first n-1 tokens equal the last n-1 generated ones
            hit = (grams[:, :, :-1] == tokens[:, None, -(n - 1):]).all(-1)     # (R, W)
        else:
            hit = torch.ones(grams.shape[:2], dtype=torch.bool, device=tokens.device)
        rows, at = hit.nonzero(as_tuple=True)                                  # the few banned (row, token) pairs
        ban = (rows, grams[rows, at, -1]), lp.new_tensor(float("-inf"))
        # the constraint spells names from the log-probs before the bans: only then is a copy kept (a (R, V) copy
        # was 6% of an unconstrained greedy call at batch 64); lp is this function's own tensor (log_softmax)
        lp, unbanned = (lp.index_put(*ban), lp) if constrainer is not None else (lp.index_put_(*ban), None)
    else:
        unbanned = lp
    if constrainer is not None:
        lp = constrainer.mask(lp, unbanned)
    if config.eos_penalty and eos_id is not None:  # lp is this function's own tensor (log_softmax made it)
        lp[:, eos_id] -= config.eos_penalty
    return lp


def _sample(lp, config: DecodeConfig, generator):
    """Sample one token per row from processed log-probs (R, V) with temperature, top-k and top-p."""
    logits = lp / config.temperature
    if config.top_k > 0:
        kth = logits.topk(min(config.top_k, logits.size(-1)), dim=-1).values[:, -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if config.top_p < 1.0:
        sorted_logits, order = logits.sort(dim=-1, descending=True)
        probs = sorted_logits.softmax(-1)
        drop = probs.cumsum(-1) - probs > config.top_p                         # keeps at least the top token
        logits = logits.scatter(1, order, sorted_logits.masked_fill(drop, float("-inf")))
    return torch.multinomial(logits.softmax(-1), 1, generator=generator).squeeze(1)


def _norm(total: float, length: int, length_penalty: float) -> float:
    return total / max(length, 1) ** length_penalty


# --------------------------------------------------------------------------- greedy and sampling
def _greedy_or_sample(model, start, config, eos_id, generator, make_constrainer=None):
    logits, cache, mask, pos, room, max_pos = start
    n = config.num_return_sequences if config.strategy == "sample" else 1
    if n > 1:  # n independent rows per example: b*n + j
        cache.batch_repeat_interleave(n)
        logits, mask, pos, room = (t.repeat_interleave(n, 0) for t in (logits, mask, pos, room))
    R = logits.size(0)
    limit = room.clamp(max=config.max_new_tokens)                              # (R,)
    tokens = torch.zeros(R, 0, dtype=torch.long, device=logits.device)         # (R, t)
    scores = torch.zeros(R, device=logits.device)
    lengths = torch.zeros(R, dtype=torch.long, device=logits.device)           # scored tokens
    done = torch.zeros(R, dtype=torch.bool, device=logits.device)
    ended = torch.zeros(R, dtype=torch.bool, device=logits.device)             # stopped at EOS
    rows = torch.arange(R, device=logits.device)                               # each batch row's output row
    final: list = [None] * R                                                   # (ids, score) per output row
    # Greedy drops finished rows from the batch once a quarter of it is done, so later steps compute (and
    # attend over the cache of) live rows only. A row's result does not depend on its batch (the same ids; scores
    # within float rounding, ~1e-7 on the default run); sampling keeps its rows (its random stream is drawn per row).
    # Measured on the default run, 64 unseen prompts, greedy preset: 1,357 ms against 1,583 (median of 6, interleaved).
    shrink = config.strategy == "greedy" and isinstance(cache, kvcache.KVCache)
    constrainer = make_constrainer(n) if make_constrainer else None

    def retire(batch_rows):
        for r in batch_rows:
            L = int(lengths[r])
            final[int(rows[r])] = (tokens[r, :L - 1 if ended[r] else L].tolist(),
                                   _norm(float(scores[r]), L, config.length_penalty))

    for _ in range(int(limit.max())):
        lp = _logprobs(logits, tokens, config, constrainer, eos_id)
        if config.strategy == "greedy":
            best, nxt = lp.max(-1)                                             # first maximum, as argmax
        else:  # done rows, and rows the constraint left no token (scored -inf, as greedy scores them), get a
            # harmless uniform row: an all -inf row cannot be sampled
            stuck = done | torch.isneginf(lp).all(-1)
            nxt = _sample(lp.masked_fill(stuck[:, None], 0.0), config, generator)
            best = lp.gather(1, nxt[:, None]).squeeze(1)
        nxt = nxt.masked_fill(done, eos_id)
        live = ~done
        scores += best.masked_fill(done, 0.0)
        lengths += live.long()
        tokens = torch.cat([tokens, nxt[:, None]], dim=1)
        if constrainer is not None:
            constrainer.advance(nxt.tolist())
        ended |= live & (nxt == eos_id)
        done |= (nxt == eos_id) | (lengths >= limit)
        if done.all():
            break
        if shrink and 4 * int(done.sum()) >= done.numel():
            retire(done.nonzero()[:, 0].tolist())
            keep = (~done).nonzero()[:, 0]
            tokens, scores, lengths, done, ended, limit, rows, nxt, mask, pos = (
                t[keep] for t in (tokens, scores, lengths, done, ended, limit, rows, nxt, mask, pos))
            cache.keep_rows(keep)
            if constrainer is not None:
                constrainer.keep_rows(keep.tolist())
        logits, cache, mask, pos = _step(model, nxt, cache, mask, pos, max_pos)
    retire(range(rows.numel()))
    return [sorted(final[b * n:(b + 1) * n], key=lambda c: -c[1]) for b in range(R // n)]


# --------------------------------------------------------------------------- (diverse) beam search
def _beam(model, start, config, eos_id, make_constrainer=None):
    """Beam search; with strategy="diverse_beam", Vijayakumar et al.'s group beam search with Hamming diversity.

    Each of G groups keeps S = num_beams/G beams and its own S finished hypotheses; groups step in turn and a
    group's log-probs lose diversity_penalty for each time an earlier group picked that token at this step.
    Groups search on the penalised score; candidates are returned ranked by their unpenalised score.
    """
    logits, cache, mask, pos, room, max_pos = start
    B, V = logits.shape
    K = config.num_beams
    G = config.num_beam_groups if config.strategy == "diverse_beam" else 1
    S, lpen, dev = K // G, config.length_penalty, logits.device
    cache.batch_repeat_interleave(K)                                           # rows b*K + k
    logits, mask, pos = (t.repeat_interleave(K, 0) for t in (logits, mask, pos))
    limit = room.clamp(max=config.max_new_tokens).tolist()                     # (B,)
    tokens = torch.zeros(B * K, 0, dtype=torch.long, device=dev)               # (B*K, t)
    search = torch.full((B, K), float("-inf"), device=dev)
    search[:, ::S] = 0.0                                                       # one live beam per group at first
    true = torch.zeros(B, K, device=dev)
    hyps = [[[] for _ in range(G)] for _ in range(B)]                          # (search_norm, true_norm, ids)
    group_done = [[False] * G for _ in range(B)]
    base = torch.arange(B, device=dev)[:, None] * K                            # (B, 1)
    constrainer = make_constrainer(K) if make_constrainer else None

    def add(b, g, s_sum, t_sum, ids, length):
        h = hyps[b][g]
        h.append((_norm(s_sum, length, lpen), _norm(t_sum, length, lpen), ids))
        h.sort(key=lambda x: -x[0])
        del h[S:]

    for step in range(max(limit)):
        lp = _logprobs(logits, tokens, config, constrainer, eos_id).view(B, K, V)
        live = ~torch.tensor(group_done, device=dev)                           # (B, G)
        new_src = torch.empty(B, K, dtype=torch.long, device=dev)
        new_tok, new_search, new_true = torch.empty_like(new_src), torch.empty_like(search), torch.empty_like(true)
        picked = torch.zeros(B, V, device=dev)                                 # earlier groups' tokens this step
        for g in range(G):
            sl = slice(g * S, (g + 1) * S)
            lp_g = lp[:, sl]                                                   # (B, S, V)
            pen = lp_g - config.diversity_penalty * picked[:, None] if g else lp_g
            top, idx = (search[:, sl, None] + pen).view(B, S * V).topk(2 * S, dim=1)  # (B, 2S)
            src, tok = idx // V, idx % V
            tru = true[:, sl].gather(1, src) + lp_g.reshape(B, S * V).gather(1, idx)
            is_eos = tok == eos_id
            # an EOS among the S best candidates ends a hypothesis (at most S EOS in 2S, so S others remain)
            hits = (is_eos[:, :S] & live[:, g:g + 1]).nonzero().tolist()
            if hits:  # rare: copy to the host once rather than per element
                top_h, tru_h, src_h = top.tolist(), tru.tolist(), src.tolist()
                for b, j in hits:
                    if top_h[b][j] > float("-inf"):
                        ids = tokens[b * K + g * S + src_h[b][j]].tolist()
                        add(b, g, top_h[b][j], tru_h[b][j], ids, step + 1)
            running = top.masked_fill(is_eos, float("-inf"))  # EOS ends a hypothesis, never a running beam
            keep = running.topk(S, dim=1).indices                                  # (B, S)
            new_src[:, sl] = g * S + src.gather(1, keep)
            new_tok[:, sl] = tok.gather(1, keep)
            new_search[:, sl] = running.gather(1, keep)  # -inf (a dead beam) where fewer than S continuations remain
            new_true[:, sl] = tru.gather(1, keep)
            picked.scatter_add_(1, new_tok[:, sl], torch.ones(B, S, device=dev))
        beam_idx = (base + new_src).view(-1)                                   # (B*K,)
        tokens = torch.cat([tokens[beam_idx], new_tok.view(-1, 1)], dim=1)
        if constrainer is not None:
            constrainer.advance(new_tok.view(-1).tolist(), beam_idx.tolist())
        search, true = new_search, new_true
        length, search_h, true_h, tokens_h = step + 1, search.tolist(), true.tolist(), None
        for b in range(B):
            for g in range(G):
                if group_done[b][g]:
                    continue
                if length >= limit[b]:  # out of room: the running beams become (truncated) hypotheses
                    tokens_h = tokens.tolist() if tokens_h is None else tokens_h
                    for k in range(g * S, (g + 1) * S):
                        if search_h[b][k] > float("-inf"):  # a dead beam is no hypothesis
                            add(b, g, search_h[b][k], true_h[b][k], tokens_h[b * K + k], length)
                    group_done[b][g] = True
                elif len(hyps[b][g]) == S:
                    # scores only fall, so the best running sum bounds every later hypothesis (length >= length+1,
                    # at most limit); a group whose worst kept hypothesis beats that bound is finished
                    best = max(search_h[b][g * S:(g + 1) * S])
                    bound = _norm(best, limit[b] if lpen > 0 else length + 1, lpen)
                    group_done[b][g] = hyps[b][g][-1][0] >= bound
        if all(all(row) for row in group_done):
            break
        cache.reorder_cache(beam_idx)
        mask, pos = mask[beam_idx], pos[beam_idx]
        logits, cache, mask, pos = _step(model, new_tok.view(-1), cache, mask, pos, max_pos)

    out = []
    for b in range(B):
        best = {}
        for h in hyps[b]:
            for _, t_norm, ids in h:  # the same text from two groups counts once
                if tuple(ids) not in best or best[tuple(ids)] < t_norm:
                    best[tuple(ids)] = t_norm
        ranked = sorted(best.items(), key=lambda c: -c[1])[:min(config.num_return_sequences, K)]
        out.append([(list(ids), score) for ids, score in ranked])
    return out


# --------------------------------------------------------------------------- public API
def _generator(config: DecodeConfig, device) -> torch.Generator:
    generator = torch.Generator(device=device)
    if config.seed is None:
        generator.seed()
    else:
        generator.manual_seed(config.seed)
    return generator


@torch.no_grad()
def decode(model, batch: dict, config: DecodeConfig, eos_id: int,
           generator: torch.Generator | None = None, constraints: list[Constraint | None] | None = None,
           tokenizer=None) -> list[list[tuple[list[int], float]]]:
    """Decode a left-padded prompt batch (collate(..., padding_side="left") plus photo_embedding (B, D) and
    has_photo (B,)). -> per example, candidates (token ids without EOS, score) ranked best first.

    greedy: one candidate; sample: num_return_sequences samples; beam / diverse_beam: up to
    min(num_return_sequences, num_beams) distinct hypotheses. Rows stop at EOS or after max_new_tokens
    (or when GPT-2's n_positions is reached); a candidate that did not stop at EOS is truncated.
    constraints: one ``constraints.Constraint`` (or None) per example, applied at every step of every
    strategy; ``tokenizer`` is then needed (to read citation phrases).
    """
    was_training = model.training
    model.eval()
    try:
        device = next(model.parameters()).device
        batch = {k: v.to(device) if torch.is_tensor(v) else v for k, v in batch.items()}
        # longest prompt first, so the cache's parts (kvcache.part_bounds) hold little padding; sampling keeps the
        # given order (its random stream is drawn row by row)
        B = batch["attention_mask"].size(0)
        order = batch["attention_mask"].sum(1).argsort(descending=True, stable=True).tolist()
        if config.strategy == "sample" or order == list(range(B)):
            order = None
        else:
            batch = {k: v[order] if torch.is_tensor(v) and v.dim() and v.size(0) == B else v for k, v in batch.items()}
            constraints = None if constraints is None else [constraints[i] for i in order]
        if config.strategy == "sample" and generator is None:
            generator = _generator(config, device)
        start = _start(model, batch, config.max_new_tokens)
        make = None
        if constraints is not None and any(c is not None for c in constraints):
            if tokenizer is None:
                raise ValueError("decode with constraints needs the tokenizer")
            V = start[0].size(-1)
            make = lambda per_example: Constrainer(constraints, per_example, V, tokenizer, device, eos_id)  # noqa: E731
        if config.strategy in ("beam", "diverse_beam"):
            out = _beam(model, start, config, eos_id, make)
        else:
            out = _greedy_or_sample(model, start, config, eos_id, generator, make)
        if order is None:
            return out
        back = [None] * B
        for j, i in enumerate(order):
            back[i] = out[j]
        return back
    finally:
        model.train(was_training)


def generate_reasons(model, tokenizer, examples: list[dict], photo_embeddings: torch.Tensor | None,
                     has_photo: torch.Tensor | None, config: DecodeConfig, batch_size: int = 32,
                     max_prompt_tokens=DEFAULT_MAX_PROMPT_TOKENS, progress: bool = True,
                     constraints: list[Constraint | None] | None = None) -> list[list[str]]:
    """Reasons for examples (dicts with user_profile / behaviour / product), ranked best first per example.

    photo_embeddings (N, D) and has_photo (N,) are row-aligned with examples (None with use_photo=False).
    Examples are decoded in order of prompt length, so batches carry little padding; output keeps input order.
    constraints: row-aligned with examples (see ``decode``); the shown-reason path (``shown.py``) builds them.
    """
    eos_id = token_id(tokenizer, EOS)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else eos_id
    encoded = [encode_example(tokenizer, ex, max_prompt_tokens=max_prompt_tokens, with_reason=False)
               for ex in examples]
    order = sorted(range(len(encoded)), key=lambda i: -len(encoded[i]["input_ids"]))
    device = next(model.parameters()).device
    # one random stream across batches, so batches do not repeat each other's noise
    generator = _generator(config, device) if config.strategy == "sample" else None
    results: list[list[str] | None] = [None] * len(examples)
    n_tokens, t0 = 0, time.perf_counter()
    with tqdm(total=len(examples), desc=f"generate ({config.strategy})", disable=not progress) as bar:
        for i in range(0, len(order), batch_size):
            idx = order[i:i + batch_size]
            batch = collate([encoded[j] for j in idx], pad_id=pad_id, padding_side="left")
            batch.pop("labels")
            rows = torch.tensor(idx)
            batch["photo_embedding"] = None if photo_embeddings is None else photo_embeddings[rows]
            batch["has_photo"] = None if has_photo is None else has_photo[rows]
            cons = None if constraints is None else [constraints[j] for j in idx]
            for j, cands in zip(idx, decode(model, batch, config, eos_id, generator, cons, tokenizer), strict=True):
                results[j] = [tokenizer.decode(ids, skip_special_tokens=True).strip() for ids, _ in cands]
                n_tokens += sum(len(ids) for ids, _ in cands)
            bar.update(len(idx))
            bar.set_postfix(tok_s=f"{n_tokens / (time.perf_counter() - t0):.0f}")
    log.info("generated %d reasons (%s): %d tokens, %.0f tokens/s", len(examples), config.strategy, n_tokens,
             n_tokens / max(time.perf_counter() - t0, 1e-9))
    return results
