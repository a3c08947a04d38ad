"""Purchase-feedback model, P(buy | customer, article, shown reason): ``python -m mmreason.feedback``.

The command; the library is ``mmreason.recsys.feedback``, whose docstring says what it does and why.
"""
from __future__ import annotations

import sys

from mmreason.recsys.feedback_train import run


def main(argv=None) -> int:
    return run(argv)


if __name__ == "__main__":
    sys.exit(main())
