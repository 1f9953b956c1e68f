"""Inference: weights restored without an optimizer, sampling, scoring and export."""
