"""mdiff_lite: multinomial diffusion (Hoogeboom et al., NeurIPS 2021), small, readable and tested.

Modules, one per idea of the paper: ``schedules`` (the noise schedule), ``diffusion``
(eqs. 3 and 11-17), ``data`` (datasets, one with a known entropy), ``plots``, ``models`` (the
denoiser; and the transformers for text), ``train``, ``evaluate`` (bits per pixel), ``sampling``;
``absorbing`` (mask noise, the second process, for text).
"""

__version__ = "0.1.0"

__all__ = [
    "Schedule", "make_schedule", "SCHEDULE_NAMES",
    "q_step", "q_marginal", "q_posterior", "q_posterior_skip", "categorical_kl", "log_categorical",
    "sample_categorical", "one_hot", "bits_per_dim", "q_sample", "prior_kl", "vlb_terms", "training_loss",
    "UniformTimeSampler", "StratifiedTimeSampler", "ImportanceTimeSampler",
]

from .schedules import SCHEDULE_NAMES, Schedule, make_schedule  # noqa: E402,F401
from .diffusion import (  # noqa: E402,F401
    q_step, q_marginal, q_posterior, q_posterior_skip, categorical_kl, log_categorical, sample_categorical,
    one_hot, bits_per_dim, q_sample, prior_kl, vlb_terms, training_loss,
    UniformTimeSampler, StratifiedTimeSampler, ImportanceTimeSampler,
)
