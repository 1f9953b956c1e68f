"""gpt2jax: train GPT-2 from scratch in JAX/Flax and study how its loss scales with compute.

docs/ARCHITECTURE.md maps the modules. Array names carry their shapes (``logits_BxTxV``);
a letter means one thing everywhere in the package:

  A  accumulated micro-batches of one optimizer step
  B  batch rows (this process's share of a batch)     G  a global batch's rows, over all processes
  T  sequence positions (queries, block_size)          S  key positions (attention, a KV cache)
  P  prompt tokens                                    N  a count of items: tokens, batches, new tokens
  D  model width   H  heads   K  head size   F  MLP width   V  padded vocabulary   L  layers
  W  scoring windows
  M  Markov states and R successors of a state, C Markov chains (the synthetic source)
"""
