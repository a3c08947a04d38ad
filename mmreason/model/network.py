"""The pure model: CLIP photo embedding -> mapper -> k prefix embeddings, then the tokenised
user profile / behaviour / product prompt and the reason, all fed to GPT-2 through `inputs_embeds`.

A plain nn.Module: the Lightning wrapper, the decoding loop and notebooks all use it as is.
Sequence layout (one row):  [photo x k | <|user|> ... <|behaviour|> ... <|product|> ... <|reason|> | reason ... eos]
Every position also gets a learned segment embedding (zero-initialised, so with no prefix this is
exactly GPT-2; the parity test pins that).
"""
from __future__ import annotations

import copy
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F
from transformers import GPT2Config, GPT2LMHeadModel
from transformers.integrations.sdpa_attention import sdpa_attention_forward
from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, AttentionMaskInterface
from transformers.modeling_utils import AttentionInterface

from mmreason import paths

# segment ids; collate.py writes them, the model embeds them
SEG_PHOTO, SEG_USER, SEG_BEHAVIOUR, SEG_PRODUCT, SEG_REASON = range(5)


@dataclass
class ModelConfig:
    clip_dim: int = 128             # width of the (precomputed) CLIP photo embedding
    prefix_len: int = 4             # k: how many GPT-2 embeddings one photo becomes
    mapper: str = "mlp"             # "mlp" | "transformer" (the two ClipCap mappers)
    mapper_layers: int = 2          # depth of the transformer mapper
    use_photo: bool = True          # False: text-only ablation, no photo prefix at all
    # GPT-2 from scratch (ignored when pretrained_gpt2 is set, except vocab_size)
    n_layer: int = 2
    n_head: int = 2
    n_embd: int = 64
    n_positions: int = 256
    vocab_size: int | None = None   # len(tokenizer); with pretrained_gpt2, None keeps the checkpoint's
    dropout: float = 0.1            # embeddings and residual branches
    # Dropout on attention probabilities makes SDPA fall back to its unfused path on CPU (the (B, H, T, T)
    # mask alone was 11% of a step); 0 measured 1.5x the training tokens/s (results/bench/cpu.md).
    attn_dropout: float = 0.0
    # GPT-2's "gelu_new" in one kernel instead of six elementwise ops: the same function (tanh approximation)
    activation: str = "gelu_pytorch_tanh"
    pretrained_gpt2: str | None = None  # hub name or local directory (save_pretrained); None = from scratch
    train_mode: str = "full"        # "full" | "frozen" (ClipCap: only mapper/segments train) | "lora"
    lora_r: int = 8
    lora_alpha: int = 16
    lora_dropout: float = 0.05
    n_segments: int = 5
    # A pointer over the prompt's tokens (See et al. 2017's pointer-generator; ``CopyHead``): each reason token
    # is generated from the vocabulary or copied from the prompt (the retrieved copy, the product, the evidence)
    copy_head: bool = False
    copy_dim: int = 64


class MLPMapper(nn.Module):
    """ClipCap's MLP: clip_dim -> k*C/2 -> k*C with a Tanh in between."""

    def __init__(self, clip_dim: int, n_embd: int, k: int):
        super().__init__()
        self.k, self.n_embd = k, n_embd
        hidden = k * n_embd // 2
        self.net = nn.Sequential(nn.Linear(clip_dim, hidden), nn.Tanh(), nn.Linear(hidden, k * n_embd))

    def forward(self, x):  # x: (B, clip_dim)
        return self.net(x).view(x.size(0), self.k, self.n_embd)  # (B, k, C)


class TransformerMapper(nn.Module):
    """ClipCap's transformer mapper: the CLIP vector becomes k tokens, k learned queries are
    appended, a small encoder mixes them and the query outputs are the prefix."""

    def __init__(self, clip_dim: int, n_embd: int, k: int, n_layers: int, n_head: int):
        super().__init__()
        self.k, self.n_embd = k, n_embd
        self.project = nn.Linear(clip_dim, k * n_embd)
        self.queries = nn.Parameter(torch.randn(k, n_embd) * 0.02)
        layer = nn.TransformerEncoderLayer(n_embd, n_head, dim_feedforward=4 * n_embd, dropout=0.0,
                                           activation="gelu", batch_first=True, norm_first=True)
        self.encoder = nn.TransformerEncoder(layer, n_layers, enable_nested_tensor=False)

    def forward(self, x):  # x: (B, clip_dim)
        B = x.size(0)
        clip_tokens = self.project(x).view(B, self.k, self.n_embd)          # (B, k, C)
        queries = self.queries.unsqueeze(0).expand(B, -1, -1)               # (B, k, C)
        out = self.encoder(torch.cat([clip_tokens, queries], dim=1))        # (B, 2k, C)
        return out[:, self.k:]                                              # (B, k, C)


def sdpa_fp32_on_cpu(module, query, key, value, attention_mask, **kwargs):
    """Hugging Face's SDPA attention, run in fp32 when bf16 autocast reaches it on a CPU.

    Under CPU bf16 autocast every matmul gains from bf16 (AMX / AVX512-BF16), but SDPA's CPU flash kernel is
    4x slower in bf16 than in fp32 in its backward (results/bench/cpu.md); attention holds no weights, so
    upcasting its inputs costs a copy and keeps the softmax in fp32. Elsewhere (CUDA, fp32) it is HF's SDPA.
    """
    if query.device.type == "cpu" and query.dtype != torch.float32:
        with torch.autocast("cpu", enabled=False):
            out, weights = sdpa_attention_forward(module, query.float(), key.float(), value.float(),
                                                  attention_mask, **kwargs)
        return out.to(query.dtype), weights
    return sdpa_attention_forward(module, query, key, value, attention_mask, **kwargs)


ATTENTION = "mmreason_sdpa"
AttentionInterface.register(ATTENTION, sdpa_fp32_on_cpu)
AttentionMaskInterface.register(ATTENTION, ALL_MASK_ATTENTION_FUNCTIONS["sdpa"])  # HF builds SDPA's masks for it


def causal_mask_suffices(attention_mask: torch.Tensor) -> bool:
    """True when every row's padding is on its right (training batches): no real token can attend to a later
    position under the causal mask, so passing no mask at all gives the real tokens the same outputs and lets
    SDPA take its is_causal path (no (B, 1, T, T) mask built, the upper triangle skipped; 1.2x training
    tokens/s). Only the padded positions' own outputs change, and nothing reads them (labels -100)."""
    return bool((attention_mask[:, 1:] <= attention_mask[:, :-1]).all())


class CopyHead(nn.Module):
    """A pointer over the prompt's tokens, mixed with the LM head by a learned gate (pointer-generator).

    p(y) = (1 - g) p_vocab(y) + g sum_{j: x_j = y} a_j, with a = softmax over the prompt's positions j of
    q_t . k_j / sqrt(d) + beta cos(e(x_t), e(x_{j-1})).
    The cosine term is an induction head given, not learnt: position t, whose current token x_t equals the
    token before source position j, points at x_j, i.e. "continue copying where this token was copied from".
    A ~2M-parameter model trained for minutes does not grow such a head itself (Olsson et al. 2022); with it,
    copying a retrieved passage takes a few hundred steps. q and k read the final hidden states (plus the
    current / previous token's embedding), so where to start and stop copying is learnt.
    """

    def __init__(self, n_embd: int, dim: int):
        super().__init__()
        self.query = nn.Linear(2 * n_embd, dim)
        self.key = nn.Linear(2 * n_embd, dim)
        self.gate = nn.Linear(n_embd, 1)
        self.beta = nn.Parameter(torch.tensor(4.0))  # weight of the token-match (induction) term

    def sources(self, h, e, src_mask):
        """Keys of every position: h (B, L, C) final hidden states, e (B, L, C) token embeddings, src_mask (B, L)
        the positions that may be copied. -> (keys (B, L, d), normalised previous-token embeddings (B, L, C),
        additive mask (B, L): 0 where copyable, -inf elsewhere)."""
        prev = F.pad(e[:, :-1], (0, 0, 1, 0))                                     # (B, L, C) e(x_{j-1})
        bias = torch.zeros(src_mask.shape, dtype=h.dtype, device=h.device).masked_fill(~src_mask, float("-inf"))
        return self.key(torch.cat([h, prev], -1)), F.normalize(prev, dim=-1), bias

    def attend(self, h, e, keys, prev_n, bias):
        """Queries h (..., T, C) with current-token embeddings e (..., T, C) against one row's sources:
        keys (..., L, d), prev_n (..., L, C), bias (..., L). -> (log a (..., T, L), gate logit (..., T))."""
        q = self.query(torch.cat([h, e], -1))                                     # (..., T, d)
        scores = q @ keys.transpose(-1, -2) / keys.size(-1) ** 0.5               # (..., T, L)
        scores = scores + self.beta * (F.normalize(e, dim=-1) @ prev_n.transpose(-1, -2))
        return (scores + bias.unsqueeze(-2)).log_softmax(-1), self.gate(h).squeeze(-1)

    @staticmethod
    def mix(lp_vocab, gate, log_attn, src_ids):
        """Full next-token log-probs (R, V): lp_vocab (R, V) log-softmaxed, gate (R,), log_attn (R, L),
        src_ids (R, L)."""
        p_copy = torch.zeros_like(lp_vocab).scatter_add_(1, src_ids, log_attn.exp())
        # clamped: log 0 would make the backward 0 * inf (RL differentiates this); 1e-30 is below anything sampled
        return torch.logaddexp(F.logsigmoid(-gate)[:, None] + lp_vocab,
                               F.logsigmoid(gate)[:, None] + p_copy.clamp_min(1e-30).log())

    @staticmethod
    @torch.no_grad()
    def mix_logits(logits, gate, log_attn, src_ids):
        """``mix`` for decoding, from the LM head's logits (R, V), in probability space: log((1 - g) softmax +
        g p_copy). The same numbers to ~1e-6 at a third of the time (``logaddexp`` over the vocabulary was a
        step's largest op); no gradient (training and RL score through ``mix`` / ``scored_logprobs``)."""
        p = logits.softmax(-1).mul_(torch.sigmoid(-gate)[:, None])
        p.scatter_add_(1, src_ids, log_attn.exp().mul_(torch.sigmoid(gate)[:, None]))
        return p.clamp_min_(1e-30).log_()


def load_gpt2(config: ModelConfig) -> GPT2LMHeadModel:
    if config.pretrained_gpt2 is None:
        if config.vocab_size is None:
            raise ValueError("ModelConfig.vocab_size must be set (len(tokenizer)) to build GPT-2 from scratch")
        gcfg = GPT2Config(n_layer=config.n_layer, n_head=config.n_head, n_embd=config.n_embd,
                          n_positions=config.n_positions, vocab_size=config.vocab_size,
                          resid_pdrop=config.dropout, embd_pdrop=config.dropout, attn_pdrop=config.attn_dropout,
                          activation_function=config.activation,
                          bos_token_id=None, eos_token_id=None)  # GPT-2's 50256 is not in our vocabulary
        return GPT2LMHeadModel(gcfg)
    paths.offline()
    try:
        gpt2 = GPT2LMHeadModel.from_pretrained(config.pretrained_gpt2)
    except Exception as e:  # noqa: BLE001 - anything from the hub/IO layer; say it in one line
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise RuntimeError(f"could not load GPT-2 from {config.pretrained_gpt2!r} (no model hub here: "
                           f"pass a local directory written by save_pretrained): {first}") from None
    if config.vocab_size is not None and config.vocab_size != gpt2.config.vocab_size:
        # our tokenizer adds <|user|> etc.; the new rows start random and must be learnt
        gpt2.resize_token_embeddings(config.vocab_size)
    return gpt2


class ReasonModel(nn.Module):

    @staticmethod
    def get_default_config() -> ModelConfig:
        return ModelConfig()

    def __init__(self, config: ModelConfig):
        super().__init__()
        self.config = config
        self.gpt2 = load_gpt2(config)
        self.causal_shortcut = True  # see causal_mask_suffices; the bench turns it off for its "before" row
        if self.gpt2.config._attn_implementation == "sdpa":
            self.gpt2.set_attn_implementation(ATTENTION)  # the same SDPA; fp32 under CPU bf16 autocast
        n_embd, n_head = self.gpt2.config.n_embd, self.gpt2.config.n_head
        self.n_embd = n_embd
        k = config.prefix_len
        if config.mapper == "mlp":
            self.mapper = MLPMapper(config.clip_dim, n_embd, k)
        elif config.mapper == "transformer":
            self.mapper = TransformerMapper(config.clip_dim, n_embd, k, config.mapper_layers, n_head)
        else:
            raise ValueError(f"unknown mapper {config.mapper!r}: use 'mlp' or 'transformer'")
        # stands in for the CLIP vector of articles that have no photo; roughly unit norm like CLIP's
        self.no_photo = nn.Parameter(torch.randn(config.clip_dim) / config.clip_dim ** 0.5)
        self.segment = nn.Embedding(config.n_segments, n_embd)
        nn.init.zeros_(self.segment.weight)  # zero: with no prefix the model is exactly GPT-2
        self.copy = CopyHead(n_embd, config.copy_dim) if config.copy_head else None

        if config.train_mode == "frozen":
            self.gpt2.requires_grad_(False)
        elif config.train_mode == "lora":
            from peft import LoraConfig, get_peft_model
            lcfg = LoraConfig(r=config.lora_r, lora_alpha=config.lora_alpha, lora_dropout=config.lora_dropout,
                              target_modules=["c_attn", "c_proj"], fan_in_fan_out=True)  # GPT-2 uses Conv1D
            self.gpt2 = get_peft_model(self.gpt2, lcfg)  # freezes everything in GPT-2 but the LoRA weights
        elif config.train_mode != "full":
            raise ValueError(f"unknown train_mode {config.train_mode!r}: use 'full', 'frozen' or 'lora'")

    # ---- embeddings ----

    @property
    def wte(self) -> nn.Embedding:
        return self.gpt2.get_input_embeddings()

    def token_embeddings(self, ids: torch.Tensor, segment_id) -> torch.Tensor:
        """Token + segment embeddings (B, T, C); for new tokens while decoding with the KV cache."""
        seg = torch.as_tensor(segment_id, device=ids.device).expand_as(ids)
        return self.wte(ids) + self.segment(seg)

    def photo_prefix(self, photo_embedding: torch.Tensor, has_photo: torch.Tensor) -> torch.Tensor:
        x = photo_embedding.to(self.no_photo.dtype)                              # (B, clip_dim)
        if has_photo is None:
            has_photo = torch.ones(x.size(0), dtype=torch.bool, device=x.device)
        x = torch.where(has_photo.view(-1, 1).bool(), x, self.no_photo.expand_as(x))
        prefix = self.mapper(x)                                                  # (B, k, C)
        # through the embedding's forward, not .weight[...], so per-example gradient hooks (DP) see it
        seg = torch.full((x.size(0), 1), SEG_PHOTO, dtype=torch.long, device=x.device)
        return prefix + self.segment(seg)                                        # (B, k, C) + (B, 1, C)

    def embed_prefix(self, photo_embedding, has_photo, input_ids, segment_ids, attention_mask):
        """-> (inputs_embeds (B, k+T, C), attention_mask (B, k+T), position_ids (B, k+T)).

        With use_photo=False there is no prefix (k=0) and the photo arguments may be None.
        Positions count only attended tokens, so left and right padding give the same numbers.
        """
        x = self.wte(input_ids) + self.segment(segment_ids)                      # (B, T, C)
        if self.config.use_photo:
            prefix = self.photo_prefix(photo_embedding, has_photo)               # (B, k, C)
            x = torch.cat([prefix, x], dim=1)                                    # (B, k+T, C)
            ones = attention_mask.new_ones(input_ids.size(0), self.config.prefix_len)
            # the prefix sits before any left padding; cumsum still numbers the real tokens 0..n-1
            attention_mask = torch.cat([ones, attention_mask], dim=1)            # (B, k+T)
        position_ids = (attention_mask.long().cumsum(-1) - 1).clamp(min=0)       # (B, k+T)
        return x, attention_mask, position_ids

    # ---- forward ----

    def forward(self, photo_embedding, has_photo, input_ids, segment_ids, attention_mask, labels=None):
        """-> dict(logits (B, k+T, V), loss: mean CE over label positions != -100, or None)."""
        x, mask, pos = self.embed_prefix(photo_embedding, has_photo, input_ids, segment_ids, attention_mask)
        logits = self.gpt2(inputs_embeds=x, attention_mask=mask, position_ids=pos).logits  # (B, k+T, V)
        loss = None
        if labels is not None:
            n_prefix = logits.size(1) - labels.size(1)
            labels = F.pad(labels, (n_prefix, 0), value=-100)                    # (B, k+T); prefix never scored
            # position t predicts token t+1
            loss = F.cross_entropy(logits[:, :-1].flatten(0, 1).float(), labels[:, 1:].flatten(),
                                   ignore_index=-100)
        return {"logits": logits, "loss": loss}

    def _hidden(self, photo_embedding, has_photo, input_ids, segment_ids, attention_mask):
        """-> (final hidden states (B, k+T, C), attention mask (B, k+T))."""
        x, mask, pos = self.embed_prefix(photo_embedding, has_photo, input_ids, segment_ids, attention_mask)
        hf = self.gpt2.get_base_model() if hasattr(self.gpt2, "get_base_model") else self.gpt2
        # right padding: the causal mask alone (a compiled graph keeps the mask rather than break on the check)
        shortcut = self.causal_shortcut and not torch.compiler.is_compiling()
        attend = None if shortcut and causal_mask_suffices(mask) else mask
        return hf.transformer(inputs_embeds=x, attention_mask=attend, position_ids=pos).last_hidden_state, mask

    def copy_sources(self, input_ids, segment_ids, attention_mask):
        """-> (token ids (B, k+T) with the photo prefix as 0s, the copyable positions (B, k+T)): every attended
        prompt token (not the photo prefix, not the reason)."""
        src = (attention_mask.bool() & (segment_ids != SEG_REASON))                  # (B, T)
        n_prefix = self.config.prefix_len if self.config.use_photo else 0
        return F.pad(input_ids, (n_prefix, 0), value=0), F.pad(src, (n_prefix, 0), value=False)

    def scored_logits(self, photo_embedding, has_photo, input_ids, segment_ids, attention_mask, labels):
        """-> (logits (N, V) at the N positions whose next token is scored, those tokens (N,), and the
        (B, k+T-1) mask of scored positions); rows in order, positions in order within a row.

        The LM head (vocab x C, the largest matmul of a small model) runs on the scored positions alone
        instead of on every prompt token. With the copy head these are the LM head's logits alone; use
        ``scored_logprobs`` for the model's distribution.
        """
        h, _ = self._hidden(photo_embedding, has_photo, input_ids, segment_ids, attention_mask)
        hf = self.gpt2.get_base_model() if hasattr(self.gpt2, "get_base_model") else self.gpt2
        labels = F.pad(labels, (h.size(1) - labels.size(1), 0), value=-100)[:, 1:]               # (B, k+T-1)
        scored = labels != -100
        return hf.lm_head(h[:, :-1][scored]), labels[scored], scored                             # (N, V), (N,)

    def scored_logprobs(self, photo_embedding, has_photo, input_ids, segment_ids, attention_mask, labels,
                        full: bool = False, rows: bool = False):
        """-> (log p of the scored tokens (N,) or, with full=True, of the whole vocabulary (N, V); those tokens
        (N,); the (B, k+T-1) mask of scored positions). The model's distribution: the LM head's, mixed with the
        copy head's where there is one. rows=True: the LM head reads each row's scored positions as (B, Q, C)
        rather than the flattened (N, C), so every layer's input keeps the batch dimension (per-example
        gradient hooks, DP-SGD: privacy.py); the same values, at the cost of the padding rows."""
        h, _ = self._hidden(photo_embedding, has_photo, input_ids, segment_ids, attention_mask)
        hf = self.gpt2.get_base_model() if hasattr(self.gpt2, "get_base_model") else self.gpt2
        labels = F.pad(labels, (h.size(1) - labels.size(1), 0), value=-100)[:, 1:]               # (B, k+T-1)
        scored = labels != -100
        targets = labels[scored]
        if rows or self.copy is not None:
            # each row's scored positions, in order, left-aligned: the first n of Q (a quarter of a row)
            n = scored.sum(1)                                                                    # (B,)
            Q = int(n.max()) if n.numel() else 0
            at = scored.to(torch.uint8).argsort(dim=1, descending=True, stable=True)[:, :Q]     # (B, Q)
            valid = torch.arange(Q, device=h.device)[None] < n[:, None]                          # (B, Q)
            take = lambda x: x.gather(1, at[..., None].expand(-1, -1, x.size(-1)))  # noqa: E731  (B, Q, C)
        if rows:
            lp = hf.lm_head(take(h)).float().log_softmax(-1)[valid]                              # (N, V)
        else:
            lp = hf.lm_head(h[:, :-1][scored]).float().log_softmax(-1)                           # (N, V)
        if self.copy is None:
            return (lp if full else lp.gather(1, targets[:, None]).squeeze(1)), targets, scored
        ids, src = self.copy_sources(input_ids, segment_ids, attention_mask)                     # (B, k+T)
        with torch.autocast(h.device.type, enabled=False):
            h, e = h.float(), self.wte(ids).float()
            keys, prev_n, bias = self.copy.sources(h, e, src)
            # queries at the scored positions only
            log_attn, gate = self.copy.attend(take(h), take(e), keys, prev_n, bias)              # (B, Q, k+T)
            log_attn, gate = log_attn[valid], gate[valid]                                        # (N, k+T), (N,)
            src_ids = ids[scored.nonzero()[:, 0]]                                                # (N, k+T)
            if full:
                return CopyHead.mix(lp, gate, log_attn, src_ids), targets, scored
            # finite fill: a token found nowhere gets ~0 from the copy head, and logsumexp a finite gradient
            lc = log_attn.masked_fill(src_ids != targets[:, None], -1e4).logsumexp(-1)           # (N,)
            lv = lp.gather(1, targets[:, None]).squeeze(1)
            return torch.logaddexp(F.logsigmoid(-gate) + lv, F.logsigmoid(gate) + lc), targets, scored

    def reason_loss(self, photo_embedding, has_photo, input_ids, segment_ids, attention_mask, labels):
        """-> (mean CE over reason tokens, number of scored tokens); same value as forward's loss."""
        if self.copy is not None:
            lp, _, scored = self.scored_logprobs(photo_embedding, has_photo, input_ids, segment_ids,
                                                 attention_mask, labels)
            return -lp.mean(), scored.sum()
        logits, targets, scored = self.scored_logits(photo_embedding, has_photo, input_ids, segment_ids,
                                                     attention_mask, labels)
        return F.cross_entropy(logits.float(), targets), scored.sum()

    # ---- decoding (generate.py) ----

    def next_logprobs(self, h, current_ids, copy_state=None):
        """The next token's log-probs (R, V) from final hidden states h (R, C) after current tokens (R,).
        copy_state: ``copy_state(...)``'s (keys, prev_n, bias, src_ids), rows aligned with h."""
        hf = self.gpt2.get_base_model() if hasattr(self.gpt2, "get_base_model") else self.gpt2
        logits = hf.lm_head(h).float()
        if self.copy is None:
            return logits.log_softmax(-1)
        keys, prev_n, bias, src_ids = copy_state
        e = self.wte(current_ids).float()
        log_attn, gate = self.copy.attend(h.float()[:, None], e[:, None], keys, prev_n, bias)   # (R, 1, L), (R, 1)
        return CopyHead.mix_logits(logits, gate[:, 0], log_attn[:, 0], src_ids)

    def copy_state(self, h, input_ids, segment_ids, attention_mask):
        """What decoding keeps for the copy head: h (B, k+T, C) the prompt's final hidden states in the layout
        of input_ids (B, T) with the photo prefix in front. -> (keys, prev_n, bias, src_ids) or None."""
        if self.copy is None:
            return None
        ids, src = self.copy_sources(input_ids, segment_ids, attention_mask)
        keys, prev_n, bias = self.copy.sources(h.float(), self.wte(ids).float(), src)
        return keys, prev_n, bias, ids

    # ---- bookkeeping ----

    def num_params(self, trainable_only: bool = False) -> int:
        return sum(p.numel() for p in self.parameters() if p.requires_grad or not trainable_only)

    def estimate_flops_per_token(self, seq_len: int | None = None) -> float:
        """nanoGPT/PaLM estimate: 6N for the matmuls fwd+bwd plus 12*L*H*Q*T for attention.
        Frozen weights still cost their backward through activations, so N counts every parameter."""
        c = self.gpt2.config
        L, H, Q = c.n_layer, c.n_head, c.n_embd // c.n_head
        T = seq_len or c.n_positions
        return 6 * self.num_params() + 12 * L * H * Q * T

    def save_gpt2_pretrained(self, directory) -> None:
        """Write the decoder as a plain GPT-2 directory (LoRA merged in), loadable via pretrained_gpt2."""
        gpt2 = self.gpt2
        if self.config.train_mode == "lora":
            gpt2 = copy.deepcopy(gpt2).merge_and_unload()
        gpt2.save_pretrained(directory)
