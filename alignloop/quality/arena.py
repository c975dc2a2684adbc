"""Arena leaderboard: Bradley-Terry ratings of models from side-by-side votes, with bootstrap
intervals, a win-rate matrix, and thumbs-up rates. numpy / scipy only (never torch).

The model (Bradley-Terry, fitted by maximum a posteriori with a weak Gaussian prior):

    P(i beats j) = sigmoid(theta_i - theta_j)                              theta: natural log-odds

A battle between i (left) and j (right) scores y = 1 if i won, 0 if j won, 1/2 for a tie; a
"both bad" vote is a tie. Ties count one half to each side (the "ties count 1/2" likelihood; the
Chatbot Arena convention of one win each way is the same fit with ties weighted twice):

    log L(theta) = sum_battles  y log sigmoid(theta_i - theta_j) + (1 - y) log sigmoid(theta_j - theta_i)
    objective    = -log L(theta) + (lambda / 2) sum_m theta_m^2          (lambda: the prior, below)

The prior: each model's rating is N(1000, PRIOR_SD_ELO^2) with PRIOR_SD_ELO = 400 Elo points
(odds of 10:1 against an average model one prior sd away), i.e. a ridge lambda = 1 / (PRIOR_SD_ELO
/ ELO_PER_NAT)^2 = (ln 10)^-2 = 0.189 on theta. It weighs about as much as one extra tie against an
average model (the curvature of a tie's log-likelihood at 0 is 1/4; lambda is 0.19), so it is
negligible after a few dozen battles, and it keeps the fit finite when a model won (or lost) every
battle. With lambda > 0 the stationarity condition summed over a connected set of models gives
lambda * sum theta = 0: the strengths of every connected component of the comparison graph have
mean 0 by themselves.

Reported on the Elo scale: rating = 1000 + ELO_PER_NAT * theta, ELO_PER_NAT = 400 / ln 10 (400
log10 odds: a 400-point gap is 10:1 odds), so the mean rating is 1000.

Disconnected comparison graphs (models in groups that never met each other): every component is
centred at 1000 on its own (above), so ratings are comparable within a component only; the
components are listed in `Leaderboard.components` (largest first) whenever there is more than one.

Intervals: `n_boot` bootstrap resamples of the battles (with replacement, seeded), each refitted;
a model's interval is the 2.5 and 97.5 percentiles of its rating over the resamples in which it
fought (a resample that drew none of its battles says nothing about it). The battles are put in
a canonical order first, so the leaderboard does not depend on the order the votes came in.
(Chatbot Arena: 100 bootstrap rounds, percentile intervals.)

Thumbs-up rate: up / total with a Wilson 95% score interval (stats.wilson).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
from scipy import optimize

from alignloop.quality.stats import wilson

OUTCOMES = ("a", "b", "tie", "both_bad")
SCORE = {"a": 1.0, "b": 0.0, "tie": 0.5, "both_bad": 0.5}  # y: the left model's share of the win
ELO_PER_NAT = 400 / math.log(10)  # Elo points per unit of natural log-odds
ELO_MEAN = 1000.0
PRIOR_SD_ELO = 400.0
PRIOR = (ELO_PER_NAT / PRIOR_SD_ELO) ** 2  # ridge lambda on theta: (ln 10)^-2 = 0.189


@dataclass(frozen=True)
class Battle:
    """One arena vote."""
    model_a: str  # the model shown on the left
    model_b: str  # the model shown on the right
    outcome: str  # "a" | "b" | "tie" | "both_bad"   (both_bad counts as a tie in the fit)


@dataclass(frozen=True)
class Thumb:
    """One thumbs vote under a chat answer."""
    model: str
    up: bool


@dataclass(frozen=True)
class ModelRow:
    name: str
    rating: float  # Bradley-Terry strength on the Elo scale: 400*log10 odds, mean rating 1000
    lo: float  # bootstrap 95% percentile interval of the rating
    hi: float
    battles: int
    wins: int
    losses: int
    ties: int  # ties and both-bad votes
    thumbs_up: int
    thumbs_total: int
    thumbs_rate: float | None  # Wilson 95%
    thumbs_lo: float | None
    thumbs_hi: float | None


@dataclass(frozen=True)
class Leaderboard:
    models: list[ModelRow]  # best rating first (models without battles last)
    win_rate: dict[str, dict[str, float | None]]  # [a][b]: a's share of its battles against b, ties 1/2; None if never met
    n_battles: int
    n_boot: int
    components: list[list[str]] = field(default_factory=list)  # connected groups of models, if more than one

    def to_json(self) -> dict:
        """Plain JSON-able dict (NaN -> None): what `alignloop quality arena` prints."""
        return {
            "n_battles": self.n_battles,
            "n_boot": self.n_boot,
            "models": [{k: _plain(v) for k, v in row.__dict__.items()} for row in self.models],
            "win_rate": {a: dict(row) for a, row in self.win_rate.items()},
            "components": [list(c) for c in self.components],
        }


def _plain(v):
    if isinstance(v, float) and not math.isfinite(v):
        return None
    return v


# --- pure functions ----------------------------------------------------------------------


def canonical_battles(battles: Sequence[Battle], names: list[str]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Battles as index arrays in a canonical order: (i, j, y), each (N,), with i < j the model
    indices in `names` and y the score of model i (1 win, 0 loss, 1/2 tie or both bad). A battle
    shown the other way round is flipped (j, i, 1 - y); rows are sorted, so any order or any side
    of the same votes gives the same arrays."""
    index = {n: k for k, n in enumerate(names)}
    rows = []
    for a, b, o in ((x.model_a, x.model_b, x.outcome) for x in battles):
        y = SCORE[o]
        i, j = index[a], index[b]
        rows.append((i, j, y) if i < j else (j, i, 1.0 - y))
    rows.sort()
    arr = np.asarray(rows, dtype=float).reshape(-1, 3)
    return arr[:, 0].astype(int), arr[:, 1].astype(int), arr[:, 2]


def bradley_terry(pair_i: np.ndarray, pair_j: np.ndarray, n: np.ndarray, s: np.ndarray, n_models: int,
                  prior: float = PRIOR) -> np.ndarray:
    """MAP Bradley-Terry strengths of several independent data sets at once.

    pair_i, pair_j: (P,) model indices of the P pairs; n: (B, P) battles of each pair in each of B
    data sets; s: (B, P) score of model pair_i in them (wins + ties / 2). Minimises, per data set,
        -sum_p [s_p log sigmoid(d_p) + (n_p - s_p) log sigmoid(-d_p)] + prior / 2 * |theta|^2,
    d_p = theta_{pair_i} - theta_{pair_j}, by scipy's Newton conjugate-gradient trust-region method
    (`trust-ncg`, exact gradient and Hessian-vector products) on all B problems together: the
    objective is a sum of independent convex parts, so the joint minimum is each one's minimum. Returns theta: (B, n_models), natural log-odds. prior = 0 gives the plain MLE
    (centred to mean 0; it diverges when a model won every battle).
    """
    n, s = np.atleast_2d(np.asarray(n, float)), np.atleast_2d(np.asarray(s, float))
    b = n.shape[0]
    incidence = _incidence(pair_i, pair_j, n_models)
    scale = max(1.0, float(n.sum(1).max()))  # objective per battle: tolerances independent of size

    def fun(x):
        theta = x.reshape(b, n_models)
        d = theta @ incidence.T  # (B, P)
        # -log sigmoid(d) = logaddexp(0, -d)
        nll = (s * np.logaddexp(0, -d) + (n - s) * np.logaddexp(0, d)).sum() + prior / 2 * (theta ** 2).sum()
        r = s - n * _sigmoid(d)  # d(log L) / d(d_p)
        g = prior * theta - r @ incidence  # (B, M)
        return nll / scale, g.ravel() / scale

    def hessp(x, v):  # H v, H = incidence^T diag(n sigmoid(d) sigmoid(-d)) incidence + prior I per data set
        d = x.reshape(b, n_models) @ incidence.T
        p = _sigmoid(d)
        vv = v.reshape(b, n_models)
        return ((((vv @ incidence.T) * n * p * (1 - p)) @ incidence) + prior * vv).ravel() / scale

    res = optimize.minimize(fun, np.zeros(b * n_models), jac=True, hessp=hessp, method="trust-ncg",
                            options={"gtol": 1e-9, "maxiter": 1000})
    theta = res.x.reshape(b, n_models)
    if prior == 0:
        theta = theta - theta.mean(1, keepdims=True)
    return theta


def _incidence(pair_i: np.ndarray, pair_j: np.ndarray, n_models: int) -> np.ndarray:
    """(P, M) matrix with +1 at (p, pair_i[p]) and -1 at (p, pair_j[p]): d = theta @ incidence.T."""
    out = np.zeros((len(pair_i), n_models))
    out[np.arange(len(pair_i)), pair_i] = 1.0
    out[np.arange(len(pair_j)), pair_j] = -1.0
    return out


def _sigmoid(d: np.ndarray) -> np.ndarray:
    return np.exp(-np.logaddexp(0, -d))


def components(pair_i: np.ndarray, pair_j: np.ndarray, n_models: int) -> list[list[int]]:
    """Connected components of the comparison graph (an edge per pair that fought), largest first,
    each sorted."""
    parent = list(range(n_models))

    def root(k):
        while parent[k] != k:
            parent[k] = parent[parent[k]]
            k = parent[k]
        return k

    for i, j in zip(pair_i.tolist(), pair_j.tolist()):
        parent[root(i)] = root(j)
    groups: dict[int, list[int]] = {}
    for k in range(n_models):
        groups.setdefault(root(k), []).append(k)
    return sorted(groups.values(), key=lambda g: (-len(g), g))


def elo(theta: np.ndarray) -> np.ndarray:
    """Strengths (natural log-odds) -> Elo scale, 400 log10 odds around 1000."""
    return ELO_MEAN + ELO_PER_NAT * theta


def _check(battles: Sequence[Battle], thumbs: Sequence[Thumb]) -> None:
    for k, x in enumerate(battles):
        if x.outcome not in OUTCOMES:
            raise ValueError(f"battle {k}: field 'outcome': {x.outcome!r} is not one of {', '.join(OUTCOMES)}")
        for f in ("model_a", "model_b"):
            if not isinstance(getattr(x, f), str) or not getattr(x, f):
                raise ValueError(f"battle {k}: field '{f}': a model name is required")
        if x.model_a == x.model_b:
            raise ValueError(f"battle {k}: model {x.model_a!r} against itself")
    for k, t in enumerate(thumbs):
        if not isinstance(t.model, str) or not t.model:
            raise ValueError(f"thumb {k}: field 'model': a model name is required")


def leaderboard(battles: Sequence[Battle], thumbs: Sequence[Thumb] = (), *,
                n_boot: int = 100, seed: int = 0) -> Leaderboard:
    """Bradley-Terry leaderboard of arena battles plus thumbs-up rates (module docstring).

    Models that appear only in thumbs get a row with rating / lo / hi = nan and 0 battles.
    """
    if n_boot < 0:
        raise ValueError(f"n_boot must be >= 0, got {n_boot}")
    _check(battles, thumbs)
    fought = sorted({m for x in battles for m in (x.model_a, x.model_b)})
    names = fought + sorted({t.model for t in thumbs} - set(fought))
    m = len(fought)
    i, j, y = canonical_battles(battles, fought)

    # 1) pairs that fought, and each battle's pair index
    pairs, pair_of = np.unique(np.stack([i, j], 1), axis=0, return_inverse=True)
    pair_of = pair_of.ravel()
    pi, pj = pairs[:, 0], pairs[:, 1]
    n_p = np.bincount(pair_of, minlength=len(pairs)).astype(float)
    s_p = np.bincount(pair_of, y, minlength=len(pairs))

    # 2) point estimate
    rating = np.full(len(names), np.nan)
    lo, hi = rating.copy(), rating.copy()
    if m:
        rating[:m] = elo(bradley_terry(pi, pj, n_p, s_p, m)[0])

    # 3) bootstrap over battles: B resampled count tables, fitted together
    if m and n_boot:
        rng = np.random.default_rng(seed)
        draw = rng.integers(0, len(y), (n_boot, len(y)))
        cell = (np.arange(n_boot)[:, None] * len(pairs) + pair_of[draw]).ravel()  # (resample, pair)
        nb = np.bincount(cell, minlength=n_boot * len(pairs)).reshape(n_boot, -1).astype(float)
        sb = np.bincount(cell, y[draw].ravel(), minlength=n_boot * len(pairs)).reshape(n_boot, -1)
        boot = elo(bradley_terry(pi, pj, nb, sb, m))  # (B, m)
        present = (nb @ np.abs(_incidence(pi, pj, m))) > 0  # (B, m): the model fought in that resample
        boot[~present] = np.nan
        for k in range(m):
            if present[:, k].any():
                lo[k], hi[k] = np.nanpercentile(boot[:, k], [2.5, 97.5])

    # 4) counts, win rates, thumbs
    wins, losses, ties = np.zeros(m, int), np.zeros(m, int), np.zeros(m, int)
    np.add.at(wins, i[y == 1], 1), np.add.at(losses, j[y == 1], 1)
    np.add.at(wins, j[y == 0], 1), np.add.at(losses, i[y == 0], 1)
    np.add.at(ties, i[y == 0.5], 1), np.add.at(ties, j[y == 0.5], 1)
    win_rate: dict[str, dict[str, float | None]] = {a: {b: None for b in names if b != a} for a in names}
    for (a, b), n_ab, s_ab in zip(pairs.tolist(), n_p, s_p):
        win_rate[fought[a]][fought[b]] = float(s_ab / n_ab)
        win_rate[fought[b]][fought[a]] = float(1 - s_ab / n_ab)
    up = {nm: 0 for nm in names}
    total = dict(up)
    for t in thumbs:
        up[t.model] += bool(t.up)
        total[t.model] += 1

    rows = []
    for k, nm in enumerate(names):
        rate = up[nm] / total[nm] if total[nm] else None
        t_lo, t_hi = wilson(up[nm], total[nm]) if total[nm] else (None, None)
        rows.append(ModelRow(
            name=nm, rating=float(rating[k]), lo=float(lo[k]), hi=float(hi[k]),
            battles=int(wins[k] + losses[k] + ties[k]) if k < m else 0,
            wins=int(wins[k]) if k < m else 0, losses=int(losses[k]) if k < m else 0,
            ties=int(ties[k]) if k < m else 0,
            thumbs_up=up[nm], thumbs_total=total[nm], thumbs_rate=rate, thumbs_lo=t_lo, thumbs_hi=t_hi))
    rows.sort(key=lambda r: (math.isnan(r.rating), -r.rating if not math.isnan(r.rating) else 0.0, r.name))
    groups = components(pi, pj, m) if m else []
    return Leaderboard(
        models=rows, win_rate=win_rate, n_battles=len(battles), n_boot=n_boot,
        components=[[fought[k] for k in g] for g in groups] if len(groups) > 1 else [])
