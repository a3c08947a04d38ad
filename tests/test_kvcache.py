"""``kvcache``: the shared-prompt KV cache gives Hugging Face GPT-2's logits (prompt, steps, beam reordering,
LoRA), and decoding falls back to Hugging Face's cache for GPT-2 variants it does not reproduce."""
from __future__ import annotations

import pytest
import torch

from mmreason.decoding import kvcache
from mmreason.decoding.generate import DecodeConfig, decode
from mmreason.model.network import SEG_REASON, ModelConfig, ReasonModel

ATOL = 1e-5  # float32 sums in another order (SDPA/einsum against HF's attention): ~1e-7 seen, 1e-5 allowed


def tiny_model(train_mode="full", seed=0):
    torch.manual_seed(seed)
    m = ReasonModel(ModelConfig(clip_dim=8, prefix_len=2, n_layer=2, n_head=2, n_embd=16, n_positions=64,
                                vocab_size=40, train_mode=train_mode, dropout=0.0))
    with torch.no_grad():
        m.segment.weight.normal_(0, 0.5)  # non-zero, so segment handling matters
        for p in m.parameters():
            p.add_(torch.randn_like(p) * 0.05)  # LoRA's B starts at zero: make it count
    return m.eval()


def prompt(seed=0, lengths=(7, 4, 6)):
    g = torch.Generator().manual_seed(seed)
    B, T = len(lengths), max(lengths)
    mask = torch.zeros(B, T, dtype=torch.long)
    for b, n in enumerate(lengths):
        mask[b, T - n:] = 1  # left padding
    return {"photo_embedding": torch.randn(B, 8, generator=g), "has_photo": torch.tensor([True, False, True][:B]),
            "input_ids": torch.randint(1, 40, (B, T), generator=g) * mask, "segment_ids": torch.ones(B, T, dtype=torch.long),
            "attention_mask": mask}


def hf_last_logits(model, x, mask, pos):
    return model.gpt2(inputs_embeds=x, attention_mask=mask, position_ids=pos).logits[:, -1]


def one_row_parts(monkeypatch):
    """Every example its own part of the cache (at most 4 parts), whatever the batch size."""
    bounds = kvcache.part_bounds
    monkeypatch.setattr(kvcache, "part_bounds", lambda lengths: bounds(lengths, min_rows=1))


@pytest.mark.parametrize("parts", ["one", "per_row"])
@pytest.mark.parametrize("train_mode", ["full", "lora"])
def test_prompt_and_steps_match_hugging_face(train_mode, parts, monkeypatch):
    if parts == "per_row":  # three prompts of 7, 4 and 6 tokens, each cached at its own length
        one_row_parts(monkeypatch)
    model, batch = tiny_model(train_mode), prompt()
    x, mask, pos = model.embed_prefix(batch["photo_embedding"], batch["has_photo"], batch["input_ids"],
                                      batch["segment_ids"], batch["attention_mask"])
    with torch.no_grad():
        logits, cache = kvcache.prompt_forward(model.gpt2, x, mask, pos, max_new=5)
        torch.testing.assert_close(logits, hf_last_logits(model, x, mask, pos), atol=ATOL, rtol=0)
        K = 2
        cache.batch_repeat_interleave(K)
        xs, masks, poss = (t.repeat_interleave(K, 0) for t in (x, mask, pos))
        nxt_pos = pos[:, -1].repeat_interleave(K) + 1
        g = torch.Generator().manual_seed(1)
        for step in range(4):
            ids = torch.randint(1, 40, (xs.size(0),), generator=g)
            if step == 2:  # beams swap within each example, as beam search reorders them
                order = torch.arange(xs.size(0)).view(-1, K).flip(1).reshape(-1)
                cache.reorder_cache(order)
                xs, masks, poss, nxt_pos = xs[order], masks[order], poss[order], nxt_pos[order]
            e = model.token_embeddings(ids[:, None], SEG_REASON)                        # (R, 1, C)
            got = kvcache.step_forward(model.gpt2, cache, e[:, 0], nxt_pos)
            xs = torch.cat([xs, e], 1)
            masks = torch.cat([masks, masks.new_ones(masks.size(0), 1)], 1)
            poss = torch.cat([poss, nxt_pos[:, None]], 1)
            torch.testing.assert_close(got, hf_last_logits(model, xs, masks, poss), atol=ATOL, rtol=0)
            nxt_pos = nxt_pos + 1


def test_cache_refuses_more_steps_than_it_holds():
    model, batch = tiny_model(), prompt()
    x, mask, pos = model.embed_prefix(**{k: batch[k] for k in ("photo_embedding", "has_photo", "input_ids",
                                                                 "segment_ids", "attention_mask")})
    _, cache = kvcache.prompt_forward(model.gpt2, x, mask, pos, max_new=1)
    e = model.token_embeddings(torch.ones(3, 1, dtype=torch.long), SEG_REASON)[:, 0]
    kvcache.step_forward(model.gpt2, cache, e, pos[:, -1] + 1)
    with pytest.raises(RuntimeError, match="holds 1 generated tokens"):
        kvcache.step_forward(model.gpt2, cache, e, pos[:, -1] + 2)


def test_unsupported_variant_decodes_through_hugging_face_cache(monkeypatch):
    fast = tiny_model()
    slow = tiny_model()
    slow.gpt2.config.scale_attn_by_inverse_layer_idx = True  # not reproduced by kvcache
    assert kvcache.supports(fast.gpt2) and not kvcache.supports(slow.gpt2)
    cfg = DecodeConfig("beam", num_beams=3, num_return_sequences=3, max_new_tokens=6)
    ours = []  # prompts that went through kvcache's own cache
    for name in ("prompt_forward", "prompt_hidden"):
        monkeypatch.setattr(kvcache, name, lambda *a, _f=getattr(kvcache, name), **k: ours.append(1) or _f(*a, **k))
    assert decode(slow, prompt(), cfg, eos_id=0) and ours == []  # ran on Hugging Face's DynamicCache
    a = decode(fast, prompt(), cfg, eos_id=0)
    assert ours  # ... and the supported model on ours
    # the two paths agree on ids, and on scores within float noise
    monkeypatch.setattr(kvcache, "supports", lambda gpt2: False)
    b = decode(fast, prompt(), cfg, eos_id=0)
    assert [[ids for ids, _ in c] for c in a] == [[ids for ids, _ in c] for c in b]
    for ca, cb in zip(a, b):
        for (_, sa), (_, sb) in zip(ca, cb):
            assert abs(sa - sb) < 1e-4


def varied_prompts(n=20, seed=3):
    g = torch.Generator().manual_seed(seed)
    lengths = torch.randint(2, 12, (n,), generator=g).tolist()
    batch = prompt(seed, lengths)
    batch["has_photo"] = torch.rand(n, generator=g) > 0.3
    return batch


def row(batch, i):
    return {k: v[i:i + 1] for k, v in batch.items()}


@pytest.mark.parametrize("copy_head", [False, True])
@pytest.mark.parametrize("cfg", [DecodeConfig("greedy", max_new_tokens=6, no_repeat_ngram_size=2),
                                 DecodeConfig("beam", num_beams=3, num_return_sequences=3, max_new_tokens=6),
                                 DecodeConfig("diverse_beam", num_beams=4, num_beam_groups=2, num_return_sequences=4,
                                              max_new_tokens=6)], ids=["greedy", "beam", "diverse_beam"])
def test_a_batch_in_parts_decodes_each_prompt_as_it_does_alone(cfg, copy_head):
    # 20 prompts of 2..11 tokens in random order: decode orders them longest first and caches them in 2 parts
    torch.manual_seed(0)
    model = ReasonModel(ModelConfig(clip_dim=8, prefix_len=2, n_layer=2, n_head=2, n_embd=16, n_positions=64,
                                    vocab_size=40, dropout=0.0, copy_head=copy_head, copy_dim=8)).eval()
    batch = varied_prompts()
    assert len(kvcache.part_bounds(batch["attention_mask"].sum(1))) == 2
    together = decode(model, batch, cfg, eos_id=0)
    for i in range(len(together)):
        alone = decode(model, row(batch, i), cfg, eos_id=0)[0]
        assert [ids for ids, _ in together[i]] == [ids for ids, _ in alone], f"prompt {i}"
        for (_, a), (_, b) in zip(together[i], alone):
            assert abs(a - b) < 1e-4


def test_sampling_in_parts_draws_what_one_part_draws(monkeypatch):
    # sampling keeps the batch's order (its random stream is drawn row by row); the parts must not change a draw
    model, batch = tiny_model(), varied_prompts()
    cfg = DecodeConfig("sample", num_return_sequences=2, max_new_tokens=6, seed=0)
    parts = decode(model, batch, cfg, eos_id=0)
    monkeypatch.setattr(kvcache, "part_bounds", lambda lengths: [(0, lengths.numel())])
    one = decode(model, batch, cfg, eos_id=0)
    assert [[ids for ids, _ in c] for c in parts] == [[ids for ids, _ in c] for c in one]
