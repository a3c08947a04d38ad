"""Features the generator reads: the tokenizer, CLIP (``clip``, fine-tuning in ``cliptrain``), the
photo-embedding cache (``embed``) and the retrieval datastore with its neighbours (``retrieval``)."""
