import os

import pytest
import torch

from mdiff_lite.data import ToySegmentation

# Two cores on the CI machines: keep torch from oversubscribing them.
torch.set_num_threads(int(os.environ.get("MDIFF_TEST_THREADS", min(2, os.cpu_count() or 1))))


@pytest.fixture(scope="session")
def support():
    """Every choice of the 8 x 8 toy generator, the map it draws and log_prob of that map."""
    ds = ToySegmentation(8, 8)
    sizes = [len(v.values) for v in ds.variables]
    choices = torch.cartesian_prod(*[torch.arange(s) for s in sizes])
    maps = ds.render(choices)
    return ds, choices, maps, ds.log_prob(maps)


@pytest.fixture(scope="session")
def enumerated_posterior(support):
    """``f(log_likelihood [n, 8, 8, K]) -> (log evidence [n], marginals [n, 8, 8, K])`` by Bayes'
    rule over every map of the 8 x 8 support: what ``ToySegmentation.posterior`` must equal."""
    ds, _, maps, log_p = support
    K = ds.num_classes
    index = (torch.arange(64) * K + maps.reshape(len(maps), -1))   # each map's (pixel, class) slots

    def posterior(log_likelihood):
        evidence, marginals = [], []
        for table in log_likelihood.reshape(len(log_likelihood), -1):
            log_joint = log_p + table[index].sum(1)
            weights = torch.softmax(log_joint, 0)[:, None].expand(-1, 64)
            evidence.append(torch.logsumexp(log_joint, 0))
            marginals.append(torch.zeros(64 * K, dtype=torch.float64).index_add_(0, index.reshape(-1),
                                                                                 weights.reshape(-1)).view(8, 8, K))
        return torch.stack(evidence), torch.stack(marginals)

    return posterior
