"""From a model to shown reasons: decoding (``generate``, ``kvcache``), constrained decoding
(``constraints``), the filter (``filters``) and the one candidates -> shown-reason path (``shown``)."""
