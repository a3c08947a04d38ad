"""Training the generator: the Lightning data module and module, run loading (``runs``), the
artifact pipeline a run needs, DP-SGD accounting (``privacy``) and the LightningCLI (``cli``)."""
