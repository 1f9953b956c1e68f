"""Data: the GPT-2 tokenizer, text and synthetic sources, preparation to token files, batching."""
