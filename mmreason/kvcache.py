"""GPT-2 inference with a KV cache whose prompt part is shared by all beams of an example.

Why not Hugging Face's forward with its ``DynamicCache``: at the sizes we decode (a ~2M-parameter model,
64 prompts of ~180 tokens, 4 beams) a step costs ~17 ms there and almost none of it is arithmetic: mask
building, per-layer cache concatenation, and, for beam search, copying the whole cache (prompt included,
~200 MB per step at batch 64 x 4 beams) to reorder beams. Here:

- the prompt's keys/values are stored once per example, (B, H, L, D); beams and samples of one example
  read the same rows, so reordering beams never touches them;
- the generated part is preallocated, (B*K, H, max_new, D), written in place; reordering copies its
  first t positions only;
- one decoding step is a few matmuls per layer over the same GPT-2 modules (LoRA layers included), so
  the weights are Hugging Face's and the parity test pins the logits to Hugging Face's forward.

``KVCache`` has the two methods the decoding loops call on a cache (``batch_repeat_interleave``,
``reorder_cache``), so ``generate.py``'s loops are the same whichever cache they get.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F


def base_gpt2(gpt2):
    """The plain ``GPT2LMHeadModel`` inside a PEFT wrapper (its LoRA layers stay in place), or ``gpt2``."""
    return gpt2.get_base_model() if hasattr(gpt2, "get_base_model") else gpt2


def supports(gpt2) -> bool:
    """True for the GPT-2 variants this file reproduces exactly (the defaults of GPT2Config)."""
    c = base_gpt2(gpt2).config
    return (getattr(c, "model_type", "") == "gpt2" and c.scale_attn_weights and not c.scale_attn_by_inverse_layer_idx
            and not c.reorder_and_upcast_attn and not getattr(c, "add_cross_attention", False))


class KVCache:
    """Keys/values of the prompt (one row per example) and of the generated tokens (one row per beam)."""

    def __init__(self, prompt_k: list, prompt_v: list, prompt_mask: torch.Tensor, max_new: int):
        self.pk, self.pv = prompt_k, prompt_v                                  # L x (B, H, Lp, D)
        self.prompt_bias = torch.zeros(prompt_mask.shape, dtype=prompt_k[0].dtype, device=prompt_mask.device)
        self.prompt_bias.masked_fill_(~prompt_mask.bool(), float("-inf"))      # (B, Lp): padding never attended
        B, H, _, D = prompt_k[0].shape
        self.B, self.H, self.D, self.max_new = B, H, D, max_new
        self.K = 1                                                             # rows per example
        self.t = 0                                                             # generated tokens cached
        self.gk = self.gv = None                                               # L x (B*K, H, max_new, D)

    def batch_repeat_interleave(self, n: int) -> None:
        """Each example gets n rows (beams or samples): rows b*n .. b*n+n-1. Only before the first step."""
        if self.t:
            raise RuntimeError("batch_repeat_interleave after decoding started")
        self.K *= n

    def reorder_cache(self, beam_idx: torch.Tensor) -> None:
        """Row r continues from row beam_idx[r]; beams never move across examples."""
        if self.gk is None or not self.t:
            return
        for layer in range(len(self.gk)):
            self.gk[layer][:, :, :self.t] = self.gk[layer][beam_idx, :, :self.t]
            self.gv[layer][:, :, :self.t] = self.gv[layer][beam_idx, :, :self.t]

    def _alloc(self, like: torch.Tensor, n_layer: int) -> None:
        shape = (self.B * self.K, self.H, self.max_new, self.D)
        self.gk = [like.new_zeros(shape) for _ in range(n_layer)]
        self.gv = [like.new_zeros(shape) for _ in range(n_layer)]


def _heads(x: torch.Tensor, H: int) -> torch.Tensor:
    B, T, C = x.shape
    return x.view(B, T, H, C // H).transpose(1, 2)                            # (B, H, T, D)


@torch.no_grad()
def prompt_forward(gpt2, inputs_embeds: torch.Tensor, attention_mask: torch.Tensor, position_ids: torch.Tensor,
                   max_new: int) -> tuple[torch.Tensor, KVCache]:
    """Run the (left-padded) prompt once. -> logits of the last position (B, V) and the cache."""
    hf = base_gpt2(gpt2)
    tr, H = hf.transformer, hf.config.n_head
    x = inputs_embeds + tr.wpe(position_ids)                                   # (B, T, C)
    B, T, _ = x.shape
    keep = attention_mask.bool()
    causal = torch.ones(T, T, dtype=torch.bool, device=x.device).tril()
    allowed = causal[None] & keep[:, None, :]                                  # (B, T, T)
    # a padding query row with nothing allowed would give NaN; let it see itself (its output is never used)
    allowed = allowed | torch.eye(T, dtype=torch.bool, device=x.device)[None]
    pk, pv = [], []
    for blk in tr.h:
        q, k, v = blk.attn.c_attn(blk.ln_1(x)).split(hf.config.n_embd, dim=2)
        q, k, v = _heads(q, H), _heads(k, H), _heads(v, H)                     # (B, H, T, D)
        pk.append(k), pv.append(v)
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=allowed[:, None])  # (B, H, T, D)
        x = x + blk.attn.c_proj(y.transpose(1, 2).reshape(B, T, -1))
        x = x + blk.mlp(blk.ln_2(x))
    h = tr.ln_f(x[:, -1])                                                      # (B, C)
    return hf.lm_head(h), KVCache(pk, pv, attention_mask, max_new)


@torch.no_grad()
def step_forward(gpt2, cache: KVCache, inputs_embeds: torch.Tensor, position_ids: torch.Tensor) -> torch.Tensor:
    """Feed one token per row: inputs_embeds (R, C), position_ids (R,), R = B*K. -> logits (R, V)."""
    hf = base_gpt2(gpt2)
    tr, H = hf.transformer, hf.config.n_head
    if cache.t >= cache.max_new:
        raise RuntimeError(f"KV cache holds {cache.max_new} generated tokens; decoding asked for more")
    if cache.gk is None:
        cache._alloc(inputs_embeds, len(tr.h))
    B, K, D, t = cache.B, cache.K, cache.D, cache.t
    x = inputs_embeds + tr.wpe(position_ids)                                   # (R, C)
    scale = 1.0 / math.sqrt(D)
    for i, blk in enumerate(tr.h):
        q, k, v = blk.attn.c_attn(blk.ln_1(x)).split(hf.config.n_embd, dim=1)  # (R, C) each
        q, k, v = (z.view(B * K, H, D) for z in (q, k, v))
        cache.gk[i][:, :, t] = k
        cache.gv[i][:, :, t] = v
        qe = q.view(B, K, H, D)
        s_prompt = torch.einsum("bkhd,bhld->bkhl", qe, cache.pk[i]) * scale   # (B, K, H, Lp)
        s_prompt = s_prompt + cache.prompt_bias[:, None, None, :]
        gk = cache.gk[i][:, :, :t + 1]                                         # (R, H, t+1, D)
        s_gen = torch.einsum("rhd,rhtd->rht", q, gk).view(B, K, H, t + 1) * scale
        w = torch.cat([s_prompt, s_gen], dim=-1).softmax(-1)                   # (B, K, H, Lp+t+1)
        Lp = s_prompt.size(-1)
        y = torch.einsum("bkhl,bhld->bkhd", w[..., :Lp], cache.pv[i])          # (B, K, H, D)
        y = y.reshape(B * K, H, D) + torch.einsum("rht,rhtd->rhd", w[..., Lp:].reshape(B * K, H, t + 1),
                                                  cache.gv[i][:, :, :t + 1])
        x = x + blk.attn.c_proj(y.reshape(B * K, H * D))
        x = x + blk.mlp(blk.ln_2(x))
    cache.t += 1
    return hf.lm_head(tr.ln_f(x))                                              # (R, V)
