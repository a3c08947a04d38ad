"""Tokenizer: option B (train our byte-level BPE) and option A (load a GPT-2 style directory)."""
import json
import random

import pandas as pd
import pytest

from mmreason import tokenizer as T
from mmreason.features import tokenizer
from mmreason.model.collate import token_id

SAMPLE = f"{tokenizer.PHOTO}{tokenizer.USER} loves black denim {tokenizer.BEHAVIOUR} bought 3 jeans {tokenizer.PRODUCT} Skinny jeans {tokenizer.REASON} Fits her style.{tokenizer.EOS}"


@pytest.fixture(scope="module")
def corpus():
    """~1,200 distinct pseudo-words, each seen a few times: enough merges for a >1000-token vocab."""
    rng = random.Random(0)
    words = ["".join(rng.choice("abcdefghijklmnopqrstu") for _ in range(rng.randint(3, 9))) for _ in range(1200)]
    texts = [" ".join(rng.choice(words) for _ in range(10)) for _ in range(600)]
    return texts + ["Skinny jeans in black denim.", "Loves black denim and bought 3 jeans."] * 3


@pytest.fixture(scope="module")
def trained(corpus):
    return tokenizer.train_tokenizer(corpus, vocab_size=1500)


def test_trained_tokenizer_round_trip(trained, tmp_path):
    tok = trained
    assert 1000 < len(tok) <= 1500
    assert tok.eos_token == tok.bos_token == tok.pad_token == tokenizer.EOS
    for s in tokenizer.SPECIAL_TOKENS:  # every special token is one id, never split
        assert len(tok.encode(s, add_special_tokens=False)) == 1
        assert token_id(tok, s) == tok.convert_tokens_to_ids(s)  # what the collator asks for
    ids = tok.encode(SAMPLE, add_special_tokens=False)
    assert tok.decode(ids) == SAMPLE
    assert tok.decode(tok.encode("naïve 😀 café", add_special_tokens=False)) == "naïve 😀 café"  # byte level: no unk

    tok.save_pretrained(tmp_path / "tok")
    again = tokenizer.load_tokenizer(tmp_path / "tok")
    assert len(again) == len(tok)
    assert again.encode(SAMPLE, add_special_tokens=False) == ids
    assert again.convert_tokens_to_ids(tokenizer.PHOTO) == tok.convert_tokens_to_ids(tokenizer.PHOTO)
    assert again.pad_token_id == again.eos_token_id


def test_option_a_loads_gpt2_style_dir_and_adds_our_tokens(corpus, tmp_path):
    """A directory like a real GPT-2 one: byte-level BPE that only knows <|endoftext|>."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    raw = Tokenizer(models.BPE())
    raw.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    raw.decoder = decoders.ByteLevel()
    raw.train_from_iterator(corpus, trainers.BpeTrainer(
        vocab_size=1200, special_tokens=[tokenizer.EOS], initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    gpt2_names = dict(eos_token=tokenizer.EOS, bos_token=tokenizer.EOS, unk_token=tokenizer.EOS)  # as GPT-2's tokenizer_config.json
    PreTrainedTokenizerFast(tokenizer_object=raw, **gpt2_names).save_pretrained(tmp_path / "gpt2ish")
    n_before = raw.get_vocab_size()

    tok = tokenizer.load_tokenizer(tmp_path / "gpt2ish")
    assert len(tok) == n_before + len(tokenizer.PROMPT_TOKENS)
    assert tok.pad_token == tok.eos_token == tokenizer.EOS
    assert token_id(tok, tokenizer.EOS) == raw.token_to_id(tokenizer.EOS)  # eos must not look like an unk to the collator
    for s in tokenizer.PROMPT_TOKENS:
        (i,) = tok.encode(s, add_special_tokens=False)
        assert i >= n_before and token_id(tok, s) == i
    assert tok.decode(tok.encode(SAMPLE, add_special_tokens=False)) == SAMPLE


def test_empty_or_missing_tokenizer_raises_one_clear_line(tmp_path, monkeypatch):
    from tokenizers import Tokenizer, models
    from transformers import AutoTokenizer, PreTrainedTokenizerFast

    with pytest.raises(tokenizer.TokenizerLoadError, match="could not load a tokenizer") as e:
        tokenizer.load_tokenizer(tmp_path / "does-not-exist")
    assert "\n" not in str(e.value)

    # an empty BPE saved to disk loads without error in transformers: the guard must catch it
    PreTrainedTokenizerFast(tokenizer_object=Tokenizer(models.BPE()), eos_token=tokenizer.EOS).save_pretrained(tmp_path / "empty")
    with pytest.raises(tokenizer.TokenizerLoadError, match="empty or broken"):
        tokenizer.load_tokenizer(tmp_path / "empty")

    # what offline `GPT2TokenizerFast.from_pretrained("gpt2")` does: returns a near-empty tokenizer, no error
    empty = PreTrainedTokenizerFast(tokenizer_object=Tokenizer(models.BPE()), eos_token=tokenizer.EOS)
    monkeypatch.setattr(AutoTokenizer, "from_pretrained", lambda *a, **k: empty)
    with pytest.raises(tokenizer.TokenizerLoadError, match="'gpt2' is empty"):
        tokenizer.load_tokenizer("gpt2")


def _frames():
    items = pd.DataFrame({"article_id": [1, 2, 3, 4], "product_code": [10, 10, 20, 30],
                          "split_unseen": ["train", "train", "val", "test"]})
    examples = pd.DataFrame({
        "user_profile": ["likes denim", "likes red", "likes blue", "likes wool"],
        "behaviour": ["bought jeans", "bought a dress", "bought socks", "bought a coat"],
        "product": ["Jeans | Trousers", "SECRET val product", "Socks", "SECRET test product"],
        "reason": ["fits the denim habit", "SECRET", "LATER", "SECRET"],
        "split_temporal": ["train", "train", "test", "train"],
        "split_unseen": ["train", "val", "train", "test"],
    })
    catalogue = pd.DataFrame({"product_code": [10, 20, 30, 40, 40],
                              "prod_name": ["Jeans", "SECRET dress", "SECRET coat", "Scarf", "Scarf"],
                              "detail_desc": ["Denim jeans.", "SECRET copy", None, "Wool scarf.", "Wool scarf."]})
    return items, examples, catalogue


def test_training_texts_exclude_held_out_products_and_later_rows():
    texts = tokenizer.training_texts(*_frames())
    assert not [t for t in texts if "SECRET" in t or "LATER" in t]
    assert texts == ["likes denim", "bought jeans", "Jeans | Trousers", "fits the denim habit",
                     "Jeans", "Scarf", "Denim jeans.", "Wool scarf."]


def test_build_or_load_reuses_on_matching_fingerprint(corpus, tmp_path, monkeypatch):
    out = tmp_path / "bpe"
    first = tokenizer.build_or_load(out, corpus, vocab_size=1200)
    fp = json.loads((out / tokenizer.FINGERPRINT_FILE).read_text())
    assert fp["vocab_size"] == 1200 and fp["n_texts"] == len(corpus)

    monkeypatch.setattr(tokenizer, "train_tokenizer", lambda *a, **k: pytest.fail("should have reused the saved tokenizer"))
    again = tokenizer.build_or_load(out, corpus, vocab_size=1200)
    assert again.get_vocab() == first.get_vocab()
    monkeypatch.undo()

    changed = tokenizer.build_or_load(out, corpus[:-1], vocab_size=1200)  # another text selection -> retrain
    assert json.loads((out / tokenizer.FINGERPRINT_FILE).read_text())["n_texts"] == len(corpus) - 1
    assert len(changed) > 1000


# Words of letters the filler corpus never uses, each in many held-out texts: frequent enough that a
# BPE trained on those texts learns each as one token, so a leak shows in the vocabulary.
LEAK_PROBES = {"held-out product copy": "Wyvzek", "held-out product example": "Zoxvyl", "later day": "Yxwezo"}


def _frames_with_leak_probes(n: int = 40):
    """_frames() plus ``n`` distinct texts per probe word, each only in rows training must skip."""
    items, examples, catalogue = _frames()
    probe = LEAK_PROBES
    catalogue = pd.concat([catalogue, pd.DataFrame({  # product 20 is held out (split_unseen == "val")
        "product_code": 20, "prod_name": "Knit", "detail_desc": [f"A {probe['held-out product copy']} knit no {i}."
                                                                  for i in range(n)]})], ignore_index=True)
    examples = pd.concat([examples, pd.DataFrame({
        "user_profile": "likes wool", "behaviour": "bought a coat", "product": "Coat",
        "reason": [f"A {probe['held-out product example']} coat no {i}." for i in range(n)] +
                  [f"A {probe['later day']} scarf no {i}." for i in range(n)],
        "split_temporal": ["train"] * n + ["test"] * n, "split_unseen": ["test"] * n + ["train"] * n})],
        ignore_index=True)
    return items, examples, catalogue


def _one_token(tok, word: str) -> bool:
    return len(tok.encode(" " + word, add_special_tokens=False)) == 1


def test_cli_trains_from_parquet_files_without_held_out_text(corpus, tmp_path):
    def run(name, items, examples, catalogue):
        filler = pd.DataFrame({"product_code": 50, "prod_name": corpus, "detail_desc": corpus})
        catalogue = pd.concat([catalogue, filler], ignore_index=True)
        d = tmp_path / name
        d.mkdir()
        for table, df in [("items", items), ("examples", examples), ("catalogue", catalogue)]:
            df.to_parquet(d / f"{table}.parquet")
        return T.main(["--out", str(d / "tok"), "--vocab-size", "1100", "--items", str(d / "items.parquet"),
                       "--examples", str(d / "examples.parquet"), "--catalogue", str(d / "catalogue.parquet")])

    items, examples, catalogue = _frames_with_leak_probes()
    tok = run("split", items, examples, catalogue)
    assert len(tok) == 1100
    for where, word in LEAK_PROBES.items():  # spelt in pieces: the held-out texts were not trained on
        assert not _one_token(tok, word), f"the tokenizer learnt {word!r} from {where} text"
    # control: the same texts with nothing held out teach each probe word as one token
    leaky = run("all_train", items.assign(split_unseen="train"),
                examples.assign(split_temporal="train", split_unseen="train"), catalogue)
    assert all(_one_token(leaky, word) for word in LEAK_PROBES.values())
    d = tmp_path / "split"
    assert sorted(p.name for p in d.iterdir() if p.name.startswith(("tok", ".tok"))) == ["tok"]
    assert (d / "tok" / "tokenizer.json").exists()
