"""softq.montecarlo: Bernstein's radius, and the plug-in that checks the chapters' skewed Monte Carlo means."""

import math

import pytest
import torch

from softq.config import DTYPE
from softq.montecarlo import bernstein_radius, sample_deviation_bound


def test_the_radius_solves_bernsteins_inequality_at_delta():
    v, M = torch.tensor([0.0, 0.3, 2.0, 1e-4], dtype=DTYPE), torch.tensor([0.0, 1.0, 50.0, 3.0], dtype=DTYPE)
    n, delta = 777, 1e-6
    t = bernstein_radius(v, M, n, delta)
    tail = 2 * torch.exp(-n * t**2 / (2 * v + 2 * M * t / 3))
    assert torch.allclose(tail[1:], torch.full((3,), delta, dtype=tail.dtype), rtol=1e-10)
    assert t[0] == 0                                         # no variance, no spread: the mean is the expectation


def test_for_a_gaussian_like_coordinate_the_radius_is_sqrt_2_log_2_over_delta_standard_errors():
    n, delta = 10_000, 1e-9
    t = bernstein_radius(torch.tensor(1.0, dtype=DTYPE), torch.tensor(0.0, dtype=DTYPE), n, delta)
    assert math.isclose(t.item() * math.sqrt(n), math.sqrt(2 * math.log(2 / delta)), rel_tol=1e-12)


def _binomial_pmf(n: int, p: float) -> torch.Tensor:
    k = torch.arange(n + 1, dtype=torch.float64)
    logc = torch.lgamma(torch.tensor(n + 1.0)) - torch.lgamma(k + 1) - torch.lgamma(n - k + 1)
    return torch.exp(logc + k * math.log(p) + (n - k) * math.log1p(-p))


def test_the_plug_in_fails_rarely_on_skewed_draws_where_five_standard_errors_fail_often():
    """Bernoulli(p = 0.005) draws, n = 4000 (20 successes expected): the mean is skewed. Exactly, over every number
    of successes k (no simulation): "|mean - p| <= 5 s.e." fails with probability above 1e-4 (at k <= 6; a Gaussian
    mean would fail with 5.7e-7), the plug-in radius with probability below 1e-7 (at k <= 1)."""
    n, p = 4000, 0.005
    pmf = _binomial_pmf(n, p)
    fails_se, fails_bernstein = 0.0, 0.0
    for k in range(0, 120):                                  # P(k >= 120) < 1e-40
        x = torch.zeros(n, dtype=torch.float64)
        x[:k] = 1.0
        dev = abs(k / n - p)
        se = x.std().item() / math.sqrt(n)
        fails_se += pmf[k].item() * (dev > 5 * se)
        fails_bernstein += pmf[k].item() * (dev > sample_deviation_bound(x).item())
    assert fails_se > 1e-4
    assert fails_bernstein < 1e-7


def test_bad_input_names_the_argument():
    with pytest.raises(ValueError, match="delta"):
        bernstein_radius(torch.tensor(1.0), torch.tensor(1.0), 10, 1.0)
    with pytest.raises(ValueError, match="n must"):
        bernstein_radius(torch.tensor(1.0), torch.tensor(1.0), 0, 0.1)
    with pytest.raises(ValueError, match="variance and spread"):
        bernstein_radius(torch.tensor(-1.0), torch.tensor(1.0), 10, 0.1)
    with pytest.raises(ValueError, match="samples"):
        sample_deviation_bound(torch.ones(1, 3))


def test_the_docstrings_numbers_at_n_4000():
    """``sample_deviation_bound``'s docstring: rare draws 30 s.d. out give about 11 s.e., a Gaussian-like spread
    (4 s.d.) about 7."""
    one = torch.tensor(1.0, dtype=DTYPE)
    in_se = lambda M: bernstein_radius(one, torch.tensor(M, dtype=DTYPE), 4000, 1e-9).item() * math.sqrt(4000)  # noqa
    assert abs(in_se(30.0) - 11) < 0.5 and abs(in_se(4.0) - 7) < 0.5
