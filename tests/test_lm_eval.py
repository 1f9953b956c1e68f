"""gpt2jax inside lm-evaluation-harness (the optional extra): offline, on a task YAML and data written here.

The harness's log-likelihoods must be those of gpt2jax's own scorer, and its multiple-choice acc
the HellaSwag acc that ``evaluate --task hellaswag`` gives on the same examples.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import jax
import numpy as np
import pytest

pytest.importorskip("lm_eval")

from lm_eval.api.instance import Instance  # noqa: E402

from gpt2jax.data.tokenizer import get_tokenizer  # noqa: E402
from gpt2jax.inference import harness, sampling, scoring, weights  # noqa: E402
from gpt2jax.init_from import weights_source  # noqa: E402
from gpt2jax.training import eval_tasks  # noqa: E402
from tests.helpers import REPO  # noqa: E402

FIXTURE = Path(__file__).parent / "data" / "hf_tiny"
TOLERANCE = 1e-4
TASK_YAML = """\
task: gpt2jax_tiny_choice
dataset_path: json
dataset_kwargs:
  data_files:
    validation: {data}
validation_split: validation
output_type: multiple_choice
doc_to_text: context
doc_to_target: label
doc_to_choice: endings
metric_list:
  - metric: acc
    aggregation: mean
    higher_is_better: true
"""


@pytest.fixture(scope="module")
def loaded():
    return weights.load_weights(weights_source(None, f"hf:{FIXTURE}", None))


@pytest.fixture(scope="module")
def examples():
    return json.loads((FIXTURE / "hellaswag.json").read_text())


def requests(kind: str, arguments: list[tuple]) -> list[Instance]:
    return [Instance(request_type=kind, doc={}, arguments=args, idx=i) for i, args in enumerate(arguments)]


def test_loglikelihoods_are_the_scorers(loaded, examples):
    pairs = [(example["context"], " " + ending) for example in examples for ending in example["endings"]]
    lm = harness.GPT2JaxLM(loaded, batch_size=5)
    got = lm.loglikelihood(requests("loglikelihood", pairs))
    tokenizer = get_tokenizer()
    expected = eval_tasks.continuation_logprobs(
        loaded.graphdef,
        loaded.params,
        [(tokenizer.encode(context), tokenizer.encode(ending)) for context, ending in pairs],
        loaded.model_config.block_size,
    )
    np.testing.assert_allclose([value for value, _ in got], [row.sum() for row in expected], atol=TOLERANCE, rtol=0)
    # The reference's summed losses, from transformers' PyTorch GPT-2 on the same weights.
    reference = [-summed for example in examples for summed, _ in example["losses"]]
    np.testing.assert_allclose([value for value, _ in got], reference, atol=TOLERANCE, rtol=1e-6)


def test_greedy_flags_what_greedy_decoding_produces(loaded):
    lm = harness.GPT2JaxLM(loaded)
    prompt = "The quick brown fox"
    generated = lm.generate_until(requests("generate_until", [(prompt, {"until": [], "max_gen_toks": 3})]))[0]
    (_, greedy), (_, other) = lm.loglikelihood(requests("loglikelihood", [(prompt, generated), (prompt, " zebra")]))
    assert greedy and not other


def test_rolling_loglikelihood_scores_every_token_after_endoftext(loaded):
    lm = harness.GPT2JaxLM(loaded)
    text = "A short text that fits one window."
    (rolling,) = lm.loglikelihood_rolling(requests("loglikelihood_rolling", [(text,)]))
    # The same tokens as one continuation of <|endoftext|>, through the padded multiple-choice path.
    (expected,) = lm.loglikelihood(requests("loglikelihood", [("", text)]))
    assert rolling == pytest.approx(expected[0], abs=TOLERANCE)


def test_generation_stops_at_until_and_batches_like_one_at_a_time(loaded):
    lm = harness.GPT2JaxLM(loaded, batch_size=4)
    prompts = ["The cat sat on", "A dog ran to", "The cat sat on"]  # the same length: one batch
    alone = [lm.generate_until(requests("generate_until", [(p, {"until": [], "max_gen_toks": 6})]))[0] for p in prompts]
    together = lm.generate_until(requests("generate_until", [(p, {"until": [], "max_gen_toks": 6}) for p in prompts]))
    assert together == alone and alone[0] == alone[2]
    stop = alone[1][2:4]
    (cut,) = lm.generate_until(requests("generate_until", [(prompts[1], {"until": [stop], "max_gen_toks": 6})]))
    assert cut == alone[1].split(stop, 1)[0]


def test_many_lengths_compile_a_few_shapes_and_score_and_decode_as_each_alone(loaded, monkeypatch):
    block_size = loaded.model_config.block_size
    words = (FIXTURE / "text.txt").read_text().split()
    texts = [" ".join(words[: 1 + 7 * i]) for i in range(20)]  # the last four need two windows of the context
    prompts = [" ".join(words[: 1 + 14 * i]) for i in range(10)]  # the longest decodes past the context
    tokenizer = get_tokenizer()
    assert len({len(tokenizer.encode(text)) for text in texts}) == 20
    assert len({len(tokenizer.encode(prompt)) for prompt in prompts}) == 10
    # The shapes that reach the jitted scorer and generator: each distinct one compiles once.
    shapes = {"rolling": set(), "generate": set()}
    score, generate = eval_tasks._target_logprobs, sampling.generate_padded

    def counted_score(graphdef, params, inputs_BxT, targets_BxT):
        shapes["rolling"].add(inputs_BxT.shape)
        return score(graphdef, params, inputs_BxT, targets_BxT)

    def counted_generate(graphdef, params, prompts_BxP, lengths_B, key, **static):
        shapes["generate"].add((prompts_BxP.shape, static["max_new_tokens"]))
        return generate(graphdef, params, prompts_BxP, lengths_B, key, **static)

    monkeypatch.setattr(eval_tasks, "_target_logprobs", counted_score)
    monkeypatch.setattr(sampling, "generate_padded", counted_generate)
    lm = harness.GPT2JaxLM(loaded, batch_size=8)
    rolling = lm.loglikelihood_rolling(requests("loglikelihood_rolling", [(text,) for text in texts]))
    until = {"until": [], "max_gen_toks": 8}
    generated = lm.generate_until(requests("generate_until", [(prompt, until) for prompt in prompts]))
    monkeypatch.undo()
    # At most one shape per power-of-two length up to the context (one at a time: 17 and 10).
    assert 1 <= len(shapes["rolling"]) <= int(math.log2(block_size)) + 1
    buckets = {eval_tasks.padded_length(min(len(tokenizer.encode(p)), block_size), block_size) for p in prompts}
    assert shapes["generate"] == {((8, length), 8) for length in buckets} and len(buckets) == 4

    alone = [
        scoring.token_logprobs(
            loaded.graphdef, loaded.params, [lm.eot_token_id, *tokenizer.encode(text)], block_size, batch_size=2
        )
        for text in texts
    ]
    np.testing.assert_allclose(rolling, [logprobs.sum(dtype=np.float64) for logprobs in alone], atol=TOLERANCE, rtol=0)
    for prompt, text in zip(prompts, generated):
        prompt_1xP = np.asarray([tokenizer.encode(prompt)], np.int32)
        out_1xN = sampling.generate(
            loaded.graphdef, loaded.params, prompt_1xP, jax.random.key(0), max_new_tokens=8, temperature=0.0, top_k=0
        )
        assert text == tokenizer.decode(np.asarray(out_1xN)[0, prompt_1xP.shape[1] :].tolist())


def test_the_command_prints_the_table_writes_json_and_matches_hellaswag_acc(loaded, examples, tmp_path):
    data = tmp_path / "choice.jsonl"
    data.write_text(
        "".join(json.dumps({key: e[key] for key in ("context", "endings", "label")}) + "\n" for e in examples)
    )
    tasks = tmp_path / "tasks"
    tasks.mkdir()
    (tasks / "tiny_choice.yaml").write_text(TASK_YAML.format(data=data))
    out = tmp_path / "results.json"
    env = dict(
        os.environ,
        PYTHONPATH=str(REPO),
        HF_DATASETS_OFFLINE="1",
        HF_HUB_OFFLINE="1",
        HF_DATASETS_CACHE=str(tmp_path / "datasets"),
    )
    command = [sys.executable, "-m", "gpt2jax.cli.lm_eval", f"--init_from=hf:{FIXTURE}", "--tasks=gpt2jax_tiny_choice"]
    result = subprocess.run(
        [*command, f"--include_path={tasks}", f"--output={out}"],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "gpt2jax_tiny_choice" in result.stdout and "|acc" in result.stdout.replace(" ", "")
    acc = json.loads(out.read_text())["results"]["gpt2jax_tiny_choice"]["acc,none"]
    scores = eval_tasks.hellaswag_scores(loaded.graphdef, loaded.params, examples, loaded.model_config.block_size)
    assert acc == pytest.approx(scores["acc"])
    refused = subprocess.run(
        [*command[:-1], "--tasks=no_such_task", f"--include_path={tasks}", f"--output={tmp_path / 'never.json'}"],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert refused.returncode == 1 and refused.stderr.strip().splitlines()[-1].startswith(
        "error: lm-eval has no task 'no_such_task'"
    )
    assert not (tmp_path / "never.json").exists()
