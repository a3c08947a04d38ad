"""Examples -> token ids, segment ids and labels -> padded (B, T) tensors.

One encoded example reads
    <|user|> user_profile <|behaviour|> evidence behaviour <|product|> product retrieved <|reason|> reason <|endoftext|>
(evidence: the facts the reason may state, data.py / reasons.build_hook; retrieved: the copy of the nearest other
products, retrieval.py; each empty for tables and runs without it, which then encode exactly as before it existed).
The photo is not a token: the model puts its k prefix embeddings in front of all this.
Only the reason and its EOS are scored; every other label is -100 (never 0, which is GPT-2's "!").
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch

from mmreason.features.tokenizer import BEHAVIOUR, EOS, PHOTO, PRODUCT, REASON, RETRIEVED_SEPARATOR, USER  # noqa: F401 - re-exported
from mmreason.features.tokenizer import PROMPT_TOKENS as SPECIAL_TOKENS  # noqa: F401 - the five markers (EOS is the tokenizer's own)
from mmreason.model.network import SEG_BEHAVIOUR, SEG_PRODUCT, SEG_REASON, SEG_USER

PAD = EOS

# (example field, marker token or None, segment id), in prompt order: the evidence opens the behaviour segment
PROMPT_PARTS = [("user_profile", USER, SEG_USER), ("evidence", BEHAVIOUR, SEG_BEHAVIOUR),
                ("behaviour", None, SEG_BEHAVIOUR), ("product", PRODUCT, SEG_PRODUCT), ("retrieved", None, SEG_PRODUCT)]
OPTIONAL_PARTS = ("evidence", "retrieved")  # not in a run's prompt unless its max_prompt_tokens names them
# evidence: above its longest text in bytes, so it is never cut (data.PROMPT_BUDGET, audited there)
DEFAULT_MAX_PROMPT_TOKENS = {"user_profile": 48, "evidence": 224, "behaviour": 64, "product": 48}
# Delexicalised targets (ReasonDataModule(slots=True)): the hook's cited purchase name is this slot, which
# the shown-reason path (mmreason/shown.py) fills from the example's evidence after decoding.
NAME_SLOT = "<name>"


def token_id(tokenizer, token: str) -> int:
    i = tokenizer.convert_tokens_to_ids(token)
    if i is None or (tokenizer.unk_token_id is not None and i == tokenizer.unk_token_id):
        raise ValueError(f"tokenizer has no {token!r}; add mmreason.collate.SPECIAL_TOKENS to it")
    return i


def encode_example(tokenizer, example: Mapping, max_prompt_tokens: int | Mapping[str, int] = DEFAULT_MAX_PROMPT_TOKENS,
                   max_reason_tokens: int = 64, with_reason: bool = True) -> dict:
    """-> dict of lists input_ids, segment_ids, labels (same length), plus article_id if the example has one.

    Each prompt part keeps its first max_prompt_tokens[part] tokens; the reason keeps its first
    max_reason_tokens and always ends in EOS, so the model learns to stop.
    """
    if not isinstance(max_prompt_tokens, Mapping):
        max_prompt_tokens = {field: max_prompt_tokens for field, _, _ in PROMPT_PARTS}
    ids, segs = [], []
    for field, marker, seg in PROMPT_PARTS:
        text = example.get(field) or ""
        # a run from before the evidence (or retrieved) segment names no cap for it: it is not in that run's prompt
        cap = max_prompt_tokens.get(field, 0 if field in OPTIONAL_PARTS else None)
        text_ids = tokenizer.encode(text, add_special_tokens=False)[:cap] if text and cap != 0 else []
        head = [token_id(tokenizer, marker)] if marker is not None else []
        ids += head + text_ids
        segs += [seg] * (len(head) + len(text_ids))
    ids.append(token_id(tokenizer, REASON))
    segs.append(SEG_REASON)
    labels = [-100] * len(ids)
    if with_reason:
        if example.get("reason") is None:
            raise ValueError(f"example {example.get('article_id')} has no reason; use with_reason=False to generate")
        reason_ids = tokenizer.encode(example["reason"], add_special_tokens=False)[:max_reason_tokens]
        reason_ids.append(token_id(tokenizer, EOS))
        ids += reason_ids
        segs += [SEG_REASON] * len(reason_ids)
        labels += reason_ids
    out = {"input_ids": ids, "segment_ids": segs, "labels": labels}
    if example.get("article_id") is not None:
        out["article_id"] = int(example["article_id"])
    return out


def collate(encoded_list: Sequence[Mapping], pad_id: int, padding_side: str = "right", pad_to_multiple_of: int = 1) -> dict:
    """-> dict of (B, T) long tensors input_ids, segment_ids, attention_mask, labels
    (+ article_id (B,) when every example has one). Left padding is for generation from prompts.
    pad_to_multiple_of rounds T up: fewer distinct shapes, so fewer kernels for oneDNN to build (training)."""
    if padding_side not in ("right", "left"):
        raise ValueError(f"padding_side must be 'right' or 'left', not {padding_side!r}")
    T = max(len(e["input_ids"]) for e in encoded_list)
    T = -(-T // pad_to_multiple_of) * pad_to_multiple_of
    # pad values: segments are masked out anyway; labels -100 so padding is never scored
    fill = {"input_ids": pad_id, "segment_ids": SEG_REASON, "attention_mask": 0, "labels": -100}
    batch = {key: [] for key in fill}
    for e in encoded_list:
        n = len(e["input_ids"])
        row = {"input_ids": e["input_ids"], "segment_ids": e["segment_ids"], "attention_mask": [1] * n,
               "labels": e.get("labels") or [-100] * n}
        for key, values in row.items():
            pad = [fill[key]] * (T - n)
            batch[key].append(list(values) + pad if padding_side == "right" else pad + list(values))
    out = {key: torch.tensor(rows, dtype=torch.long) for key, rows in batch.items()}
    if all("article_id" in e for e in encoded_list):
        out["article_id"] = torch.tensor([e["article_id"] for e in encoded_list], dtype=torch.long)
    return out
