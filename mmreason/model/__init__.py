"""The plain ``nn.Module`` (``network``: CLIP prefix + text prompt -> GPT-2) and the batching of
examples into its inputs (``collate``)."""
