"""encode_example / collate on a tiny byte-level BPE tokenizer trained here (no hub)."""
import pytest
import torch
from tokenizers import Tokenizer, models
from transformers import PreTrainedTokenizerFast

from mmreason.model.collate import BEHAVIOUR, EOS, PRODUCT, REASON, USER, collate, encode_example
from mmreason.model.network import SEG_BEHAVIOUR, SEG_PRODUCT, SEG_REASON, SEG_USER, ModelConfig, ReasonModel

from conftest import tiny_tokenizer

SENTENCES = [
    "a soft cotton jumper in navy blue", "she often buys dresses, knitwear and trousers",
    "perfect for chilly autumn walks", "relaxed fit jeans with a high waist", "he likes sporty shoes",
]

EXAMPLE = {"article_id": 108775015, "user_profile": "she often buys dresses", "behaviour": "knitwear and trousers",
           "product": "a soft cotton jumper in navy blue", "reason": "perfect for chilly autumn walks"}


@pytest.fixture(scope="module")
def tokenizer():
    return tiny_tokenizer(SENTENCES)


def ids_of(tokenizer, text):
    return tokenizer.encode(text, add_special_tokens=False)


def test_layout_segments_and_labels(tokenizer):
    enc = encode_example(tokenizer, EXAMPLE, max_prompt_tokens=100, max_reason_tokens=100)
    ids, segs, labels = enc["input_ids"], enc["segment_ids"], enc["labels"]
    assert len(ids) == len(segs) == len(labels) and enc["article_id"] == 108775015
    tid = tokenizer.convert_tokens_to_ids
    user, beh, prod = (ids_of(tokenizer, EXAMPLE[f]) for f in ("user_profile", "behaviour", "product"))
    reason = ids_of(tokenizer, EXAMPLE["reason"])
    prompt = [tid(USER)] + user + [tid(BEHAVIOUR)] + beh + [tid(PRODUCT)] + prod + [tid(REASON)]
    assert ids == prompt + reason + [tokenizer.eos_token_id]  # EOS closes the reason
    assert segs == ([SEG_USER] * (1 + len(user)) + [SEG_BEHAVIOUR] * (1 + len(beh))
                    + [SEG_PRODUCT] * (1 + len(prod)) + [SEG_REASON] * (1 + len(reason) + 1))
    assert labels == [-100] * len(prompt) + reason + [tokenizer.eos_token_id]
    assert tokenizer.decode(ids, skip_special_tokens=True).endswith(EXAMPLE["reason"])


def test_truncation(tokenizer):
    limits = {"user_profile": 2, "behaviour": 1, "product": 3}
    enc = encode_example(tokenizer, EXAMPLE, max_prompt_tokens=limits, max_reason_tokens=4)
    segs = enc["segment_ids"]
    assert segs.count(SEG_USER) == 1 + 2 and segs.count(SEG_BEHAVIOUR) == 1 + 1 and segs.count(SEG_PRODUCT) == 1 + 3
    assert segs.count(SEG_REASON) == 1 + 4 + 1          # <|reason|>, 4 reason tokens, EOS
    assert enc["input_ids"][-1] == tokenizer.eos_token_id  # EOS survives truncation
    assert enc["labels"][-5:] == ids_of(tokenizer, EXAMPLE["reason"])[:4] + [tokenizer.eos_token_id]
    both = encode_example(tokenizer, EXAMPLE, max_prompt_tokens=1, max_reason_tokens=4)
    assert both["segment_ids"].count(SEG_USER) == both["segment_ids"].count(SEG_PRODUCT) == 2
    # caps that do not name the evidence or retrieved copies (a run from before them): those parts are left out,
    # so the run sees the prompts it was trained on; a cap naming them puts them in
    extra = EXAMPLE | {"evidence": "she often buys dresses", "retrieved": "relaxed fit jeans"}
    assert encode_example(tokenizer, extra, max_prompt_tokens=limits) == encode_example(tokenizer, EXAMPLE, limits)
    assert len(encode_example(tokenizer, extra, limits | {"evidence": 8, "retrieved": 8})["input_ids"]) > \
        len(encode_example(tokenizer, EXAMPLE, limits)["input_ids"])


def test_prompt_only_for_generation(tokenizer):
    example = {**EXAMPLE, "reason": None}
    enc = encode_example(tokenizer, example, with_reason=False)
    assert enc["input_ids"][-1] == tokenizer.convert_tokens_to_ids(REASON)
    assert set(enc["labels"]) == {-100}
    with pytest.raises(ValueError, match="no reason"):
        encode_example(tokenizer, example)


def test_missing_special_tokens_are_reported():
    bare = PreTrainedTokenizerFast(tokenizer_object=Tokenizer(models.BPE()), eos_token=EOS)
    with pytest.raises(ValueError, match="SPECIAL_TOKENS"):
        encode_example(bare, EXAMPLE)


@pytest.mark.parametrize("side", ["right", "left"])
def test_collate_pads_with_minus_100(tokenizer, side):
    short = {**EXAMPLE, "article_id": 1, "user_profile": "", "reason": "nice"}
    encoded = [encode_example(tokenizer, EXAMPLE), encode_example(tokenizer, short)]
    n0, n1 = (len(e["input_ids"]) for e in encoded)
    batch = collate(encoded, pad_id=tokenizer.pad_token_id, padding_side=side)
    assert {k: v.shape for k, v in batch.items() if k != "article_id"} == {
        k: (2, n0) for k in ("input_ids", "segment_ids", "attention_mask", "labels")}
    assert batch["article_id"].tolist() == [108775015, 1]
    real = slice(0, n1) if side == "right" else slice(n0 - n1, n0)
    pad = slice(n1, n0) if side == "right" else slice(0, n0 - n1)
    assert batch["input_ids"][1, real].tolist() == encoded[1]["input_ids"]
    assert batch["labels"][1, real].tolist() == encoded[1]["labels"]
    assert batch["attention_mask"][1, real].eq(1).all() and batch["attention_mask"][1, pad].eq(0).all()
    assert batch["labels"][1, pad].eq(-100).all()             # never 0 (GPT-2's "!")
    assert batch["input_ids"][1, pad].eq(tokenizer.pad_token_id).all()
    assert batch["attention_mask"][0].eq(1).all()


def test_pad_to_multiple_rounds_the_length_up_with_padding_only(tokenizer):
    encoded = [encode_example(tokenizer, EXAMPLE)]
    n = len(encoded[0]["input_ids"])
    batch = collate(encoded, pad_id=tokenizer.pad_token_id, pad_to_multiple_of=16)
    T = batch["input_ids"].size(1)
    assert T % 16 == 0 and n <= T < n + 16
    assert batch["attention_mask"][0, :n].eq(1).all() and batch["attention_mask"][0, n:].eq(0).all()
    assert batch["labels"][0, n:].eq(-100).all() and batch["labels"][0, :n].tolist() == encoded[0]["labels"]


def test_collated_batch_trains_the_model_on_reason_tokens_only(tokenizer):
    """The padded batch's loss is the mean over every reason token and EOS of each example run alone
    (no padding), worked out here from the logits; and steps on that loss fit the batch."""
    examples = [EXAMPLE, {**EXAMPLE, "user_profile": "", "reason": "nice"}]
    encoded = [encode_example(tokenizer, e) for e in examples]
    batch = collate(encoded, pad_id=tokenizer.pad_token_id)
    assert batch["attention_mask"][1].eq(0).any()  # the second row is padded
    torch.manual_seed(0)
    k = 2
    cfg = ModelConfig(clip_dim=8, prefix_len=k, vocab_size=len(tokenizer), n_layer=2, n_head=2, n_embd=32, dropout=0.0)
    model = ReasonModel(cfg)
    photo, has = torch.randn(2, 8), torch.tensor([True, False])
    inputs = {key: batch[key] for key in ("input_ids", "segment_ids", "attention_mask", "labels")}
    out = model(photo_embedding=photo, has_photo=has, **inputs)
    assert out["logits"].shape == (2, k + batch["input_ids"].size(1), len(tokenizer))
    nll, n = 0.0, 0
    with torch.no_grad():
        for i, (e, ex) in enumerate(zip(encoded, examples)):
            ids = torch.tensor([e["input_ids"]])
            logits = model(photo[i:i + 1], has[i:i + 1], ids, torch.tensor([e["segment_ids"]]),
                           torch.ones_like(ids))["logits"][0]                  # (k+T, V)
            target = ids_of(tokenizer, ex["reason"]) + [tokenizer.eos_token_id]
            first = k + ids.size(1) - len(target)                               # position of the first reason token
            logp = logits[first - 1:-1].log_softmax(-1)                         # position t predicts token t+1
            nll -= float(logp.gather(1, torch.tensor(target)[:, None]).sum())
            n += len(target)
    assert float(out["loss"]) == pytest.approx(nll / n, rel=1e-5)  # float32 sums in another order
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    start = float(out["loss"])
    for _ in range(30):
        opt.zero_grad()
        loss = model(photo_embedding=photo, has_photo=has, **inputs)["loss"]
        loss.backward()
        opt.step()
    assert float(loss) < start / 4  # 2 short reasons: the model learns them by heart
