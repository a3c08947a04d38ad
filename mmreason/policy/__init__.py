"""RL fine-tuning of the generator on the feedback model's reward (``reinforce``)."""
