"""Recommendation without the generator: ranking metrics, the task and context, the baselines,
the two-tower model, the one-customer API, and the feedback (purchase-probability) model."""
