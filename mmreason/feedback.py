"""Purchase-feedback model, P(buy | customer, article, shown reason): ``python -m mmreason.feedback``.

It becomes the RL reward for the reason generator, so it scores *any* text: ``FeedbackModel.score`` and
``score_batch`` take arbitrary strings.

Pairs. Positives are real purchases (one per customer-article-day). Negatives: for each positive,
``negatives`` articles that other customers bought in the same 7-day period (days // 7) and this
customer did not buy from that day to the period's end (from the whole catalogue where the period offers
too few). Every pair gets a silver reason built *the same way* for positives and negatives: ``build_hook(article, the customer's history as of
that day)`` + the article's copy, exactly as ``mmreason.data`` builds the targets. (Borrowing another
customer's reason for a negative would leak the label: a borrowed hook names purchases that are not in
this customer's history, so "the reason names my own history" would separate the classes by construction.)

Features, all as of the pair's day (strictly earlier purchases only):
* history overlap: per attribute (type, colour, pattern, section, garment group, index group), how
  many earlier purchases share the article's value (log count and share); same article / same product
  bought before; history size;
* popularity: the article's purchases by everyone, in all and in the 4 weeks, before the start of the
  pair's 7-day period. Not "before the day": a negative is sampled from what others bought that week, so
  its own sampling purchase would often fall before the day while a positive's never does, and the model
  learnt that recent buys by others *lower* the odds -- an artefact. Counted over the splits a model may
  see (``recommend.ALLOWED``: train and val pairs count train-split purchases, test pairs train + val;
  ``score`` counts every split);
* photo: cosine of the article's photo embedding to the mean of the history's (when embeddings are given);
* text of the reason: overlap of its words with the words of the customer's history (names and attribute
  values) and with the article's own, its length, and hashed TF-IDF unigrams.
A logistic regression is trained on train-split days; AUC is reported on the val and test days, with the
reason text, without text features, with empty and with shuffled reasons, and on text features alone.
The sampled negatives are popularity-matched (bought by someone that week), so the AUC measures
"which of this week's articles will this customer buy", a harder task than buy vs random article.
"""
from __future__ import annotations

import sys

from mmreason.recsys.feedback_train import run


def main(argv=None) -> int:
    return run(argv)


if __name__ == "__main__":
    sys.exit(main())
