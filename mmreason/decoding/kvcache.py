"""GPT-2 inference with a KV cache whose prompt part is shared by all beams of an example.

Why not Hugging Face's forward with its ``DynamicCache``: at the sizes we decode (a ~2M-parameter model,
64 prompts of ~180 tokens, 4 beams) a step costs ~17 ms there and almost none of it is arithmetic: mask
building, per-layer cache concatenation, and, for beam search, copying the whole cache (prompt included,
~200 MB per step at batch 64 x 4 beams) to reorder beams. Here:

- the cache is preallocated, (B*K, H, L + max_new, D) per layer, and written in place; the prompt's
  keys/values are the same in every beam of an example and stay put, so reordering beams copies the
  generated positions only;
- one decoding step is, per layer, the block's own modules (LoRA layers included) and one fused
  ``scaled_dot_product_attention`` over the cache, so the weights are Hugging Face's and the parity test
  pins the logits to Hugging Face's forward.

- a batch whose prompts differ in length is cached in parts (consecutive examples, ``parts``): each part keeps
  its prompt at its own longest length, so a step reads and attends over little padding (the 64 unseen test
  prompts of the bench are 133 to 298 tokens long; one part wasted 18% of every step's cache reads and of the
  prompt pass). ``generate.decode`` orders a batch longest first, so the parts are tight.

``KVCache`` has the two methods the decoding loops call on a cache (``batch_repeat_interleave``,
``reorder_cache``), so ``generate.py``'s loops are the same whichever cache they get.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from transformers.pytorch_utils import Conv1D


def base_gpt2(gpt2):
    """The plain ``GPT2LMHeadModel`` inside a PEFT wrapper (its LoRA layers stay in place), or ``gpt2``."""
    return gpt2.get_base_model() if hasattr(gpt2, "get_base_model") else gpt2


def supports(gpt2) -> bool:
    """True for the GPT-2 variants this file reproduces exactly (the defaults of GPT2Config)."""
    c = base_gpt2(gpt2).config
    return (getattr(c, "model_type", "") == "gpt2" and c.scale_attn_weights and not c.scale_attn_by_inverse_layer_idx
            and not c.reorder_and_upcast_attn and not getattr(c, "add_cross_attention", False))


class _Part:
    """Consecutive examples start .. start+B-1 of a batch, their prompts cached at the part's longest length Lp."""

    def __init__(self, start: int, prompt_k: list, prompt_v: list, prompt_mask: torch.Tensor):
        self.start = start
        self.pk, self.pv = prompt_k, prompt_v                                  # L x (B, H, Lp, D)
        self.prompt_mask = prompt_mask.bool()                                  # (B, Lp)
        self.B, self.Lp = prompt_mask.shape
        self.k = self.v = self.mask = None                                     # L x (B*K, H, Lp+max_new, D)

    def keep(self, idx: torch.Tensor) -> None:
        if self.k is None:
            self.pk = [t.index_select(0, idx) for t in self.pk]
            self.pv = [t.index_select(0, idx) for t in self.pv]
        else:
            self.k = [t.index_select(0, idx) for t in self.k]
            self.v = [t.index_select(0, idx) for t in self.v]
            self.mask = self.mask.index_select(0, idx)
        self.prompt_mask = self.prompt_mask.index_select(0, idx)
        self.B = idx.numel()

    def alloc(self, K: int, max_new: int) -> None:
        R, Lp = self.B * K, self.Lp
        self.k, self.v = [], []
        for pk, pv in zip(self.pk, self.pv):
            k = pk.new_empty(R, pk.size(1), Lp + max_new, pk.size(3))
            v = torch.empty_like(k)
            k[:, :, :Lp] = pk.repeat_interleave(K, 0)
            v[:, :, :Lp] = pv.repeat_interleave(K, 0)
            self.k.append(k), self.v.append(v)
        self.pk = self.pv = None
        mask = self.prompt_mask.new_ones(R, Lp + max_new)
        mask[:, :Lp] = self.prompt_mask.repeat_interleave(K, 0)               # padding never attended
        # additive (0 / -inf): SDPA's CPU kernel adds a float mask as is, a boolean one it converts every call
        bias = torch.zeros(mask.shape, dtype=self.k[0].dtype, device=mask.device).masked_fill(~mask, float("-inf"))
        self.mask = bias[:, None, None, :]                                     # (R, 1, 1, Lp+max_new)


class KVCache:
    """Keys/values of the prompt and the generated tokens, one row per beam (or sample), preallocated, in parts
    of consecutive examples (``_Part``).

    The prompt's keys/values are copied into every beam's row once, at the first step; beams never move
    across examples, so reordering beams copies the generated positions only.
    """

    def __init__(self, parts: list[_Part], max_new: int):
        self.parts = parts
        self.D = parts[0].pk[0].size(3)                                        # head width
        self.max_new = max_new
        self.K = 1                                                             # rows per example
        self.t = 0                                                             # generated tokens cached
        self.blocks = None  # step_hidden's direct path (_plain_blocks), set at the first step
        self.copy = None  # the copy head's prompt state (ReasonModel.copy_state), set and expanded by generate.py

    def batch_repeat_interleave(self, n: int) -> None:
        """Each example gets n rows (beams or samples): rows b*n .. b*n+n-1. Only before the first step."""
        if self.t:
            raise RuntimeError("batch_repeat_interleave after decoding started")
        self.K *= n

    def reorder_cache(self, beam_idx: torch.Tensor) -> None:
        """Row r continues from row beam_idx[r]; beams never move across examples (nor parts)."""
        if self.parts[0].k is None or not self.t:
            return
        for p in self.parts:
            r0 = p.start * self.K
            idx = beam_idx[r0:r0 + p.B * self.K] - r0
            gen = slice(p.Lp, p.Lp + self.t)
            for layer in range(len(p.k)):
                p.k[layer][:, :, gen] = p.k[layer][idx, :, gen]
                p.v[layer][:, :, gen] = p.v[layer][idx, :, gen]

    def keep_rows(self, idx: torch.Tensor) -> None:
        """Drop every row but idx (R',), ascending: finished rows leave greedy decoding's batch, so later steps
        attend over the live rows' keys only. One row per example (K == 1) only."""
        if self.K != 1:
            raise RuntimeError("keep_rows needs one row per example (greedy decoding)")
        parts, start = [], 0
        for p in self.parts:
            local = idx[(idx >= p.start) & (idx < p.start + p.B)] - p.start
            if local.numel():
                if local.numel() < p.B:  # a part that keeps every row is not copied
                    p.keep(local)
                p.start, start = start, start + p.B
                parts.append(p)
        self.parts = parts
        if self.copy is not None:
            self.copy = tuple(t.index_select(0, idx) for t in self.copy)

    def _alloc(self) -> None:
        for p in self.parts:
            p.alloc(self.K, self.max_new)


def part_bounds(lengths: torch.Tensor, min_rows: int = 8, most: int = 4) -> list[tuple[int, int]]:
    """Consecutive row ranges [(start, end)] for a batch's prompt lengths (B,): up to ``most`` parts of equal
    size and at least ``min_rows`` rows each (a part costs a few calls per layer and step). Ordered longest
    first (as ``generate.decode`` orders a batch), each part's length is close to its rows' own."""
    B = lengths.numel()
    n = max(1, min(most, B // min_rows))
    cuts = [round(i * B / n) for i in range(n + 1)]
    return list(zip(cuts[:-1], cuts[1:]))


def _heads(x: torch.Tensor, H: int) -> torch.Tensor:
    B, T, C = x.shape
    return x.view(B, T, H, C // H).transpose(1, 2)                            # (B, H, T, D)


@torch.no_grad()
def prompt_forward(gpt2, inputs_embeds: torch.Tensor, attention_mask: torch.Tensor, position_ids: torch.Tensor,
                   max_new: int) -> tuple[torch.Tensor, KVCache]:
    """Run the padded prompt once. -> logits of each row's last real position (B, V) and the cache."""
    h, cache, _ = prompt_hidden(gpt2, inputs_embeds, attention_mask, position_ids, max_new)
    return base_gpt2(gpt2).lm_head(h), cache


@torch.no_grad()
def prompt_hidden(gpt2, inputs_embeds: torch.Tensor, attention_mask: torch.Tensor, position_ids: torch.Tensor,
                  max_new: int, every_position: bool = False) -> tuple[torch.Tensor, KVCache, torch.Tensor | None]:
    """Run the padded prompt once. -> final hidden state (after ln_f) of each row's last real position (B, C),
    the cache, and with every_position=True that of every position (B, T, C) in the input's layout (for the
    copy head's sources; padding positions hold garbage), else None.

    The rows come left-padded (with the photo prefix before the padding); each row's real tokens are first
    gathered to its start, so the padding trails every real token and the causal mask alone is exact for them:
    SDPA's ``is_causal`` path skips the upper triangle and builds no (B, T, T) mask. The cache keeps this
    layout, its prompt mask hides the trailing padding, and generated tokens follow at Lp, Lp+1, ...
    """
    hf = base_gpt2(gpt2)
    tr = hf.transformer
    keep = attention_mask.bool()                                               # (B, T)
    B, T = keep.shape
    order = (~keep).to(torch.uint8).argsort(dim=1, stable=True)                # real positions first, in order
    x = (inputs_embeds + tr.wpe(position_ids)).gather(1, order[..., None].expand(-1, -1, inputs_embeds.size(-1)))
    keep = keep.gather(1, order)                                               # (B, T): ones, then zeros
    lengths = keep.sum(1)                                                      # (B,)
    parts, last_h, every = [], [], x.new_zeros(x.shape) if every_position else None
    for s, e in part_bounds(lengths):
        Tp = int(lengths[s:e].max())                                           # the part's trailing padding cut
        h, h_all, pk, pv = _prompt_blocks(hf, x[s:e, :Tp], keep[s:e, :Tp], every_position)
        parts.append(_Part(s, pk, pv, keep[s:e, :Tp]))
        if every_position:
            every[s:e, :Tp] = h_all
        last_h.append(h)
    cache = KVCache(parts, max_new)
    h = last_h[0] if len(last_h) == 1 else torch.cat(last_h)                  # (B, C)
    if not every_position:
        return h, cache, None
    every = torch.empty_like(every).scatter_(1, order[..., None].expand_as(every), every)  # the input's layout
    return h, cache, every


def _prompt_blocks(hf, x: torch.Tensor, keep: torch.Tensor, every_position: bool):
    """The blocks over gathered rows x (B, T, C) whose real tokens come first (keep (B, T)). -> final hidden state
    after ln_f of each row's last real position (B, C), that of every position (B, T, C) with every_position (else
    None), and keys and values per layer, L x (B, H, T, D)."""
    tr, H = hf.transformer, hf.config.n_head
    B, T = keep.shape
    last = keep.sum(1) - 1                                                     # (B,) each row's last real token
    rows = torch.arange(B, device=x.device)
    pk, pv = [], []
    for i, blk in enumerate(tr.h):
        q, k, v = blk.attn.c_attn(blk.ln_1(x)).split(hf.config.n_embd, dim=2)
        q, k, v = _heads(q, H), _heads(k, H), _heads(v, H)                     # (B, H, T, D)
        pk.append(k), pv.append(v)
        if i < len(tr.h) - 1 or every_position:
            y = F.scaled_dot_product_attention(q, k, v, is_causal=True)        # (B, H, T, D)
            x = x + blk.attn.c_proj(y.transpose(1, 2).reshape(B, T, -1))
            x = x + blk.mlp(blk.ln_2(x))
        else:  # the last block only has to give the last real position (the others' keys/values are cached)
            y = F.scaled_dot_product_attention(q[rows, :, last].unsqueeze(2), k, v,
                                               attn_mask=keep[:, None, None, :])  # (B, H, 1, D)
            x = x[rows, last] + blk.attn.c_proj(y.reshape(B, -1))             # (B, C)
            x = x + blk.mlp(blk.ln_2(x))
    h = tr.ln_f(x)
    return (h[rows, last], h, pk, pv) if every_position else (h, None, pk, pv)


@torch.no_grad()
def step_forward(gpt2, cache: KVCache, inputs_embeds: torch.Tensor, position_ids: torch.Tensor) -> torch.Tensor:
    """Feed one token per row: inputs_embeds (R, C), position_ids (R,), R = B*K. -> logits (R, V)."""
    return base_gpt2(gpt2).lm_head(step_hidden(gpt2, cache, inputs_embeds, position_ids))


def _plain_blocks(hf) -> list | None:
    """Per block, the tensors and callables of one decoding step, read once per decode call: calling them
    directly skips ~20 module calls per block and step (most of a step's time at batch 1) and gives the same
    numbers (Conv1D is ``addmm(bias, x, weight)``, LayerNorm is ``F.layer_norm``, dropout is off in eval).
    None where the blocks are not plain GPT-2 modules (a PEFT wrapper's LoRA layers) or in training mode."""
    if hf.training or any(not isinstance(m, (torch.nn.LayerNorm, Conv1D)) for blk in hf.transformer.h
                          for m in (blk.ln_1, blk.ln_2, blk.attn.c_attn, blk.attn.c_proj, blk.mlp.c_fc, blk.mlp.c_proj)):
        return None
    return [((blk.ln_1.weight, blk.ln_1.bias, blk.ln_1.eps), (blk.attn.c_attn.bias, blk.attn.c_attn.weight),
             (blk.attn.c_proj.bias, blk.attn.c_proj.weight), (blk.ln_2.weight, blk.ln_2.bias, blk.ln_2.eps),
             (blk.mlp.c_fc.bias, blk.mlp.c_fc.weight), blk.mlp.act, (blk.mlp.c_proj.bias, blk.mlp.c_proj.weight))
            for blk in hf.transformer.h]


@torch.no_grad()
def step_hidden(gpt2, cache: KVCache, inputs_embeds: torch.Tensor, position_ids: torch.Tensor) -> torch.Tensor:
    """``step_forward`` up to the final hidden state (R, C), after ln_f."""
    hf = base_gpt2(gpt2)
    tr, H = hf.transformer, hf.config.n_head
    if cache.t >= cache.max_new:
        raise RuntimeError(f"KV cache holds {cache.max_new} generated tokens; decoding asked for more")
    if cache.parts[0].k is None:
        cache._alloc()
        cache.blocks = _plain_blocks(hf)
    D, K = cache.D, cache.K
    C = H * D
    x = inputs_embeds + tr.wpe(position_ids)                                   # (R, C)
    for i, blk in enumerate(tr.h):
        if cache.blocks is not None:
            (w1, b1, e1), (ba, wa), (bp, wp), (w2, b2, e2), (bf, wf), act, (bo, wo) = cache.blocks[i]
            q, k, v = torch.addmm(ba, F.layer_norm(x, (C,), w1, b1, e1), wa).split(C, dim=1)  # (R, C) each
        else:
            q, k, v = blk.attn.c_attn(blk.ln_1(x)).split(C, dim=1)
        ys = []
        for p in cache.parts:  # each part attends over its own prompt length and the generated tokens
            r0, r1 = p.start * K, (p.start + p.B) * K
            n = p.Lp + cache.t + 1                                             # positions attended
            p.k[i][:, :, n - 1] = k[r0:r1].view(-1, H, D)
            p.v[i][:, :, n - 1] = v[r0:r1].view(-1, H, D)
            ys.append(F.scaled_dot_product_attention(q[r0:r1].view(-1, H, 1, D), p.k[i][:, :, :n], p.v[i][:, :, :n],
                                                     attn_mask=p.mask[..., :n]).view(-1, C))  # (r1 - r0, C)
        y = ys[0] if len(ys) == 1 else torch.cat(ys)                          # (R, C)
        if cache.blocks is not None:
            x = x + torch.addmm(bp, y, wp)
            x = x + torch.addmm(bo, act(torch.addmm(bf, F.layer_norm(x, (C,), w2, b2, e2), wf)), wo)
        else:
            x = x + blk.attn.c_proj(y)
            x = x + blk.mlp(blk.ln_2(x))
    cache.t += 1
    return tr.ln_f(x)                                                          # (R, C)
