"""Published Chinchilla scaling laws L(N, D) = E + A/N^alpha + B/D^beta and their compute-optimal allocations.

N counts parameters, D training tokens, and a training run costs C = 6ND FLOPs.
Minimising L under that constraint gives (Hoffmann et al. 2022, eq. 4)

    N_opt(C) = G (C/6)^a,  D_opt(C) = (C/6)^b / G,
    G = (alpha A / (beta B))^(1/(alpha+beta)),  a = beta/(alpha+beta),  b = alpha/(alpha+beta).
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np


@dataclasses.dataclass(frozen=True)
class ChinchillaLaw:
    """One parametric loss law with the papers it comes from."""

    E: float
    A: float
    B: float
    alpha: float
    beta: float
    name: str
    source: str
    # The most tokens per parameter among the points it was fitted on: past it its D term is
    # extrapolated. Chinchilla's runs (Epoch AI's extraction of its figure 4) reach 341.
    max_tokens_per_param: float = 341.0

    def loss(self, n_params, n_tokens):
        """Predicted loss of a model of ``n_params`` trained on ``n_tokens`` (scalars or arrays)."""
        return self.E + self.A / np.power(n_params, self.alpha) + self.B / np.power(n_tokens, self.beta)

    def exponents(self) -> tuple[float, float]:
        """(a, b) with N_opt proportional to C^a and D_opt to C^b."""
        total = self.alpha + self.beta
        return self.beta / total, self.alpha / total

    def _scale(self) -> float:
        """G of eq. 4: N_opt = G (C/6)^a."""
        return (self.alpha * self.A / (self.beta * self.B)) ** (1.0 / (self.alpha + self.beta))

    def compute_optimal(self, flops):
        """(N_opt, D_opt) that minimise the loss at ``flops`` = 6ND."""
        a, _ = self.exponents()
        n_opt = self._scale() * np.power(np.divide(flops, 6.0), a)
        return n_opt, np.divide(flops, 6.0 * n_opt)

    def optimal_flops(self, n_params):
        """The budget C whose compute-optimal model has ``n_params`` parameters."""
        a, _ = self.exponents()
        return 6.0 * np.power(np.divide(n_params, self._scale()), 1.0 / a)

    def optimal_tokens(self, n_params):
        """Tokens to train ``n_params`` parameters compute-optimally."""
        return self.optimal_flops(n_params) / (6.0 * np.asarray(n_params, dtype=float))

    def tokens_per_parameter(self, flops):
        """D_opt / N_opt at budget ``flops``: not constant unless alpha == beta."""
        n_opt, d_opt = self.compute_optimal(flops)
        return d_opt / n_opt


HOFFMANN_ROUNDED = ChinchillaLaw(
    E=1.69,
    A=406.4,
    B=410.7,
    alpha=0.34,
    beta=0.28,
    name="hoffmann2022",
    source="Hoffmann et al. 2022, Training Compute-Optimal Large Language Models, eq. 10 (rounded as printed)",
)

# The paper prints rounded values; its TeX source holds more digits, in log space for E, A and B.
# Besiroglu et al. use these as Hoffmann's estimates (epoch-research/analyzing-chinchilla,
# data_analysis.ipynb: a=6.0073404, b=6.0179186, e=0.5267228, alpha=0.33917084, beta=0.2849083).
# Rounding alone moves the implied exponent a from 0.4565 to 0.4516 and GPT-2 small's
# compute-optimal budget from 1.8e18 to 2.6e18 FLOPs.
HOFFMANN_UNROUNDED = ChinchillaLaw(
    E=math.exp(0.5267228),
    A=math.exp(6.0073404),
    B=math.exp(6.0179186),
    alpha=0.33917084,
    beta=0.2849083,
    name="hoffmann2022_unrounded",
    source="Hoffmann et al. 2022 TeX source, as used by Besiroglu et al. 2024 (arXiv:2404.10102)",
)

EPOCH_REFIT = ChinchillaLaw(
    E=1.8172,
    A=482.01,
    B=2085.43,
    alpha=0.3478,
    beta=0.3658,
    name="epoch2024",
    source="Besiroglu, Erdil, Barnett, You 2024, Chinchilla Scaling: A replication attempt (arXiv:2404.10102)",
)

PUBLISHED_LAWS = {law.name: law for law in (HOFFMANN_ROUNDED, HOFFMANN_UNROUNDED, EPOCH_REFIT)}

# Hoffmann et al. 2022, Table 2: the exponents (a, b) of N_opt ~ C^a and D_opt ~ C^b from each approach.
CHINCHILLA_APPROACH_EXPONENTS = {
    "approach1": (0.50, 0.50),  # minimum over training curves
    "approach2": (0.49, 0.51),  # IsoFLOP profiles
    "approach3": (0.46, 0.54),  # parametric fit of L(N, D)
}
