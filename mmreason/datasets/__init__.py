"""Data preparation: the H&M tables (``hm``), the prompt texts built from them (``prompts``), Amazon
Fashion (``amazon``), the splits, the silver reasons, and what counts as personal data (``pii``)."""
