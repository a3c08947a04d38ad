"""Evaluation: the systems compared and their scores (``systems``), analysis and plots."""
