"""Serving: the explainer (recsys wired to the generator), the service and its batcher, the load test."""
