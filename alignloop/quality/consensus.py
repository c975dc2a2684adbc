"""Consensus labels: majority vote, Dawid-Skene and noisy Bradley-Terry (crowd-kit).

Every method works on the pairwise decomposition of the rankings: a unit is a pair of
responses (item, i, j), i < j, and the consensus is `p` = P(response i is better than j).

- **majority**: weighted vote share with add-one (Laplace) smoothing, so that a soft label
  never reaches 0 or 1:  p = (W_i + W_tie / 2 + 1) / (W + 2), W_i = summed weight of raters
  who put i above j. Three unanimous raters give p = 0.8.
- **dawid-skene**: crowd-kit `DawidSkene` on units with labels 1 (i better) / 0 (j
  better); each rater gets a 2 x 2 confusion matrix learned by EM; p is the posterior of
  label 1. Ties are left out (they say nothing about direction). Gold pairs, when present,
  are passed as `true_labels`, which pins them during EM and sharpens the raters' matrices.
  Units are mirrored and EM restarted from several starts (see `dawid_skene`): plain EM
  from the majority vote stayed at the majority answer, or went below it, on 3 of 6
  simulated campaigns of one careful and two noisy raters.
- **noisy-bt**: crowd-kit `NoisyBradleyTerry`: each response has a latent score s, each rater
  a skill g and a bias q; the rater prefers the response shown first ("left") with
  probability sigmoid(g) * sigmoid(s_left - s_right) + (1 - sigmoid(g)) * sigmoid(q). p =
  sigmoid(s_i - s_j). Ties are left out. crowd-kit 1.4.2 computes the rater-parameter
  gradient wrongly (assigns instead of accumulating, one index off) and adds its prior
  with the wrong sign, so we subclass it with a vectorised, checked gradient (see
  `tests/quality/test_consensus.py::test_noisy_bt_gradient_matches_finite_differences`).

Soft labels are clipped to [0.001, 0.999]. Units with no strict vote get p = 0.5.

Output records (`consensus_records`): for K = 2 one `Comparison` per item with `p`, a
hard `ranking` (the more probable response first; a tie when p = 0.5) and weight 1. For
K > 2, `form="pairs"` (default) gives one two-response `Comparison` per pair (i, j) with
its `p` and weight 1 / C(K, 2), so that an item weighs as much in the reward-model loss
as one K-way ranking does (InstructGPT); `form="ranking"` gives one K-way `Comparison` with
the consensus ranking (responses ordered by consensus score) and the pairwise p's in
`meta.consensus.pair_p`. `p` carries the uncertainty, so `weight` is not scaled by
confidence. `meta.consensus` = {method, n_raters, raters, n_votes, confidence, ...}.
"""

from __future__ import annotations

import warnings
from collections import Counter
from dataclasses import dataclass, field
from itertools import combinations
from math import comb
from typing import Any, Literal

import numpy as np
import pandas as pd
from crowdkit.aggregation import DawidSkene, NoisyBradleyTerry
from scipy.special import expit, log_expit

from alignloop.data.records import Comparison
from alignloop.quality.agreement import UNIT
from alignloop.quality.judgments import Judgments, gold_pairs

Method = Literal["majority", "dawid-skene", "noisy-bt"]
METHODS: tuple[str, ...] = ("majority", "dawid-skene", "noisy-bt")
P_CLIP = 1e-3


@dataclass
class Consensus:
    """A consensus over units: `pairs` has columns item, i, j, p, n_votes, n_raters;
    `scores` maps item -> one score per response (higher = better); `raters` holds what the
    method learned about each rater."""

    method: str
    pairs: pd.DataFrame
    scores: dict[str, np.ndarray]
    raters: dict[str, dict[str, float]] = field(default_factory=dict)


def _usable(pairs: pd.DataFrame, weights: dict[str, float] | None) -> pd.DataFrame:
    w = pairs["rater"].map(weights).fillna(1.0) if weights else pd.Series(1.0, index=pairs.index)
    return pairs.assign(w=w.to_numpy(float))[w.to_numpy(float) > 0]


def _vote_stats(pairs: pd.DataFrame) -> pd.DataFrame:
    return pairs.groupby(UNIT).agg(n_votes=("y", "size"), n_raters=("rater", "nunique"))


def majority(pairs: pd.DataFrame, weights: dict[str, float] | None = None) -> pd.DataFrame:
    """Per unit: p = (W_i + W_tie / 2 + 1) / (W + 2) (weighted, Laplace-smoothed)."""
    v = _usable(pairs, weights)
    win = v["w"] * np.where(v["y"] > 0, 1.0, np.where(v["y"] == 0, 0.5, 0.0))
    g = v.assign(win=win).groupby(UNIT).agg(win=("win", "sum"), total=("w", "sum"))
    g["p"] = (g["win"] + 1.0) / (g["total"] + 2.0)
    return g[["p"]].join(_vote_stats(v)).reset_index()


def _task(df: pd.DataFrame) -> pd.Series:
    return df["item"].astype(str) + "\x1f" + df["i"].astype(str) + "\x1f" + df["j"].astype(str)


def _ds_fit(data: pd.DataFrame, true: pd.Series | None, init: pd.DataFrame | None, n_iter: int) -> DawidSkene:
    with warnings.catch_warnings():  # crowd-kit 1.4.2 uses pandas keywords that pandas 3 deprecates
        warnings.simplefilter("ignore", FutureWarning)
        warnings.simplefilter("ignore", DeprecationWarning)
        model = DawidSkene(n_iter=n_iter, initial_error_strategy="assign" if init is not None else None)
        return model.fit(data, true_labels=true, initial_error=init)


def _trust_one(workers: list[str], trusted: str, good: float = 0.9, other: float = 0.6) -> pd.DataFrame:
    """Initial confusion matrices: `trusted` right with probability `good`, the rest `other`."""
    rows, index = [], []
    for w in workers:
        a = good if w == trusted else other
        for observed in (0, 1):
            rows.append([a if observed == 0 else 1 - a, 1 - a if observed == 0 else a])
            index.append((w, observed))
    return pd.DataFrame(rows, index=pd.MultiIndex.from_tuples(index, names=["worker", "label"]), columns=[0, 1])


def dawid_skene(pairs: pd.DataFrame, weights: dict[str, float] | None = None,
                gold: pd.DataFrame | None = None, n_iter: int = 100, restarts: int = 8) -> tuple[pd.DataFrame, dict]:
    """Per unit posterior p of 'i better' from crowd-kit's DawidSkene; per rater the
    estimated accuracy (mean of the confusion matrix diagonal).

    Two safeguards against EM's local optima: every unit is also given mirrored (j, i) with
    the opposite labels, so that the orientation i < j carries no information and the
    confusion matrices and class prior come out symmetric; and EM is run from the
    majority-vote start plus one start per rater (up to `restarts`) that trusts that rater
    (accuracy 0.9, the others 0.6), keeping the fit with the highest evidence lower bound."""
    v = _usable(pairs, weights)
    strict = v[v["y"] != 0]
    units = _vote_stats(v).reset_index()
    if strict.empty:
        return units.assign(p=0.5), {}
    data = pd.DataFrame({"task": _task(strict).to_numpy(), "worker": strict["rater"].to_numpy(),
                         "label": (strict["y"] > 0).astype(int).to_numpy()})
    data = pd.concat([data, data.assign(task=data["task"] + "\x1fmirror", label=1 - data["label"])],
                     ignore_index=True)
    true = None
    if gold is not None and not gold.empty:
        t = pd.Series((gold["gold"] > 0).astype(int).to_numpy(), index=_task(gold).to_numpy())
        t = pd.concat([t, pd.Series(1 - t.to_numpy(), index=t.index + "\x1fmirror")])
        t = t[t.index.isin(data["task"])]
        true = t if len(t) else None
    workers = sorted(data["worker"].unique())
    starts = [None] + ([_trust_one(workers, w) for w in workers[:restarts]] if len(workers) > 1 else [])
    best = max((_ds_fit(data, true, init, n_iter) for init in starts), key=lambda m: m.loss_history_[-1]
               if m.loss_history_ else -np.inf)
    probas = best.probas_
    p1 = probas[1] if 1 in probas.columns else pd.Series(0.0, index=probas.index)
    units["p"] = _task(units).map(p1).fillna(0.5).to_numpy(float)
    raters = {}
    for worker in workers:
        m = best.errors_.loc[worker]
        raters[str(worker)] = {"accuracy": float(np.mean([m.loc[c, c] for c in m.columns if c in m.index]))}
    return units, raters


class CheckedNoisyBT(NoisyBradleyTerry):
    """crowd-kit's NoisyBradleyTerry with a correct, vectorised objective and gradient.

    x = [x0, s_1..s_L, q_1..q_W, g_1..g_W] (x0: a virtual item every response is tied to by
    the prior). Per comparison with y = +1 if the left item won, -1 otherwise:
        a = sigmoid(g) sigmoid(y (s_left - s_right)) + (1 - sigmoid(g)) sigmoid(y q)
    objective = -(sum log a + r * sum_s [log sigmoid(x0 - s) + log sigmoid(s - x0)]).
    """

    @staticmethod
    def _parts(x, np_data, np_workers, labels, workers):
        left, right, label = np_data[:, 0], np_data[:, 1], np_data[:, 2]
        y = np.where(left == label, 1.0, -1.0)
        d = x[left] - x[right]
        q = x[1 + labels + np_workers]
        g = x[1 + labels + workers + np_workers]
        sg, sd, sq = expit(g), expit(y * d), expit(y * q)
        a = sg * sd + (1 - sg) * sq
        return left, right, y, sg, sd, sq, a

    @staticmethod
    def _compute_log_likelihood(x, np_data, np_workers, labels, workers, regularization_ratio):
        *_, a = CheckedNoisyBT._parts(x, np_data, np_workers, labels, workers)
        s = x[1:labels + 1]
        reg = np.sum(log_expit(x[0] - s) + log_expit(s - x[0]))
        return float(-(np.sum(np.log(a)) + regularization_ratio * reg))

    @staticmethod
    def _compute_gradient(x, np_data, np_workers, labels, workers, regularization_ratio):
        left, right, y, sg, sd, sq, a = CheckedNoisyBT._parts(x, np_data, np_workers, labels, workers)
        n = len(x)
        dd = sg * sd * (1 - sd) * y / a  # d log a / d (s_left - s_right)
        dq = (1 - sg) * sq * (1 - sq) * y / a
        dg = sg * (1 - sg) * (sd - sq) / a
        grad = np.bincount(left, dd, n) - np.bincount(right, dd, n)
        grad += np.bincount(1 + labels + np_workers, dq, n)
        grad += np.bincount(1 + labels + workers + np_workers, dg, n)
        t = np.tanh((x[1:labels + 1] - x[0]) / 2.0)
        grad[1:labels + 1] -= regularization_ratio * t
        grad[0] += regularization_ratio * np.sum(t)
        return -grad


def noisy_bt(pairs: pd.DataFrame, weights: dict[str, float] | None = None, regularization: float = 1.0,
             n_iter: int = 500, seed: int = 0) -> tuple[pd.DataFrame, dict, dict[tuple[str, int], float]]:
    """Per unit p = sigmoid(s_i - s_j) from the noisy Bradley-Terry fit; per rater skill
    sigmoid(g) and left bias sigmoid(q); the latent score of every (item, response)."""
    v = _usable(pairs, weights)
    strict = v[v["y"] != 0]
    units = _vote_stats(v).reset_index()
    if strict.empty:
        return units.assign(p=0.5), {}, {}
    key_i = strict["item"].astype(str) + "\x1f" + strict["i"].astype(str)
    key_j = strict["item"].astype(str) + "\x1f" + strict["j"].astype(str)
    i_left = (strict["first"] >= 0).to_numpy()  # unknown display order: i counts as left
    data = pd.DataFrame({
        "worker": strict["rater"].to_numpy(),
        "left": np.where(i_left, key_i, key_j),
        "right": np.where(i_left, key_j, key_i),
        "label": np.where(strict["y"] > 0, key_i, key_j),
    })
    model = CheckedNoisyBT(n_iter=n_iter, regularization_ratio=regularization, random_state=seed).fit(data)
    score = model.scores_.clip(1e-12, 1 - 1e-12)
    latent = np.log(score / (1 - score))
    si = (units["item"].astype(str) + "\x1f" + units["i"].astype(str)).map(latent)
    sj = (units["item"].astype(str) + "\x1f" + units["j"].astype(str)).map(latent)
    units["p"] = expit((si - sj).to_numpy(float))
    units["p"] = units["p"].fillna(0.5)
    raters = {str(w): {"skill": float(model.skills_[w]), "left_bias": float(model.biases_[w])}
              for w in model.skills_.index}
    scores = {(k.rsplit("\x1f", 1)[0], int(k.rsplit("\x1f", 1)[1])): float(s) for k, s in latent.items()}
    return units, raters, scores


def _borda(units: pd.DataFrame, judgments: Judgments) -> dict[str, np.ndarray]:
    """Score of response i = sum over j of P(i better than j)."""
    scores = {it: np.zeros(len(judgments.items[it].responses)) for it in units["item"].unique()}
    for r in units.itertuples(index=False):
        scores[r.item][r.i] += r.p
        scores[r.item][r.j] += 1 - r.p
    return scores


def consensus(judgments: Judgments, method: str = "dawid-skene", weights: dict[str, float] | None = None,
              use_gold: bool = True, seed: int = 0) -> Consensus:
    """Consensus over every unit of `judgments` by `method` (majority | dawid-skene | noisy-bt).

    weights: rater -> weight from screening (majority uses them as vote weights; the
    model-based methods learn reliability themselves and use weight 0 as exclusion)."""
    pairs = judgments.pairs
    if pairs.empty:
        raise ValueError("no ranking judgments to aggregate")
    raters: dict[str, dict[str, float]] = {}
    if method == "majority":
        units = majority(pairs, weights)
        scores = _borda(units, judgments)
    elif method == "dawid-skene":
        units, raters = dawid_skene(pairs, weights, gold_pairs(judgments) if use_gold else None)
        scores = _borda(units, judgments)
    elif method == "noisy-bt":
        units, raters, latent = noisy_bt(pairs, weights, seed=seed)
        scores = {it: np.array([latent.get((it, k), 0.0) for k in range(len(judgments.items[it].responses))])
                  for it in units["item"].unique()}
    else:
        raise ValueError(f"consensus method {method!r}: choose one of {', '.join(METHODS)}")
    units["p"] = units["p"].clip(P_CLIP, 1 - P_CLIP).where(units["p"] != 0.5, 0.5)
    return Consensus(method=method, pairs=units, scores=scores, raters=raters)


def ranking_from_scores(scores: np.ndarray, tol: float = 1e-9) -> list[int | list[int]]:
    """Best first; responses whose scores differ by less than `tol` are tied."""
    order = np.argsort(-scores, kind="stable")
    tiers: list[list[int]] = []
    for k in order:
        if tiers and abs(scores[tiers[-1][0]] - scores[k]) < tol:
            tiers[-1].append(int(k))
        else:
            tiers.append([int(k)])
    return [t[0] if len(t) == 1 else t for t in tiers]


def consensus_records(judgments: Judgments, cons: Consensus, form: Literal["pairs", "ranking"] = "pairs") -> list[Comparison]:
    """Consensus as `Comparison` records (see the module docstring for the two forms)."""
    out: list[Comparison] = []
    by_item = {it: g for it, g in cons.pairs.groupby("item", sort=False)}
    rk = judgments.rankings
    for item, g in by_item.items():
        base = judgments.items[item]
        judged = rk[rk["item"] == item]
        raters = sorted(judged["rater"].unique())
        source = Counter(s for s in judged["source"] if s).most_common(1)
        common_meta = {"item_id": item, "campaign": str(judged["campaign"].iloc[0])}
        info = {"method": cons.method, "n_raters": len(raters), "raters": raters,
                "n_votes": int(g["n_votes"].max())}
        k = len(base.responses)
        fields = {**base.prompt_fields(), "rater": f"consensus:{cons.method}",
                  "source": source[0][0] if source else "human"}
        if k == 2 or form == "pairs":
            for r in g.itertuples(index=False):
                p = float(r.p)
                ranking = [0, 1] if p > 0.5 else [1, 0] if p < 0.5 else [[0, 1]]
                meta = {**common_meta, "consensus": {**info, "confidence": max(p, 1 - p),
                                                     "n_votes": int(r.n_votes), "pair": [int(r.i), int(r.j)], "k": k}}
                out.append(Comparison(**fields, responses=[base.responses[r.i], base.responses[r.j]],
                                      ranking=ranking, p=p, weight=1.0 / comb(k, 2), meta=meta))
        else:
            pair_p = [[int(r.i), int(r.j), float(r.p)] for r in g.itertuples(index=False)]
            meta = {**common_meta, "consensus": {**info, "pair_p": pair_p,
                                                 "scores": [float(s) for s in cons.scores[item]]}}
            out.append(Comparison(**fields, responses=base.responses,
                                  ranking=ranking_from_scores(cons.scores[item]), weight=1.0, meta=meta))
    return out


def raw_records(judgments: Judgments, records: list, weights: dict[str, float]) -> list[Comparison]:
    """The ranking judgments themselves, with `weight` = the rater's screening weight
    (raters with weight 0 dropped) and meta.consensus = {method: raw, rater_weight}."""
    out = []
    for rec in records:
        if not isinstance(rec, Comparison):
            continue
        w = weights.get(rec.rater or "unknown", 1.0)
        if w <= 0:
            continue
        meta = {**rec.meta, "consensus": {"method": "raw", "rater_weight": w}}
        out.append(rec.model_copy(update={"weight": rec.weight * w, "meta": meta}))
    return out


def accuracy_vs_gold(units: pd.DataFrame, gold: pd.DataFrame) -> dict[str, Any]:
    """Share of strict gold pairs (columns item, i, j, gold = +1 / -1) the consensus orders
    the gold way; p = 0.5 or a missing unit counts half. Also the mean log-loss of p."""
    if gold.empty:
        return {"accuracy": float("nan"), "n_pairs": 0, "log_loss": float("nan")}
    m = gold[UNIT + ["gold"]].merge(units[UNIT + ["p"]], on=UNIT, how="left")
    p = m["p"].fillna(0.5).to_numpy(float)
    truth = (m["gold"] > 0).to_numpy()
    credit = np.where(p == 0.5, 0.5, (p > 0.5) == truth)
    pc = np.clip(np.where(truth, p, 1 - p), 1e-6, 1)
    return {"accuracy": float(credit.mean()), "n_pairs": int(len(m)), "log_loss": float(-np.log(pc).mean())}


def gold_pairs_from_records(gold_records: list[Comparison], item_ids: list[str] | None = None) -> pd.DataFrame:
    """Strict (item, i, j, gold) pairs from gold records (`<out>.gold.jsonl` of a simulation:
    `Comparison`s with source gold and meta.item_id)."""
    keep = set(item_ids) if item_ids is not None else None
    rows = []
    for rec in gold_records:
        item = str(rec.meta.get("item_id"))
        if keep is not None and item not in keep:
            continue
        pos = {x: t for t, tier in enumerate(rec.tiers()) for x in tier}
        for i, j in combinations(range(len(rec.responses)), 2):
            if pos[i] != pos[j]:
                rows.append((item, i, j, 1 if pos[i] < pos[j] else -1))
    return pd.DataFrame(rows, columns=["item", "i", "j", "gold"])
