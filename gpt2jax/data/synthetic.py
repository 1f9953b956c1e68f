"""A seeded Markov "language" over token ids whose entropy rate is known exactly.

A model trained on it has a known floor: its expected loss per token is at least
``entropy_rate_nats()``, which checks the whole training loop without a downloaded corpus.

The chain has ``num_states`` word states, each a distinct GPT-2 token id, plus <|endoftext|>.
From a word, the next word is one of ``support_size`` successors drawn with Zipf weights
``1 / rank**zipf_exponent`` (ranks shuffled over the successors), scaled by
``1 - end_probability``; with ``end_probability`` the document ends in <|endoftext|>. From
<|endoftext|>, the first word of the next document is drawn the same way. Tokens are emitted
as ids directly, with no BPE in between, so the entropy per token is exact.

``topics`` > 1 makes it a Zipf mixture of Markov "topics": each topic is such a chain over
``num_states`` words of its own, and a document first draws its topic k (from 1) with weight
``1 / k**topic_exponent``, then stays in it. The current word names its topic, so the process
is still one Markov chain (over ``topics * num_states`` words) and its entropy rate is exact;
but how often a row is seen now follows a power law, so a model's loss keeps falling with
data and with capacity as it learns ever rarer topics, the structure behind power-law
learning curves (Hutter 2021; Michaud et al. 2023). ``topics=1`` is the single chain above,
token for token.

``vocabulary``: 'gpt2' spreads the words over GPT-2's ids and ends documents with GPT-2's
<|endoftext|> (50256), so any GPT-2 model trains on it; 'compact' numbers the words 0..K-1
and <|endoftext|> K, for a model with ``vocab_size=K+1``. A tiny model's cost is then in
its blocks, not in a 50257-row output layer, which is what a CPU scaling sweep needs.

Shape letters (the package's legend, ``gpt2jax/__init__.py``): M states (words + <|endoftext|>), R
successors per state, C chains, T steps.
"""

from __future__ import annotations

import dataclasses
import functools

import numpy as np

from gpt2jax.data.tokenizer import EOT_TOKEN_ID, GPT2_VOCAB_SIZE

SOURCE_PREFIX = "synthetic"
VOCABULARIES = ("gpt2", "compact")


@dataclasses.dataclass(frozen=True)
class SyntheticLanguage:
    num_states: int = 512
    support_size: int = 32
    zipf_exponent: float = 1.0
    end_probability: float = 1 / 200
    vocabulary: str = "gpt2"
    topics: int = 1
    topic_exponent: float = 1.0
    seed: int = 0

    def __post_init__(self):
        if not 1 <= self.topics or not 1 <= self.topics * self.num_states <= EOT_TOKEN_ID:
            raise ValueError(
                f"synthetic topics x num_states must be between 1 and {EOT_TOKEN_ID}, got "
                f"{self.topics} x {self.num_states}."
            )
        if self.topic_exponent < 0:
            raise ValueError(f"synthetic topic_exponent must be >= 0, got {self.topic_exponent}.")
        if not 1 <= self.support_size <= self.num_states:
            raise ValueError(
                f"synthetic support_size must be between 1 and num_states={self.num_states}, got {self.support_size}."
            )
        if not 0 < self.end_probability < 1:
            raise ValueError(f"synthetic end_probability must be in (0, 1), got {self.end_probability}.")
        if self.zipf_exponent < 0:
            raise ValueError(f"synthetic zipf_exponent must be >= 0, got {self.zipf_exponent}.")
        if self.vocabulary not in VOCABULARIES:
            raise ValueError(f"synthetic vocabulary must be one of {', '.join(VOCABULARIES)}, got {self.vocabulary!r}.")
        if self.seed < 0:
            raise ValueError(f"synthetic seed must be >= 0, got {self.seed}.")

    @classmethod
    def from_source(cls, source: str, *, seed: int) -> SyntheticLanguage:
        """Parses ``synthetic`` or ``synthetic:num_states=64,support_size=8,vocabulary=compact,...``."""
        prefix, _, options = source.partition(":")
        if prefix != SOURCE_PREFIX:
            raise ValueError(f"{source!r} is not a synthetic source; write 'synthetic' or 'synthetic:key=value,...'.")
        field_types = {
            field.name: type(field.default)  # int, float or str, from the defaults
            for field in dataclasses.fields(cls)
            if field.name != "seed"
        }
        kwargs = {}
        for option in filter(None, options.split(",")):
            key, _, value = option.partition("=")
            if key not in field_types or not value:
                raise ValueError(f"bad synthetic option {option!r}; use key=value with keys {', '.join(field_types)}.")
            try:
                kwargs[key] = field_types[key](value)
            except ValueError:
                raise ValueError(
                    f"synthetic option {key} must be of type {field_types[key].__name__}, got {value!r}."
                ) from None
        return cls(**kwargs, seed=seed)

    @property
    def num_words(self) -> int:
        """Word states over all topics; topic k's words are states k * num_states ... (k + 1) * num_states - 1."""
        return self.topics * self.num_states

    @property
    def eot_state(self) -> int:
        return self.num_words

    @property
    def vocab_size(self) -> int:
        """Rows a model's embedding needs to read every id this language emits."""
        return GPT2_VOCAB_SIZE if self.vocabulary == "gpt2" else self.num_words + 1

    @property
    def eot_token_id(self) -> int:
        return EOT_TOKEN_ID if self.vocabulary == "gpt2" else self.num_words

    @functools.cached_property
    def token_ids(self) -> np.ndarray:
        """[M] the id of each state; the last state is <|endoftext|>."""
        if self.vocabulary == "compact":
            return np.arange(self.num_words + 1, dtype=np.uint16)
        word_ids = np.random.default_rng([self.seed, 0]).choice(EOT_TOKEN_ID, self.num_words, replace=False)
        return np.append(word_ids, EOT_TOKEN_ID).astype(np.uint16)

    def topic_weights(self) -> np.ndarray:
        """The probability that a document is about topic k, proportional to 1 / k**topic_exponent."""
        weights = 1.0 / np.arange(1, self.topics + 1, dtype=np.float64) ** self.topic_exponent
        return weights / weights.sum()

    @functools.cached_property
    def _transitions(self) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """Sparse rows of the chain: (successors [M-1, R+1], their probabilities, start words, their probabilities).

        A word's row holds its R successors (state indices, in its own topic) and, in column R,
        <|endoftext|>. The <|endoftext|> row is kept apart, over topics * R first words: the topic
        weight times that topic's Zipf start row.
        """
        words, support = self.num_states, self.support_size
        zipf_R = 1.0 / np.arange(1, support + 1, dtype=np.float64) ** self.zipf_exponent
        zipf_R /= zipf_R.sum()
        successors, starts = [], []
        for topic in range(self.topics):
            # Topic 0 draws what the single chain always drew, so topics=1 is that chain.
            rng = np.random.default_rng([self.seed, 1] if topic == 0 else [self.seed, 1, topic])
            # A random permutation per row; its first `support` entries are that row's successors,
            # so the Zipf ranks land on successors in random order. Row `words` is the start row.
            rows = np.argsort(rng.random((words + 1, words)), axis=1)[:, :support] + topic * words
            successors.append(rows[:words])
            starts.append(rows[words])
        successors = np.concatenate(
            [np.concatenate(successors), np.full((self.num_words, 1), self.eot_state)], axis=1
        ).astype(np.int32)
        probabilities = np.tile(
            np.append((1.0 - self.end_probability) * zipf_R, self.end_probability), (self.num_words, 1)
        )
        start_probabilities = (self.topic_weights()[:, None] * zipf_R).ravel()
        return successors, probabilities, np.concatenate(starts).astype(np.int32), start_probabilities

    def _sparse_transitions(self):
        """The [M, M] transition matrix as a scipy CSR matrix."""
        from scipy import sparse

        successors, probabilities, starts, start_probabilities = self._transitions
        rows = np.concatenate(
            [np.repeat(np.arange(self.num_words), successors.shape[1]), [self.eot_state] * len(starts)]
        )
        columns = np.concatenate([successors.ravel(), starts])
        values = np.concatenate([probabilities.ravel(), start_probabilities])
        size = self.num_words + 1
        return sparse.csr_matrix((values, (rows, columns)), shape=(size, size))  # entries are distinct per row

    def transition_matrix(self) -> np.ndarray:
        """[M, M] float64, row i the distribution of the state after state i."""
        return self._sparse_transitions().toarray()

    def stationary_distribution(self) -> np.ndarray:
        """[M] pi with pi P = pi, sum(pi) = 1: unique, since every state reaches <|endoftext|>."""
        from scipy import sparse
        from scipy.sparse.linalg import spsolve

        matrix = self._sparse_transitions()
        system = (matrix.T - sparse.identity(matrix.shape[0])).tolil()
        system[-1, :] = 1.0  # replace one redundant balance equation by the normalisation
        rhs = np.zeros(matrix.shape[0])
        rhs[-1] = 1.0
        return spsolve(system.tocsc(), rhs)

    def entropy_rate_nats(self) -> float:
        """sum_i pi_i H(P_i): the lowest achievable mean loss per token, in nats."""
        _, probabilities, _, start_probabilities = self._transitions
        row_entropy_M = np.append(_entropy(probabilities), _entropy(start_probabilities[None])[0])
        return float(self.stationary_distribution() @ row_entropy_M)

    def generate(self, num_tokens: int, seed: int) -> np.ndarray:
        """[num_tokens] uint16 token ids, a function of (the language, seed) only.

        One chain is sequential, so many independent chains run side by side, each from
        <|endoftext|>, and each is cut after its last <|endoftext|>. The chain restarts at
        <|endoftext|> whatever came before, so whole documents from independent chains,
        concatenated, are distributed exactly as one long chain.
        """
        if num_tokens < 0 or seed < 0:
            raise ValueError(f"generate needs num_tokens >= 0 and seed >= 0, got {num_tokens} and {seed}.")
        successors, probabilities, starts, start_probabilities = self._transitions
        cdf_MxR = np.cumsum(probabilities, axis=1)
        cdf_MxR[:, -1] = 1.0  # so that every uniform draw in [0, 1) falls inside its row
        start_cdf = np.cumsum(start_probabilities)
        start_cdf[-1] = 1.0
        rng = np.random.default_rng([self.seed, 2, seed])
        mean_document_tokens = 1 / self.end_probability + 1
        # Long chains waste little (one partial document each); many chains keep numpy busy.
        steps_per_round = int(max(4096, 20 * mean_document_tokens))
        num_chains = int(np.clip(np.ceil(num_tokens / steps_per_round), 1, 4096))
        state_C = np.full(num_chains, self.eot_state, dtype=np.int32)
        chains_CxT = np.empty((num_chains, 0), dtype=np.int32)
        kept_C = np.zeros(num_chains, dtype=np.int64)  # each chain's length up to its last <|endoftext|>
        while kept_C.sum() < num_tokens:
            round_CxT = np.empty((num_chains, steps_per_round), dtype=np.int32)
            for step in range(steps_per_round):
                uniform_C = rng.random(num_chains)
                at_end_C = state_C == self.eot_state
                word_C = np.where(at_end_C, 0, state_C)
                column_C = np.sum(cdf_MxR[word_C] < uniform_C[:, None], axis=1)
                next_C = successors[word_C, column_C]
                next_C[at_end_C] = starts[np.searchsorted(start_cdf, uniform_C[at_end_C])]
                state_C = next_C
                round_CxT[:, step] = state_C
            chains_CxT = np.concatenate([chains_CxT, round_CxT], axis=1)
            is_eot_CxT = chains_CxT == self.eot_state
            from_end_C = np.argmax(is_eot_CxT[:, ::-1], axis=1)
            kept_C = np.where(is_eot_CxT.any(axis=1), chains_CxT.shape[1] - from_end_C, 0)
        stream = np.concatenate([chain[:kept] for chain, kept in zip(chains_CxT, kept_C)])
        return self.token_ids[stream[:num_tokens]]

    def spec(self) -> dict:
        return dataclasses.asdict(self)


def _entropy(probabilities: np.ndarray) -> np.ndarray:
    """Row entropies in nats, with 0 log 0 = 0."""
    log_probabilities = np.log(np.where(probabilities > 0, probabilities, 1.0))
    return -np.sum(probabilities * log_probabilities, axis=1)
