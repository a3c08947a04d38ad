"""The pure model on a tiny GPT-2: HF parity, loss masking, the photo prefix, train modes, padding."""
import pytest
import torch
from transformers import GPT2Config, GPT2LMHeadModel

from mmreason import paths
from mmreason.model.network import (
    ATTENTION,
    SEG_PRODUCT,
    SEG_REASON,
    SEG_USER,
    ModelConfig,
    ReasonModel,
    causal_mask_suffices,
)

paths.offline()

V, CLIP, K = 50, 16, 3
TINY = dict(n_layer=2, n_head=2, n_embd=32, n_positions=64)


def make_model(**kw) -> ReasonModel:
    torch.manual_seed(0)
    cfg = ModelConfig(clip_dim=CLIP, prefix_len=K, **{"vocab_size": V, **TINY, **kw})
    return ReasonModel(cfg).eval()


def make_batch(B=2, T=10, n_prompt=6):
    g = torch.Generator().manual_seed(1)
    input_ids = torch.randint(0, V, (B, T), generator=g)
    segment_ids = torch.full((B, T), SEG_REASON)
    segment_ids[:, :3], segment_ids[:, 3:n_prompt - 1] = SEG_USER, SEG_PRODUCT
    labels = input_ids.clone()
    labels[:, :n_prompt] = -100
    return dict(photo_embedding=torch.randn(B, CLIP, generator=g), has_photo=torch.ones(B, dtype=torch.bool),
                input_ids=input_ids, segment_ids=segment_ids,
                attention_mask=torch.ones(B, T, dtype=torch.long), labels=labels)


def reference_gpt2() -> GPT2LMHeadModel:
    torch.manual_seed(123)
    return GPT2LMHeadModel(GPT2Config(vocab_size=V, **TINY)).eval()


# ---- 1. parity with Hugging Face GPT-2 ----

def test_text_only_matches_hf_gpt2():
    ref = reference_gpt2()
    model = make_model(use_photo=False)
    model.gpt2.load_state_dict(ref.state_dict())
    b = make_batch()
    with torch.no_grad():
        ours = model(None, None, b["input_ids"], b["segment_ids"], b["attention_mask"])["logits"]
        theirs = ref(input_ids=b["input_ids"]).logits
    assert ours.shape == theirs.shape == (2, 10, V)
    torch.testing.assert_close(ours, theirs, atol=1e-5, rtol=1e-5)


def test_pretrained_directory_matches_hf_gpt2(tmp_path):
    ref = reference_gpt2()
    ref.save_pretrained(tmp_path / "gpt2")
    model = make_model(use_photo=False, pretrained_gpt2=str(tmp_path / "gpt2"))
    assert model.gpt2.config.n_embd == 32 and model.gpt2.config.vocab_size == V
    b = make_batch()
    with torch.no_grad():
        ours = model(None, None, b["input_ids"], b["segment_ids"], b["attention_mask"])["logits"]
        theirs = ref(input_ids=b["input_ids"]).logits
    torch.testing.assert_close(ours, theirs, atol=1e-5, rtol=1e-5)


def test_missing_pretrained_gives_one_line_error(tmp_path):
    with pytest.raises(RuntimeError, match="could not load GPT-2") as e:
        make_model(pretrained_gpt2=str(tmp_path / "nope"))
    assert "\n" not in str(e.value)


def test_pretrained_vocab_is_resized_for_added_tokens(tmp_path):
    reference_gpt2().save_pretrained(tmp_path / "gpt2")
    model = make_model(pretrained_gpt2=str(tmp_path / "gpt2"), vocab_size=V + 5)
    assert model.wte.weight.shape == (V + 5, 32)
    assert model(**make_batch())["logits"].shape[-1] == V + 5


# ---- 2. loss masking ----

def test_loss_is_mean_ce_over_reason_positions():
    model = make_model()
    b = make_batch()
    with torch.no_grad():
        out = model(**b)
    logits = out["logits"][:, K:]  # drop the prefix: (B, T, V)
    # prompt is positions 0..5, so positions 5..T-2 predict the reason tokens 6..T-1
    manual = torch.nn.functional.cross_entropy(logits[:, 5:-1].reshape(-1, V), b["input_ids"][:, 6:].reshape(-1))
    torch.testing.assert_close(out["loss"], manual)


def test_only_reason_targets_reach_the_loss():
    model = make_model()
    b = make_batch()
    out = model(**b)
    out["logits"].retain_grad()
    out["loss"].backward()
    g = out["logits"].grad.abs().sum(-1)  # (B, k+T)
    assert (g[:, :K + 5] == 0).all()      # prefix and positions whose target is a prompt token
    assert (g[:, K + 5:-1] > 0).all()     # positions whose target is a reason token
    assert (g[:, -1] == 0).all()          # last position has no target
    with torch.no_grad():  # whereas scoring the prompt too would change the loss
        assert not torch.allclose(model(**{**b, "labels": b["input_ids"]})["loss"], out["loss"].detach())


# ---- 3. the photo prefix ----

def test_photo_changes_reason_logits():
    model = make_model()
    b = make_batch()
    with torch.no_grad():
        a = model(**b)["logits"][:, K + 6:]
        c = model(**{**b, "photo_embedding": torch.randn(2, CLIP)})["logits"][:, K + 6:]
    assert not torch.allclose(a, c)


@pytest.mark.parametrize("mapper", ["mlp", "transformer"])
def test_mapper_gets_gradients(mapper):
    model = make_model(mapper=mapper).train()
    out = model(**make_batch())
    assert out["logits"].shape == (2, K + 10, V)
    out["loss"].backward()
    for name, p in model.mapper.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name
    assert model.segment.weight.grad.abs().sum() > 0


def test_no_photo_rows_ignore_the_photo_vector():
    model = make_model(mapper="transformer")
    b = make_batch()
    b["has_photo"] = torch.tensor([True, False])
    with torch.no_grad():
        a = model(**b)["logits"]
        c = model(**{**b, "photo_embedding": torch.randn(2, CLIP)})["logits"]
        torch.testing.assert_close(a[1], c[1])       # row without a photo: unchanged
        assert not torch.allclose(a[0], c[0])         # row with a photo: changed
        # and it is the learned no_photo vector that fills in
        prefix = model.photo_prefix(b["photo_embedding"], b["has_photo"])
        expected = model.mapper(model.no_photo.unsqueeze(0))[0]
        torch.testing.assert_close(prefix[1], expected)


# ---- 4. train modes ----

def test_frozen_mode_trains_only_mapper_and_embeddings():
    model = make_model(train_mode="frozen")
    assert not any(p.requires_grad for p in model.gpt2.parameters())
    assert all(p.requires_grad for p in model.mapper.parameters())
    assert model.segment.weight.requires_grad and model.no_photo.requires_grad
    out = model.train()(**make_batch())
    out["loss"].backward()
    assert model.mapper.net[0].weight.grad.abs().sum() > 0


def test_lora_mode_trains_only_lora_and_mapper():
    model = make_model(train_mode="lora", lora_r=2)
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    gpt2_trainable = [n for n in trainable if n.startswith("gpt2.")]
    assert gpt2_trainable and all("lora_" in n for n in gpt2_trainable)
    assert any(".c_attn." in n for n in gpt2_trainable) and any(".c_proj." in n for n in gpt2_trainable)
    assert all(n in trainable for n, _ in model.named_parameters() if n.startswith("mapper."))
    out = model.train()(**make_batch())
    assert out["logits"].shape == (2, K + 10, V) and torch.isfinite(out["loss"])
    out["loss"].backward()
    assert 0 < model.num_params(trainable_only=True) < model.num_params()


def test_lora_saves_a_merged_plain_gpt2(tmp_path):
    model = make_model(train_mode="lora", lora_r=2)
    model.save_gpt2_pretrained(tmp_path / "merged")
    again = make_model(use_photo=False, pretrained_gpt2=str(tmp_path / "merged"))
    b = make_batch()
    with torch.no_grad():
        ref = model.gpt2(input_ids=b["input_ids"]).logits
        got = again.gpt2(input_ids=b["input_ids"]).logits
    torch.testing.assert_close(got, ref, atol=1e-5, rtol=1e-5)


def test_bad_config_values_fail():
    with pytest.raises(ValueError, match="mapper"):
        make_model(mapper="lstm")
    with pytest.raises(ValueError, match="train_mode"):
        make_model(train_mode="half")


# ---- 5. padding ----

@pytest.mark.parametrize("use_photo", [True, False])
def test_left_and_right_padding_agree(use_photo):
    model = make_model(use_photo=use_photo)
    b = make_batch()
    lengths = [10, 7]
    k = K if use_photo else 0
    right = {key: b[key].clone() for key in ("input_ids", "segment_ids", "attention_mask")}
    left = {key: b[key].clone() for key in ("input_ids", "segment_ids", "attention_mask")}
    right["attention_mask"][1, 7:] = 0
    right["input_ids"][1, 7:] = 0
    left["attention_mask"][1] = torch.tensor([0, 0, 0] + [1] * 7)
    left["input_ids"][1] = torch.cat([torch.zeros(3, dtype=torch.long), b["input_ids"][1, :7]])
    left["segment_ids"][1] = torch.cat([torch.full((3,), SEG_REASON), b["segment_ids"][1, :7]])
    photo = dict(photo_embedding=b["photo_embedding"], has_photo=b["has_photo"])
    with torch.no_grad():
        r = model(**photo, **right)["logits"]
        l = model(**photo, **left)["logits"]
        alone = model(photo_embedding=b["photo_embedding"][1:], has_photo=b["has_photo"][1:],
                      input_ids=b["input_ids"][1:, :7], segment_ids=b["segment_ids"][1:, :7],
                      attention_mask=b["attention_mask"][1:, :7])["logits"]
    n = lengths[1]
    torch.testing.assert_close(r[1, :k + n], l[1, list(range(k)) + list(range(k + 3, k + 10))], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(r[1, :k + n], alone[0], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(r[0], l[0], atol=1e-5, rtol=1e-5)  # unpadded row untouched


def test_embed_prefix_and_token_embeddings_for_decoding():
    """A decoder can run the prompt once and then feed new tokens with the KV cache
    (transformers 5.24 calls it `cache`; `past_key_values` is a deprecated alias)."""
    model = make_model()
    b = make_batch(B=1)
    with torch.no_grad():
        full = model(**b)["logits"]                                             # (1, k+T, V)
        x, mask, pos = model.embed_prefix(b["photo_embedding"], b["has_photo"], b["input_ids"][:, :-1],
                                          b["segment_ids"][:, :-1], b["attention_mask"][:, :-1])
        assert x.shape == (1, K + 9, 32) and mask.shape == pos.shape == (1, K + 9)
        out = model.gpt2(inputs_embeds=x, attention_mask=mask, position_ids=pos, use_cache=True)
        new = model.token_embeddings(b["input_ids"][:, -1:], SEG_REASON)      # (1, 1, C)
        step = model.gpt2(inputs_embeds=new, attention_mask=torch.cat([mask, mask[:, -1:]], 1),
                          position_ids=pos[:, -1:] + 1, cache=out.cache).logits
    torch.testing.assert_close(step[:, -1], full[:, -1], atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("T", [8, 64])
def test_flops_estimate_against_a_flop_counter(T):
    """Training FLOPs per token that torch's FlopCounterMode counts on a forward + backward pass of T tokens,
    plus the estimate's convention of 6 FLOPs for each parameter that takes part in no per-token matmul."""
    from torch.utils.flop_counter import FlopCounterMode
    from transformers.pytorch_utils import Conv1D

    model = make_model(use_photo=False)
    model.gpt2.set_attn_implementation("eager")  # attention as plain matmuls, which the counter sees (SDPA it skips)
    ids = torch.randint(0, V, (1, T), generator=torch.Generator().manual_seed(0))
    with FlopCounterMode(display=False) as counter:
        model(None, None, ids, torch.full_like(ids, SEG_REASON), torch.ones_like(ids), labels=ids)["loss"].backward()
    counted = counter.get_total_flops() / T
    # per-token matmuls: GPT-2's projections and the LM head (tied to wte); the rest (position table, norms,
    # biases, segment table, photo mapper run once per example) are counted at 6 by convention
    matmul = sum(m.weight.numel() for m in model.gpt2.modules() if isinstance(m, (Conv1D, torch.nn.Linear)))
    assert 0 < matmul < model.num_params()
    estimate = model.estimate_flops_per_token(seq_len=None if T == TINY["n_positions"] else T)
    assert estimate == pytest.approx(counted + 6 * (model.num_params() - matmul), rel=1e-9)  # whole FLOP counts / T


def test_reason_loss_matches_forward_loss():
    """The training path (LM head on scored positions only) gives forward's loss exactly."""
    torch.manual_seed(0)
    for mode in ("full", "lora"):
        m = ReasonModel(ModelConfig(n_layer=2, n_head=2, n_embd=32, clip_dim=8, prefix_len=3, vocab_size=50,
                                    dropout=0.0, train_mode=mode)).eval()
        B, T = 3, 9
        ids = torch.randint(0, 50, (B, T))
        segs = torch.randint(1, 5, (B, T))
        mask = torch.ones(B, T, dtype=torch.long)
        mask[0, -2:] = 0
        labels = ids.clone()
        labels[:, :4] = -100
        labels[mask == 0] = -100
        photo = torch.randn(B, 8)
        has = torch.tensor([True, False, True])
        ref = m(photo, has, ids, segs, mask, labels)["loss"]
        loss, n = m.reason_loss(photo, has, ids, segs, mask, labels)  # right padding: the causal mask alone
        assert causal_mask_suffices(torch.cat([torch.ones(B, 3, dtype=torch.long), mask], 1))
        assert int(n) == int((labels != -100).sum())
        torch.testing.assert_close(loss, ref)
        # left padding on one row: the padding mask is needed and used
        left = torch.ones(B, T, dtype=torch.long)
        left[1, :2] = 0
        left_labels = labels.masked_fill(left == 0, -100)
        assert not causal_mask_suffices(left)
        torch.testing.assert_close(m.reason_loss(photo, has, ids, segs, left, left_labels)[0],
                                   m(photo, has, ids, segs, left, left_labels)["loss"])


def test_bf16_autocast_loss_and_grads_close_to_fp32():
    """The default CPU run trains under bf16 autocast: on a fixed batch its loss and gradient norm stay within
    1% of fp32's, and attention runs in fp32 (sdpa_fp32_on_cpu) while the projections run in bf16."""
    torch.manual_seed(0)
    m = ReasonModel(ModelConfig(n_layer=2, n_head=2, n_embd=64, clip_dim=8, prefix_len=3, vocab_size=200,
                                n_positions=128, dropout=0.0))
    assert m.gpt2.config._attn_implementation == ATTENTION
    g = torch.Generator().manual_seed(0)
    B, T = 4, 40
    ids = torch.randint(0, 200, (B, T), generator=g)
    segs = torch.randint(1, 5, (B, T), generator=g)
    mask = torch.ones(B, T, dtype=torch.long)
    mask[0, -5:] = 0
    labels = ids.masked_fill(mask == 0, -100)
    labels[:, :20] = -100
    photo, has = torch.randn(B, 8, generator=g), torch.ones(B, dtype=torch.bool)
    seen = []
    hook = m.gpt2.transformer.h[0].attn.c_attn.register_forward_hook(lambda mod, i, o: seen.append(o.dtype))

    def loss_and_grad(bf16):
        m.zero_grad()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            loss = m.reason_loss(photo, has, ids, segs, mask, labels)[0]
        loss.backward()
        return loss.item(), torch.nn.utils.clip_grad_norm_(m.parameters(), float("inf")).item()

    l32, g32 = loss_and_grad(False)
    l16, g16 = loss_and_grad(True)
    hook.remove()
    assert seen == [torch.float32, torch.bfloat16]
    assert l16 == pytest.approx(l32, rel=1e-2) and g16 == pytest.approx(g32, rel=1e-2)
    assert l16 != l32  # bf16 really ran
