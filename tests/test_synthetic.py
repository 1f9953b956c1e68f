"""The synthetic sources' exact entropy rates: the single Markov chain and the Zipf mixture of Markov topics."""

import math

import numpy as np
import pytest

from gpt2jax.data.synthetic import SyntheticLanguage


def entropy(probabilities) -> float:
    probabilities = np.asarray(probabilities, dtype=float)
    return float(-np.sum(probabilities * np.log(probabilities)))


def renewal_entropy_rate(language: SyntheticLanguage) -> float:
    """Documents are independent: H(document) / E[tokens per document], counted by hand.

    A document's first word comes from <|endoftext|>'s row (the topic, then a Zipf start), every
    word then makes one move of the same entropy (Zipf successors, or the end), and it has
    1 / end_probability words on average plus its <|endoftext|>.
    """
    zipf = 1.0 / np.arange(1, language.support_size + 1) ** language.zipf_exponent
    zipf /= zipf.sum()
    end = language.end_probability
    start = entropy(language.topic_weights()) + entropy(zipf)
    word = entropy(np.append((1 - end) * zipf, end))
    return (start + word / end) / (1 / end + 1)


@pytest.mark.parametrize(
    "options",
    [
        dict(num_states=64, support_size=32, topics=32, vocabulary="compact"),
        dict(num_states=16, support_size=4, topics=8, topic_exponent=1.5, zipf_exponent=0.7, end_probability=0.05),
        dict(num_states=512, support_size=32, vocabulary="compact"),
    ],
)
def test_entropy_rate_is_the_renewal_count(options):
    language = SyntheticLanguage(**options)
    assert language.entropy_rate_nats() == pytest.approx(renewal_entropy_rate(language), rel=1e-10)


def test_one_topic_is_the_single_chain_of_the_earlier_study():
    # experiments/REPORT.md's earlier source: its entropy rate, pinned before topics existed.
    language = SyntheticLanguage(num_states=512, support_size=32, vocabulary="compact")
    assert language.entropy_rate_nats() == pytest.approx(2.8929541648, abs=1e-9)
    assert SyntheticLanguage.from_source("synthetic:vocabulary=compact,topics=1", seed=0) == SyntheticLanguage(
        vocabulary="compact"
    )


def test_topics_generate_their_entropy_rate_and_their_zipf_weights():
    language = SyntheticLanguage(num_states=16, support_size=4, topics=8, end_probability=0.05, seed=2)
    tokens = language.generate(400_000, seed=0).astype(np.int64)
    assert len(language.token_ids) == 8 * 16 + 1 and language.vocab_size == 50257
    matrix = language.transition_matrix()
    np.testing.assert_allclose(matrix.sum(axis=1), 1.0)
    # Mean log-loss of the true chain on its own sample: the entropy rate, within sampling error.
    state_of_token = np.full(50257, -1)
    state_of_token[language.token_ids] = np.arange(len(language.token_ids))
    states = state_of_token[tokens]
    steps = matrix[states[:-1], states[1:]]
    assert (steps > 0).all()  # no move the chain cannot make
    assert -np.mean(np.log(steps)) == pytest.approx(language.entropy_rate_nats(), abs=0.01)
    # A document stays in its topic, and topics come with weights 1/k.
    starts = states[1:][states[:-1] == language.eot_state]
    topics = starts // language.num_states
    frequencies = np.bincount(topics, minlength=8) / len(topics)
    np.testing.assert_allclose(frequencies, language.topic_weights(), atol=0.02)
    moves = np.flatnonzero((states[:-1] != language.eot_state) & (states[1:] != language.eot_state))
    assert np.all(states[moves] // language.num_states == states[moves + 1] // language.num_states)


def test_bad_topic_options_are_refused():
    with pytest.raises(ValueError, match="topics x num_states must be between 1 and 50256"):
        SyntheticLanguage(num_states=512, topics=100)
    with pytest.raises(ValueError, match="topic_exponent must be >= 0"):
        SyntheticLanguage(topics=2, topic_exponent=-1.0)
    assert math.isclose(SyntheticLanguage(topics=3, topic_exponent=0.0).topic_weights().sum(), 1.0)
