"""gpt2jax weights inside EleutherAI's lm-evaluation-harness, without PyTorch (``pip install -e '.[lm-eval]'``).

``GPT2JaxLM`` answers lm-eval's three kinds of request from a run's checkpoint or a Hugging
Face GPT-2 directory:

``loglikelihood``
    (context, continuation) -> (the continuation's summed log-probability, whether greedy
    decoding produces it), tokenized as lm-eval's Hugging Face model does (a context's
    trailing spaces move to the continuation; an empty context is ``<|endoftext|>``) and scored
    by ``training.eval_tasks.continuation_scores``, the scorer of ``evaluate --task hellaswag``:
    rows padded at the end to power-of-two lengths, so a few shapes compile.
``loglikelihood_rolling``
    a whole text's log-probability, its first token predicted from ``<|endoftext|>``, by windows
    of ``block_size`` (lm-eval's rolling windows with a context of one token): the windows of
    ``scoring.token_logprobs``, scored as continuations by the same padded batches.
``generate_until``
    greedy decoding (``sampling.generate_padded``) to ``max_gen_toks`` tokens, cut at the first
    stop string; prompts padded at the end to the same power-of-two length decode as one batch,
    each row at its own positions, so each row's tokens are those of its prompt alone.
"""

from __future__ import annotations

from collections import defaultdict

import jax
import numpy as np
from lm_eval.api.model import TemplateLM

from gpt2jax.data.tokenizer import get_tokenizer
from gpt2jax.inference import sampling, scoring
from gpt2jax.training import eval_tasks

DEFAULT_MAX_GEN_TOKS = 256  # lm-eval's default for generation tasks that name none


class GPT2JaxLM(TemplateLM):
    def __init__(self, loaded, *, batch_size: int = 32):
        super().__init__()
        self.loaded = loaded
        self.batch_size = batch_size
        self.tokenizer = get_tokenizer()
        self.block_size = loaded.model_config.block_size

    @property
    def eot_token_id(self) -> int:
        return self.tokenizer.eot_token

    @property
    def max_length(self) -> int:
        return self.block_size

    def tok_encode(self, string: str, add_special_tokens: bool | None = None, **kwargs) -> list[int]:
        return self.tokenizer.encode(string, allowed_special={"<|endoftext|>"})

    def tok_decode(self, tokens, **kwargs) -> str:
        return self.tokenizer.decode(list(tokens))

    def _loglikelihood_tokens(self, requests, disable_tqdm: bool = False, **kwargs) -> list[tuple[float, bool]]:
        scores = self._scores([(context, continuation) for _, context, continuation in requests])
        results = []
        for (key, _, _), (logprobs, greedy) in zip(requests, scores):
            result = (float(np.sum(logprobs, dtype=np.float64)), greedy)
            self.cache_hook.add_partial("loglikelihood", key, result)
            results.append(result)
        return results

    def loglikelihood_rolling(self, requests, disable_tqdm: bool = False) -> list[float]:
        # The windows of all texts share batches, so texts of many lengths compile a few shapes
        # (scored one text at a time, each text's length was a shape).
        windows, owners = [], []
        for index, request in enumerate(requests):
            (text,) = request.args
            text_windows = scoring.rolling_windows([self.eot_token_id, *self.tok_encode(text)], self.block_size)
            windows.extend(text_windows)
            owners.extend([index] * len(text_windows))
        totals = np.zeros(len(requests), np.float64)
        for index, (logprobs, _) in zip(owners, self._scores(windows)):
            totals[index] += np.sum(logprobs, dtype=np.float64)
        results = [float(total) for total in totals]
        for request, result in zip(requests, results):
            self.cache_hook.add_partial("loglikelihood_rolling", request.args, result)
        return results

    def generate_until(self, requests, disable_tqdm: bool = False) -> list[str]:
        # Prompts decode in batches of one padded length (a power of two) and one max_gen_toks.
        groups = defaultdict(list)
        for index, request in enumerate(requests):
            context, gen_kwargs = request.args
            until = gen_kwargs.get("until") or []
            until = [until] if isinstance(until, str) else list(until)
            max_new = int(gen_kwargs.get("max_gen_toks", DEFAULT_MAX_GEN_TOKS))
            # A prompt longer than the context conditions on its last block_size tokens, as generate's do.
            prompt = (self.tok_encode(context) or [self.eot_token_id])[-self.block_size :]
            groups[eval_tasks.padded_length(len(prompt), self.block_size), max_new].append((index, prompt, until))
        results = [""] * len(requests)
        for (length, max_new), members in groups.items():
            for start in range(0, len(members), self.batch_size):
                chunk = members[start : start + self.batch_size]
                for (index, _, until), row in zip(chunk, self._generate([p for _, p, _ in chunk], length, max_new)):
                    text = self.tok_decode(row)
                    for stop in until:
                        text = text.split(stop, 1)[0]
                    results[index] = text
                    self.cache_hook.add_partial("generate_until", requests[index].args, text)
        return results

    def _scores(self, pairs) -> list[tuple[np.ndarray, bool]]:
        return eval_tasks.continuation_scores(
            self.loaded.graphdef, self.loaded.params, pairs, self.block_size, batch_size=self.batch_size
        )

    def _generate(self, prompts: list[list[int]], length: int, max_new: int) -> np.ndarray:
        """Greedy tokens after each prompt, [len(prompts), max_new], from one batch padded to batch_size x length.

        Rows are padded too (one-token prompts, dropped), so each padded length compiles once.
        """
        prompts_BxP = np.zeros((self.batch_size, length), np.int32)
        lengths_B = np.ones(self.batch_size, np.int32)
        for row, prompt in enumerate(prompts):
            prompts_BxP[row, : len(prompt)] = prompt
            lengths_B[row] = len(prompt)
        new_BxN = sampling.generate_padded(
            self.loaded.graphdef,
            self.loaded.params,
            prompts_BxP,
            lengths_B,
            jax.random.key(0),
            max_new_tokens=max_new,
            temperature=0.0,
            top_k=0,
        )
        return np.asarray(new_BxN)[: len(prompts)]


def task_manager(tasks: list[str], include_path: str | None):
    """lm-eval's TaskManager, once every task in ``tasks`` is known to it (lm-eval's own, or include_path's)."""
    from lm_eval.tasks import TaskManager

    manager = TaskManager(include_path=include_path)
    unknown = [task for task in tasks if task not in manager.all_tasks]
    if unknown:
        raise ValueError(
            f"lm-eval has no task {unknown[0]!r}; name one that `lm_eval ls tasks` lists, or pass --include_path "
            "with a folder of task YAMLs."
        )
    return manager


def evaluate(loaded, tasks: list[str], manager, *, limit: int | None, num_fewshot: int | None, batch_size: int):
    """lm-eval's ``simple_evaluate`` of ``tasks`` on ``loaded``: its results dict, without per-sample logs."""
    from lm_eval import evaluator

    return evaluator.simple_evaluate(
        model=GPT2JaxLM(loaded, batch_size=batch_size),
        tasks=tasks,
        num_fewshot=num_fewshot,
        limit=limit,
        task_manager=manager,
        log_samples=False,
        # Resamples for the stderr of metrics without a closed form (acc and acc_norm have one);
        # lm-eval's default is 100,000.
        bootstrap_iters=1000,
        torch_random_seed=None,
    )
