"""Purchase-feedback model, P(buy | customer, article, shown reason): ``python -m mmreason.feedback``.

The command; the library is ``mmreason.recsys.feedback``, whose docstring says what it does and why.
"""
from __future__ import annotations

import sys

from mmreason import cli
from mmreason.recsys.feedback import FeedbackConfig
from mmreason.recsys.feedback_train import FeedbackRun, run
from mmreason.recsys.twotower import EMBEDDINGS_HELP


def get_parser() -> cli.ArgumentParser:
    return cli.parser(FeedbackRun, FeedbackConfig, prog="python -m mmreason.feedback", description=__doc__.split("\n")[0],
                      helps={"embeddings": EMBEDDINGS_HELP})


def main(argv=None) -> int:
    return run(*get_parser().parse(argv))


if __name__ == "__main__":
    sys.exit(main())
