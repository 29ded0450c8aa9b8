"""Paired significance tests over per-query scores of two systems on the same queries.

- `paired_t_test`: two-sided paired t-test, `scipy.stats.ttest_rel` (t = mean(d) / (sd(d) / sqrt(n)),
  n - 1 degrees of freedom, d = a - b per query).
- `permutation_test`: two-sided paired randomisation (sign-flip) test: under the null hypothesis each
  query's difference is as likely to have either sign, so p is the share of the 2^n sign assignments
  whose |mean difference| is at least the observed one. Exact enumeration up to `exact_up_to`
  queries; beyond that `rounds` random assignments from a fixed seed, p = (hits + 1) / (rounds + 1).
  Needs only numpy: the fallback when scipy is not installed.

`paired_test(method="auto")` uses the t-test when scipy is importable, else the permutation test.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass

import numpy as np


@dataclass(frozen=True)
class PairedTest:
    method: str  # "t-test" or "permutation"
    n: int  # queries
    mean_difference: float  # mean of a - b
    statistic: float | None  # t for the t-test (None when undefined); |mean difference| for the permutation test
    p_value: float

    def as_dict(self) -> dict:
        return asdict(self)


def _differences(a: Sequence[float], b: Sequence[float]) -> np.ndarray:
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if a.shape != b.shape or a.ndim != 1:
        raise ValueError(f"paired samples must be two 1-d sequences of equal length, got {a.shape} and {b.shape}")
    if len(a) < 2:
        raise ValueError("a paired test needs at least 2 queries")
    return a - b


def paired_t_test(a: Sequence[float], b: Sequence[float]) -> PairedTest:
    """Two-sided paired t-test of mean(a - b) = 0 (scipy.stats.ttest_rel).

    All differences equal (zero variance): p = 1 when they are all 0, else 0, and t is None (scipy would
    give nan or inf).
    """
    from scipy import stats

    differences = _differences(a, b)
    mean = float(differences.mean())
    if np.allclose(differences, differences[0], rtol=0, atol=1e-15):
        return PairedTest("t-test", len(differences), mean, None, 1.0 if mean == 0 else 0.0)
    result = stats.ttest_rel(np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64))
    return PairedTest("t-test", len(differences), mean, float(result.statistic), float(result.pvalue))


def permutation_test(a: Sequence[float], b: Sequence[float], rounds: int = 10_000, seed: int = 0,
                     exact_up_to: int = 16) -> PairedTest:
    """Two-sided paired sign-flip test of mean(a - b) = 0 (see the module docstring)."""
    differences = _differences(a, b)
    n = len(differences)
    observed = abs(float(differences.mean()))
    tolerance = 1e-12 * max(1.0, float(np.abs(differences).max()))  # equal means must count as "at least"
    if n <= exact_up_to:
        # Every sign vector: row j's signs are the bits of j.
        bits = (np.arange(2 ** n)[:, None] >> np.arange(n)[None, :]) & 1  # [2^n, n]
        means = np.abs(((1 - 2 * bits) * differences).mean(axis=1))
        p_value = float(np.mean(means >= observed - tolerance))
    else:
        generator = np.random.default_rng(seed)
        hits, done = 0, 0
        while done < rounds:
            chunk = min(1000, rounds - done)
            signs = generator.choice(np.array([-1.0, 1.0]), size=(chunk, n))  # [chunk, n]
            hits += int(np.sum(np.abs((signs * differences).mean(axis=1)) >= observed - tolerance))
            done += chunk
        p_value = (hits + 1) / (rounds + 1)
    return PairedTest("permutation", n, float(differences.mean()), observed, p_value)


def scipy_available() -> bool:
    try:
        import scipy.stats  # noqa: F401
    except ImportError:
        return False
    return True


def paired_test(a: Sequence[float], b: Sequence[float], method: str = "auto", seed: int = 0) -> PairedTest:
    """`method`: "t-test", "permutation", or "auto" (t-test if scipy is installed, else permutation)."""
    if method == "auto":
        method = "t-test" if scipy_available() else "permutation"
    if method == "t-test":
        return paired_t_test(a, b)
    if method == "permutation":
        return permutation_test(a, b, seed=seed)
    raise ValueError(f"unknown significance test {method!r}: use t-test, permutation or auto")
