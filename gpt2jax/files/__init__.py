"""The files gpt2jax writes and reads back: workdirs' names and records, locks, atomic replaces."""
