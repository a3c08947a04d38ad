"""mmreason.metrics against the reference libraries and against hand-computed cases."""
import math
import random

import numpy as np
import pytest
import sacrebleu
from pycocoevalcap.cider.cider import Cider
from rouge_score import rouge_scorer
from sacrebleu.metrics import BLEU

from mmreason import metrics as M

# Lowercase and punctuation-free, so sacrebleu's 13a tokenizer and ours split them identically.
HYPS = [
    "these black trousers go with the shirts you bought",
    "a light blue top for warm days",
    "a soft jersey dress in dark green",
    "slim jeans in washed denim for every day",
]
REFS = [
    "black trousers in a slim fit to match the shirts you bought",
    "a light blue top in airy cotton for summer days",
    "a dark green dress in soft jersey with long sleeves",
    "washed denim jeans with a slim leg",
]


def test_tokenize_keeps_contractions_and_hyphens():
    assert M.tokenize("You’ve got a T-shirt, in Light-Blue!") == ["you've", "got", "a", "t-shirt", "in", "light-blue"]


@pytest.mark.parametrize("n", [1, 4])
def test_bleu_matches_sacrebleu(n):
    expected = sacrebleu.corpus_bleu(HYPS, [REFS]) if n == 4 else BLEU(max_ngram_order=1).corpus_score(HYPS, [REFS])
    assert M.bleu(HYPS, REFS, n) == pytest.approx(expected.score, abs=1e-9)
    assert 0 < M.bleu(HYPS, REFS, n) < 100


def test_bleu1_by_hand_and_case_insensitive():
    # unigram precision 3/4, brevity penalty exp(1 - 5/4)
    assert M.bleu(["A b, c D."], ["a b x d e"], 1) == pytest.approx(100 * 0.75 * math.exp(-0.25))


def test_perfect_hyps_score_100():
    assert M.bleu(REFS, REFS, 4) == pytest.approx(100.0)
    assert M.bleu(REFS, REFS, 1) == pytest.approx(100.0)
    assert M.rouge(REFS, REFS) == pytest.approx({"rouge1": 100.0, "rouge2": 100.0, "rougeL": 100.0})


def test_rouge_matches_rouge_score():
    scorer = rouge_scorer.RougeScorer(["rouge1", "rouge2", "rougeL"], use_stemmer=False)
    scores = [scorer.score(r, h) for h, r in zip(HYPS, REFS)]
    ours = M.rouge(HYPS, REFS)
    for t in ("rouge1", "rouge2", "rougeL"):
        assert ours[t] == pytest.approx(100 * sum(s[t].fmeasure for s in scores) / len(scores))
    assert ours["rouge1"] > ours["rouge2"] > 0


def test_rouge_does_not_stem():
    assert M.rouge(["soft dresses"], ["soft dress"])["rouge1"] == pytest.approx(50.0)


@pytest.mark.parametrize("metric", [M.bleu, M.rouge, M.cider, M.embedding_similarity, M.evaluate_all])
def test_paired_metrics_reject_length_mismatch(metric):
    with pytest.raises(ValueError):
        metric(HYPS, REFS[:-1])


def test_cider_matches_pycocoevalcap_on_same_tokens():
    hyps = ["These BLACK trousers, for you!", "A light-blue top.", "Soft jersey dress", "Slim jeans"]
    refs = ["Black trousers in a slim fit.", "A light-blue top in cotton.", "A jersey dress", "Washed denim jeans"]
    gts = {0: ["black trousers in a slim fit"], 1: ["a light-blue top in cotton"], 2: ["a jersey dress"],
           3: ["washed denim jeans"]}
    res = {0: ["these black trousers for you"], 1: ["a light-blue top"], 2: ["soft jersey dress"], 3: ["slim jeans"]}
    expected, _ = Cider().compute_score(gts, res)
    assert M.cider(hyps, refs) == pytest.approx(expected)
    assert M.cider(refs, refs) > M.cider(hyps, refs) > 0


def test_cider_idf_needs_a_corpus():
    # one example: every n-gram is in every reference document, so IDF and the score are 0
    assert M.cider(["black trousers"], ["black trousers"]) == 0.0


def test_usr():
    assert M.usr(["a b", "a b"]) == 0.5
    assert M.usr(["a b", "A b.", "c"]) == pytest.approx(2 / 3)
    assert M.usr(["a", "b", "c"]) == 1.0


def test_distinct():
    assert M.distinct(["a a b"], 1) == pytest.approx(2 / 3)
    assert M.distinct(["a b a b"], 2) == pytest.approx(2 / 3)  # ab, ba, ab
    assert M.distinct(["a b", "a c"], 1) == pytest.approx(3 / 4)  # pooled over the corpus
    assert math.isnan(M.distinct(["a"], 2))


def test_self_bleu():
    assert M.self_bleu(["the black dress", "the black dress", "the black dress"]) == pytest.approx(100.0)
    assert M.self_bleu(["black trousers", "red dress", "green coat"]) == 0.0
    varied = [f"item {i} in colour {i % 7} with detail {i % 3}" for i in range(50)]
    # above max_samples, the seed's subset is what gets scored: the same as scoring that subset whole
    for seed in (1, 2):
        subset = random.Random(seed).sample(varied, 10)
        assert M.self_bleu(varied, max_samples=10, seed=seed) == pytest.approx(M.self_bleu(subset, max_samples=None))
    assert M.self_bleu(varied, max_samples=10, seed=1) != pytest.approx(M.self_bleu(varied, max_samples=10, seed=2))
    assert 0 < M.self_bleu(varied, max_samples=10) < 100


def test_mentioned_values_word_boundaries_and_longest_match():
    vocab = {"blue", "light blue", "tee", "top"}
    assert M.mentioned_values("A Light Blue top for teenagers", vocab) == {"light blue", "top"}
    assert M.mentioned_values("blue tee and a light blue top", vocab) == {"blue", "tee", "light blue", "top"}


def test_a_slash_value_is_named_by_its_parts():
    """"Jumpsuit/Playsuit" (normalised "jumpsuit playsuit") is what "jumpsuit" or "playsuit" names; a part that
    another value shares ("tights": Underwear Tights) is no alias, and an alias never hides a value of its own."""
    vocab = {"Jumpsuit/Playsuit", "Leggings/Tights", "Underwear Tights", "Dress"}
    assert M.mentioned_values("A jumpsuit, or a playsuit?", vocab) == {"jumpsuit playsuit"}
    assert M.mentioned_values("Leggings and opaque tights", vocab) == {"leggings tights"}
    assert M.mentioned_values("A jumpsuit", {"Dress"}) == set()  # the alias of a value not in the vocabulary
    assert M.value_index({"Leggings", "Leggings/Tights"})[("leggings",)] == "leggings"
    attrs = [{"type": "Jumpsuit/Playsuit"}, {"type": "Dress"}]
    g = M.attribute_grounding(["Sleeveless jumpsuit in jersey.", "Sleeveless jumpsuit in jersey."], attrs,
                              {"type": vocab})["type"]
    assert g["mention_rate"] == 1.0 and g["precision"] == 0.5 and g["contradiction"] == 0.5


def test_fmr():
    hyps = ["A black tee for you", "Made for teenagers", "A light blue top", "no features here"]
    features = [{"black", "trousers"}, {"tee"}, {"Light Blue"}, set()]
    assert M.fmr(hyps, features) == pytest.approx(2 / 3)  # "tee" is not in "teenagers"; last is skipped


def test_fcr():
    vocab = {"black", "blue", "light blue", "red"}
    assert M.fcr(["a black tee", "a light blue top", "black again"], vocab) == 0.5


def test_div():
    assert M.div([{"a", "b"}, {"a"}, {"c"}]) == pytest.approx(1 / 3)
    assert M.div([{"a"}, {"a"}]) == 1.0
    assert math.isnan(M.div([{"a"}]))


def test_attribute_grounding():
    vocab = {"colour": {"black", "blue", "light blue", "red"}, "type": {"trousers", "dress", "top"}}
    attrs = [
        {"colour": "Black", "type": "Trousers"},
        {"colour": "Light Blue", "type": "Top"},
        {"colour": "Red", "type": "Dress"},
        {"colour": "Black", "type": "Top"},
    ]
    hyps = [
        "These black trousers suit you.",
        "A light blue top for summer.",  # "blue" inside "light blue" is no contradiction
        "A black dress for you.",  # wrong colour
        "Something for you.",  # names nothing
    ]
    g = M.attribute_grounding(hyps, attrs, vocab)
    assert g["colour"] == pytest.approx({"mention_rate": 0.75, "precision": 2 / 3, "contradiction": 1 / 3})
    assert g["type"] == pytest.approx({"mention_rate": 0.75, "precision": 1.0, "contradiction": 0.0})
    assert g["overall"] == pytest.approx({"mention_rate": 0.75, "precision": 5 / 6, "contradiction": 1 / 6})


@pytest.mark.parametrize("copy, details", [
    ("Short, straight-cut dress in soft cotton jersey with 3/4-length sleeves.",
     {"sleeves": {"3/4-length"}, "fabric": {"jersey"}}),
    # a comma after the length, and up to two modifiers before "sleeves"
    ("Blouse in a crepe weave with a V-neck. Short, wide sleeves.",
     {"sleeves": {"short"}, "neckline": {"v"}, "fabric": {"crepe", "woven"}}),
    ("Top with long raglan balloon sleeves.", {"sleeves": {"long"}}),
    # the dress's length is not its sleeves'
    ("Long dress, short sleeves.", {"sleeves": {"short"}}),
    ("Short dress with long, wide sleeves.", {"sleeves": {"long"}}),
    ("Blouse in airy chiffon with a round, gathered neckline and flutter sleeves.",
     {"neckline": {"round"}, "fabric": {"chiffon"}}),
    ("Long-sleeved top in jersey with a round neckline.",
     {"sleeves": {"long"}, "neckline": {"round"}, "fabric": {"jersey"}}),
    # shoulder straps alone make it sleeveless; with sleeves named (a cold-shoulder blouse) they do not
    ("Jersey top with narrow shoulder straps.", {"sleeves": {"sleeveless"}, "fabric": {"jersey"}}),
    ("Cold shoulder blouse with narrow shoulder straps and 3/4-length sleeves.", {"sleeves": {"3/4-length"}}),
    # fabric is read in the first sentence only: later ones name trims and linings
    ("Dress in airy chiffon with a stand-up collar. Lace trim at the hem. Jersey lining.",
     {"neckline": {"stand-up collar"}, "fabric": {"chiffon"}}),
    # a trim's fabric is not the garment's
    ("Pyjama bottoms in soft satin with lace-trimmed hems and mesh panels.", {"fabric": {"satin"}}),
    # whole words: "knitwear" names no knit, "satiny" no satin
    ("Knitwear-style top in a satiny finish.", {}),
    ("Fine-knit jumper with a polo neck.", {"neckline": {"turtle or polo neck"}, "fabric": {"knit"}}),
    ("", {}),
])
def test_stated_details(copy, details):
    assert M.stated_details(copy) == details


def test_detail_agreement():
    refs = [
        "Blouse in satin with a stand-up collar and long sleeves.",
        "Top in jersey with short sleeves.",
        "Jeans in washed denim.",
        "Padded bikini top.",  # states no detail: nothing about it is scored
    ]
    copies = [
        "Blouse in airy chiffon with a stand-up collar and long sleeves.",  # fabric wrong, 2 right
        "Top in jersey with long sleeves.",  # sleeves wrong, fabric right
        "Jeans in washed denim with a V-neck.",  # a neckline its copy does not state: not scored
        "Top in jersey with long sleeves.",  # nothing to hold it to
    ]
    d = M.detail_agreement(copies, refs)
    assert d["detail_sleeves_precision"] == pytest.approx(1 / 2)
    assert d["detail_fabric_precision"] == pytest.approx(2 / 3)
    assert d["detail_neckline_precision"] == pytest.approx(1.0)
    assert d["detail_precision"] == pytest.approx(4 / 6)
    assert d["detail_contradiction"] == pytest.approx(2 / 4)
    assert d["detail_scored"] == pytest.approx(3 / 4)
    # a copy that keeps to its article's copy contradicts nothing; one that states nothing is never scored
    same = M.detail_agreement(refs, refs)
    assert same["detail_precision"] == 1.0 and same["detail_contradiction"] == 0.0
    silent = M.detail_agreement(["A pick for you."] * 4, refs)
    assert math.isnan(silent["detail_precision"]) and silent["detail_contradiction"] == 0.0
    assert silent["detail_scored"] == 0.0
    with pytest.raises(ValueError):
        M.detail_agreement(copies[:3], refs)


def test_a_generic_fabric_is_true_of_the_specific_fabrics_that_imply_it_and_not_the_reverse():
    satin, woven = "Blouse in satin with long sleeves.", "Blouse in woven fabric with long sleeves."
    d = M.detail_agreement([woven], [satin])  # satin is woven: not a contradiction, a correct value
    assert d["detail_fabric_precision"] == 1.0 and d["detail_contradiction"] == 0.0
    assert M.detail_conflicts(M.stated_details(woven), M.stated_details(satin)) == {}
    # the specific claim for a generic copy is not backed by it; the note names the copy's own value only
    assert M.detail_conflicts(M.stated_details(satin), M.stated_details(woven)) == {"fabric": ({"satin"}, {"woven"})}
    assert M.detail_agreement([satin], [woven])["detail_contradiction"] == 1.0
    # denim is a twill, and woven; a twill is no denim
    assert M.detail_agreement(["Jeans in twill.", "Jeans in woven fabric."], ["Jeans in denim."] * 2)[
        "detail_contradiction"] == 0.0
    assert M.detail_agreement(["Jeans in denim."], ["Trousers in twill."])["detail_contradiction"] == 1.0
    # a knitted article implies no weave ("satin jersey"), and jersey is still not woven
    assert M.implied_details({"fabric": {"satin", "jersey"}}) == {"fabric": {"satin", "jersey"}}
    assert M.detail_agreement([woven], ["Top in satin jersey."])["detail_contradiction"] == 1.0
    assert M.detail_agreement([woven], ["Top in jersey."])["detail_contradiction"] == 1.0
    assert M.implied_details({"sleeves": {"long"}}) == {"sleeves": {"long"}}
    assert M.IMPLIED_BY["twill"] == {"denim"} and "denim" in M.IMPLIED_BY["woven"]


def test_history_claims():
    assert M.history_claims("Like the black jeans you loved. Slim fit.") == ["like the black jeans you loved"]
    assert M.history_claims("Back AGAIN in black!") == ["back again in black"]
    assert M.history_claims("A black top in soft jersey. Made for you.") == []


def test_history_claim_precision():
    hyps = [
        "You've bought black before. These black trousers are slim.",  # black is in history: supported
        "Like the jeans you love, a new pair. Slim jeans.",  # no history at all
        "Your favourite colour is back: blue. A blue dress.",  # blue was never bought
        "A black top in soft jersey.",  # no claim
        "A red dress to go with the black jeans you bought.",  # names the new article and the history
    ]
    histories = [{"Black", "Trousers"}, [], {"red", "dress"}, {"black"}, {"black", "jeans"}]
    values = {"black", "blue", "red", "trousers", "dress", "jeans"}
    out = M.history_claim_precision(hyps, histories, values=values)
    assert out == pytest.approx({"history_claim_rate": 0.8, "history_claim_precision": 0.5})
    # by default only values someone has bought are looked for, so the unknown "blue" goes unnoticed
    assert M.history_claim_precision(hyps, histories)["history_claim_precision"] == 0.75
    # a claim that names no value is still a claim: unsupported for a user with no history
    bare = M.history_claim_precision(["You've bought this before. Soft jersey."] * 2, [[], {"black"}], values=values)
    assert bare == pytest.approx({"history_claim_rate": 1.0, "history_claim_precision": 0.5})
    # a real purchase's name cited in a claim is no claim about its values; an invented name is read
    cites = ["More Jersey Fancy, like the Strap top you bought 5 months ago. Fitted top."] * 2
    got = M.history_claim_precision(cites, [{"vest top"}] * 2, values={"top", "vest top"},
                                    names=[{"Strap top"}, {"Other"}])
    assert got["history_claim_precision"] == 0.5
    assert M.history_claim_precision(cites[:1], [{"vest top"}], values={"top", "vest top"})["history_claim_precision"] == 0


def test_name_citation_precision():
    hyps = ["You have bought it twice, most recently the Luna skinny 2 months ago. Jeans.",  # made up
            "In black, like the Tove top you bought last week. Top.",                       # real
            "A pick from Divided to start with. Top.",                                     # names nothing
            "Like the Tove top you bought, and most recently the Ace Dress(1). Top."]       # two, both real
    names = [{"Tove top"}, {"Tove top", "Other"}, {"Tove top"}, {"Tove top", "Ace Dress(1)"}]
    out = M.name_citation_precision(hyps, names)
    assert out == {"name_citations": 4.0, "name_citation_precision": 3 / 4}
    assert math.isnan(M.name_citation_precision(hyps[2:3], names[2:3])["name_citation_precision"])
    assert M.cited_purchases("most recently the luna skinny 2 months ago") == ["luna skinny 2 months ago"]
    assert not M.cites_a_purchase("luna skinny 2 months ago", {"luna"[:2]})  # a whole name, not a fragment
    assert M.cites_a_purchase("ibiza vis", {"ibiza vis trs"})  # "the Ibiza Vis. TRS": the full stop ends the sentence


def test_personalisation():
    hyps = ["You like black. Black trousers.", "You like black. Black trousers.",
            "You like red. Red dress.", "You often buy dresses. Red dress.", "Another reason.", "Solo."]
    users = ["u1", "u2", "u1", "u2", "u2", "u3"]
    articles = ["A", "A", "B", "B", "B", "C"]
    out = M.personalisation(hyps, users, articles)
    # A: identical (distance 0); B: 1 - |{you, red, dress}| / 7 = 4/7; C has one user only
    assert out == pytest.approx({"personalised_share": 0.5, "cross_user_distance": 2 / 7, "groups": 2.0})


def test_split_reason():
    assert M.split_reason("Your go-to black, again. Slim trousers in stretch twill.") == (
        "Your go-to black, again.", "Slim trousers in stretch twill.")
    assert M.split_reason("Slim trousers. Made for you.") == ("", "Slim trousers. Made for you.")


def test_evaluate_all_without_embedding():
    attrs = [{"colour": "black", "type": "trousers"}, {"colour": "light blue", "type": "top"},
             {"colour": "dark green", "type": "dress"}, {"colour": "blue", "type": "jeans"}]
    features = [{a["colour"], a["type"]} for a in attrs]
    out = M.evaluate_all(HYPS, REFS, features=features, attrs=attrs, histories=[{"shirts"}, [], [], []],
                         user_ids=["u1", "u2", "u1", "u2"], article_ids=["A", "A", "B", "C"], with_embedding=False)
    assert out["bleu4"] == pytest.approx(M.bleu(HYPS, REFS, 4))
    assert out["fmr"] == 1.0  # every hyp names its colour or type
    assert out["fcr"] == pytest.approx(7 / 8)  # "blue" is never named on its own
    assert out["grounding_colour_precision"] == 1.0
    assert out["history_claim_rate"] == 0.25 and out["history_claim_precision"] == 1.0
    assert out["personalisation_groups"] == 1.0
    assert "embedding_similarity" not in out


def test_embedding_similarity():
    same = M.embedding_similarity(["Black slim trousers in stretch twill."], ["Black slim trousers in stretch twill."])
    close = M.embedding_similarity(["Black slim trousers in stretch twill."], ["Dark skinny pants made of stretchy fabric."])
    unrelated = M.embedding_similarity(["Black slim trousers in stretch twill."], ["The train to Leeds was late again."])
    assert same == pytest.approx(1.0, abs=1e-4)
    assert same > close > unrelated


def test_grounding_does_not_read_a_cited_purchase_name_as_a_claim():
    """"most recently with the Siri cardigan" names a purchase, not the article's type: with the user's names
    grounding skips it (a sweater's reason naming no type is no contradiction); an invented name is still read."""
    hyp = "Black is a regular: most recently with the Siri cardigan. Soft jumper with ribbing. In black."
    assert M.without_cited_names(hyp, ["Siri cardigan"]) == M.tokenize(
        "Black is a regular: most recently with the. Soft jumper with ribbing. In black.")
    assert "cardigan" in M.without_cited_names(hyp, ["Lotta top"])          # not a real purchase: read
    assert "lunar" in M.without_cited_names("Like the Lunar top you bought.", ["Luna"])  # whole words only
    assert M.without_cited_names("You bought the Siri cardigan, like the Siri cardigan 2 weeks ago.",
                                 ["siri cardigan"]) == M.tokenize("You bought the, like the 2 weeks ago.")
    attrs = [{"type": "Sweater"}]
    vocab = {"type": {"Sweater", "Cardigan"}}
    before = M.attribute_grounding([hyp], attrs, vocab)["type"]
    after = M.attribute_grounding([hyp], attrs, vocab, names=[["Siri cardigan"]])["type"]
    assert before["mention_rate"] == 1.0 and before["precision"] == 0.0
    assert after["mention_rate"] == 0.0
    honest = "You bought the Siri cardigan. A sweater in black."
    assert M.attribute_grounding([honest], attrs, vocab, names=[["Siri cardigan"]])["type"]["precision"] == 1.0


def test_paired_ratio_is_the_ratio_of_means_with_a_paired_interval():
    rng = np.random.default_rng(1)
    base = rng.gamma(2.0, 1.0, 300)
    assert M.paired_ratio(base, base) == (0.0, 0.0, 0.0)          # the same examples: no spread at all
    r, lo, hi = M.paired_ratio(1.2 * base, base)                   # a uniform 20% gain is exact in every resample
    assert r == pytest.approx(0.2) and lo == pytest.approx(0.2) and hi == pytest.approx(0.2)
    shifted = base * 1.15 + rng.normal(0, 0.3, 300)                # a clear gain: the interval excludes 0
    r, lo, hi = M.paired_ratio(shifted, base)
    assert lo < r < hi and lo > 0
    noise = base + rng.normal(0, 1.0, 300)                         # noise alone: the interval holds 0 and is wide
    r, lo, hi = M.paired_ratio(noise, base)
    assert lo < 0 < hi and hi - lo > 0.05
    assert M.paired_ratio(noise, base, seed=3) != (r, lo, hi) and M.paired_ratio(noise, base) == (r, lo, hi)
    with pytest.raises(ValueError, match="paired"):
        M.paired_ratio(base[:5], base)


def test_paired_ratio_to_a_base_that_scores_nothing_is_nan():
    assert all(math.isnan(v) for v in M.paired_ratio([1.0, 2.0], [0.0, 0.0]))
    r, lo, hi = M.paired_ratio([1.0, 1.0, 1.0], [0.0, 0.0, 3.0])  # some resamples hold the zeros alone: inf
    assert r == 0.0 and lo <= r and hi == float("inf")
