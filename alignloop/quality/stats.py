"""Small statistics used by the quality tools: logistic regression with standard errors,
Holm's correction, Wilson intervals, and an item bootstrap. numpy / scipy only."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pandas as pd
from scipy import stats


def logistic_fit(x: np.ndarray, y: np.ndarray, ridge: float = 1e-4, iters: int = 50) -> tuple[np.ndarray, np.ndarray]:
    """Maximum-likelihood logistic regression by Newton's method.

    x: (n, d) features (add a column of ones yourself for an intercept); y: (n,) in [0, 1].
    A tiny ridge keeps separable data finite. Returns (coef (d,), standard errors (d,)) from
    the inverse Fisher information.
    """
    n, d = x.shape
    w = np.zeros(d)
    for _ in range(iters):
        p = 1.0 / (1.0 + np.exp(-(x @ w)))
        grad = x.T @ (y - p) - ridge * w
        hess = (x * (p * (1 - p))[:, None]).T @ x + ridge * np.eye(d)
        step = np.linalg.solve(hess, grad)
        w += step
        if np.max(np.abs(step)) < 1e-9:
            break
    p = 1.0 / (1.0 + np.exp(-(x @ w)))
    hess = (x * (p * (1 - p))[:, None]).T @ x + ridge * np.eye(d)
    se = np.sqrt(np.diag(np.linalg.inv(hess)))
    return w, se


def z_pvalue(z: float) -> float:
    """Two-sided p-value of a standard normal statistic."""
    return float(2 * stats.norm.sf(abs(z))) if np.isfinite(z) else float("nan")


def holm(pvalues: list[float]) -> list[float]:
    """Holm-Bonferroni adjusted p-values (NaN stays NaN); controls the family-wise error rate."""
    p = np.asarray(pvalues, dtype=float)
    ok = np.flatnonzero(~np.isnan(p))
    out = np.full_like(p, np.nan)
    m = len(ok)
    order = ok[np.argsort(p[ok], kind="stable")]
    running = 0.0
    for rank, idx in enumerate(order):
        running = max(running, min(1.0, (m - rank) * p[idx]))
        out[idx] = running
    return out.tolist()


def wilson(k: float, n: float, z: float = 1.96) -> tuple[float, float]:
    """Wilson score interval of a proportion k / n (NaNs when n = 0)."""
    if n <= 0:
        return float("nan"), float("nan")
    phat = k / n
    denom = 1 + z * z / n
    centre = (phat + z * z / (2 * n)) / denom
    half = z * np.sqrt(phat * (1 - phat) / n + z * z / (4 * n * n)) / denom
    return float(centre - half), float(centre + half)


def bootstrap_ci(
    table: pd.DataFrame,
    statistic: Callable[[pd.DataFrame], float],
    n_boot: int = 200,
    seed: int = 0,
    level: float = 0.95,
    unit: str = "item",
) -> tuple[float, float]:
    """Percentile interval of `statistic` over tables whose `unit` groups (items) are
    resampled with replacement. A resampled item gets a fresh name, so an item drawn twice
    counts as two items. NaNs when the table is empty or n_boot is 0."""
    if table.empty or n_boot <= 0:
        return float("nan"), float("nan")
    rng = np.random.default_rng(seed)
    codes, uniques = pd.factorize(table[unit])
    order = np.argsort(codes, kind="stable")
    starts = np.searchsorted(codes[order], np.arange(len(uniques)))
    ends = np.append(starts[1:], len(order))
    values = []
    for _ in range(n_boot):
        draw = rng.integers(0, len(uniques), len(uniques))
        idx = np.concatenate([order[starts[d]:ends[d]] for d in draw])
        sizes = (ends - starts)[draw]
        sample = table.iloc[idx].copy()
        sample[unit] = np.repeat(np.arange(len(draw)), sizes)
        v = statistic(sample)
        if np.isfinite(v):
            values.append(v)
    if not values:
        return float("nan"), float("nan")
    lo, hi = np.quantile(values, [(1 - level) / 2, 1 - (1 - level) / 2])
    return float(lo), float(hi)


def ratio_bootstrap(num: np.ndarray, den: np.ndarray, n_boot: int = 200, seed: int = 0,
                    level: float = 0.95) -> tuple[float, float]:
    """Percentile interval of sum(num) / sum(den) when the units (items) that contribute
    num[k] / den[k] are resampled with replacement. Fast: no table is rebuilt."""
    num, den = np.asarray(num, float), np.asarray(den, float)
    if len(num) == 0 or n_boot <= 0 or den.sum() <= 0:
        return float("nan"), float("nan")
    rng = np.random.default_rng(seed)
    draw = rng.integers(0, len(num), (n_boot, len(num)))
    d = den[draw].sum(1)
    r = num[draw].sum(1)[d > 0] / d[d > 0]
    lo, hi = np.quantile(r, [(1 - level) / 2, 1 - (1 - level) / 2])
    return float(lo), float(hi)
