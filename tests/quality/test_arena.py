"""Arena leaderboard: Bradley-Terry fits against hand-worked maximum-likelihood values, ties, the
prior, order invariance, bootstrap coverage on simulated battles, Wilson intervals, JSON."""

import json
import math
import random

import numpy as np
import pytest

from alignloop.quality.arena import (ELO_PER_NAT, PRIOR, Battle, Thumb, bradley_terry, components,
                                     leaderboard)

ELO_LN3 = 400 * math.log10(3)  # 190.85: the gap of 3:1 odds


def battles(a: str, b: str, outcome: str, k: int) -> list[Battle]:
    return [Battle(a, b, outcome)] * k


def ratings(lb) -> dict[str, float]:
    return {r.name: r.rating for r in lb.models}


def test_two_models_mle_is_log_odds_of_wins():
    """Two models, a won w = 7 and lost l = 3. With d = theta_a - theta_b the log-likelihood is
    7 log s(d) + 3 log s(-d); its derivative 7 s(-d) - 3 s(d) = 7 - 10 s(d) is 0 at s(d) = 7/10,
    i.e. d = ln(7/3): on the Elo scale 400 log10(7/3) = 147.2."""
    theta = bradley_terry(np.array([0]), np.array([1]), [10.0], [7.0], 2, prior=0.0)[0]
    assert theta[0] - theta[1] == pytest.approx(math.log(7 / 3), abs=1e-7)
    assert theta.sum() == pytest.approx(0.0, abs=1e-9)  # centred


def test_three_models_mle_hand_worked():
    """Three models, a beat b 3:1 and b beat c 3:1; a and c never met. Score equations (observed
    wins = expected wins): for a, 3 = 4 s(theta_a - theta_b) -> theta_a - theta_b = ln 3; for c,
    1 = 4 s(theta_c - theta_b) -> theta_b - theta_c = ln 3; b's equation then holds too. So
    a - c = 2 ln 3: 400 log10 9 = 381.7 Elo, and centred on 1000: a 1190.8, b 1000, c 809.2.
    A second, complete design with data exactly at the Bradley-Terry odds of strengths 4 : 2 : 1
    (a-b 2:1, b-c 2:1, a-c 4:1) has those strengths as its MLE: gaps 400 log10 2 = 120.4."""
    theta = bradley_terry(np.array([0, 1]), np.array([1, 2]), [4.0, 4.0], [3.0, 3.0], 3, prior=0.0)[0]
    assert theta * ELO_PER_NAT + 1000 == pytest.approx([1000 + ELO_LN3, 1000, 1000 - ELO_LN3], abs=1e-5)
    theta = bradley_terry(np.array([0, 0, 1]), np.array([1, 2, 2]), [3.0, 5.0, 3.0], [2.0, 4.0, 2.0], 3,
                          prior=0.0)[0]
    assert np.diff(theta) == pytest.approx([-math.log(2), -math.log(2)], abs=1e-7)


def test_leaderboard_prior_stationarity_and_near_mle():
    """leaderboard() fits with the ridge lambda = PRIOR. At its optimum, for every model k:
    (wins_k + ties_k / 2) - sum_j n_kj s(theta_k - theta_j) = lambda theta_k (the gradient of the
    log-likelihood equals the prior's pull). With 40 battles a pair the prior moves the 3:1 gap
    of the three-model example (190.8 per step) by only a few Elo."""
    bs = battles("a", "b", "a", 30) + battles("a", "b", "b", 10) + battles("b", "c", "a", 30) \
        + battles("b", "c", "b", 10)
    lb = leaderboard(bs, n_boot=0)
    r = ratings(lb)
    theta = {k: (v - 1000) / ELO_PER_NAT for k, v in r.items()}
    s = lambda d: 1 / (1 + math.exp(-d))  # noqa: E731
    assert 30 - 40 * s(theta["a"] - theta["b"]) == pytest.approx(PRIOR * theta["a"], abs=1e-6)
    assert 10 - 40 * s(theta["c"] - theta["b"]) == pytest.approx(PRIOR * theta["c"], abs=1e-6)
    assert 40 - 40 * s(theta["b"] - theta["a"]) - 40 * s(theta["b"] - theta["c"]) == pytest.approx(
        PRIOR * theta["b"], abs=1e-6)
    assert sum(r.values()) / 3 == pytest.approx(1000)
    assert r["a"] - r["b"] == pytest.approx(ELO_LN3, abs=10) and r["a"] - r["b"] < ELO_LN3
    assert [m.name for m in lb.models] == ["a", "b", "c"]
    b = lb.models[1]
    assert (b.battles, b.wins, b.losses, b.ties) == (80, 40, 40, 0)


def test_ties_count_one_half():
    """a won 2, tied 2 (one a both-bad vote) and lost 0 against b: a's score is 2 + 2/2 = 3 of 4,
    the same fit as 3 wins and 1 loss (d = ln 3 without a prior); both_bad is a tie."""
    tied = battles("a", "b", "a", 2) + [Battle("a", "b", "tie"), Battle("b", "a", "both_bad")]
    plain = battles("a", "b", "a", 3) + battles("a", "b", "b", 1)
    assert ratings(leaderboard(tied, n_boot=0)) == pytest.approx(ratings(leaderboard(plain, n_boot=0)), abs=1e-6)
    lb = leaderboard(tied, n_boot=0)
    row = {m.name: m for m in lb.models}
    assert (row["a"].wins, row["a"].losses, row["a"].ties, row["a"].battles) == (2, 0, 2, 4)
    assert (row["b"].wins, row["b"].losses, row["b"].ties) == (0, 2, 2)
    assert lb.win_rate["a"]["b"] == pytest.approx(0.75) and lb.win_rate["b"]["a"] == pytest.approx(0.25)


def test_both_bad_is_a_tie():
    ties = battles("x", "y", "tie", 3) + battles("x", "y", "a", 2) + battles("y", "z", "b", 4)
    bad = battles("x", "y", "both_bad", 3) + battles("x", "y", "a", 2) + battles("y", "z", "b", 4)
    assert leaderboard(ties, n_boot=20).to_json() == leaderboard(bad, n_boot=20).to_json()


def test_order_and_sides_do_not_matter():
    rng = random.Random(3)
    bs = [Battle(*rng.sample("pqrs", 2), rng.choice(["a", "b", "tie", "both_bad"])) for _ in range(60)]
    flipped = [Battle(x.model_b, x.model_a, {"a": "b", "b": "a"}.get(x.outcome, x.outcome)) for x in bs]
    rng.shuffle(flipped)
    assert leaderboard(bs, n_boot=30, seed=5).to_json() == leaderboard(flipped, n_boot=30, seed=5).to_json()


def test_all_wins_stays_finite():
    """a won all 5 battles against b: the MLE is infinite; with the ridge, d = theta_a - theta_b
    solves 5 s(-d) = lambda d / 2 (each theta is +-d/2), a finite gap."""
    lb = leaderboard(battles("a", "b", "a", 5), n_boot=50)
    r = ratings(lb)
    d = (r["a"] - r["b"]) / ELO_PER_NAT
    assert math.isfinite(d) and d > 0
    assert 5 / (1 + math.exp(d)) == pytest.approx(PRIOR * d / 2, abs=1e-6)
    assert all(math.isfinite(m.lo) and math.isfinite(m.hi) for m in lb.models)


def test_intervals_cover_true_ratings_on_simulated_battles():
    """200 repetitions of 300 battles among 4 models of known Elo strengths (-150, -30, 60, 120
    around their mean): each true rating lies inside its bootstrap 95% interval in about 95% of
    the 800 (repetition, model) cases; accept 90-99%."""
    true = np.array([-150.0, -30.0, 60.0, 120.0])
    true = 1000 + true - true.mean()
    names = ["m0", "m1", "m2", "m3"]
    rng = np.random.default_rng(0)
    hits = width = 0.0
    for _ in range(200):
        pairs = np.array([rng.choice(4, 2, replace=False) for _ in range(300)])
        p_a = 1 / (1 + 10 ** ((true[pairs[:, 1]] - true[pairs[:, 0]]) / 400))
        won = rng.random(300) < p_a
        lb = leaderboard([Battle(names[i], names[j], "a" if w else "b") for (i, j), w in zip(pairs, won)],
                         n_boot=100, seed=int(rng.integers(1 << 30)))
        for row in lb.models:
            k = names.index(row.name)
            hits += row.lo <= true[k] <= row.hi
            width += row.hi - row.lo
    coverage = hits / 800
    assert 0.90 <= coverage <= 0.99, coverage
    assert 50 < width / 800 < 200  # about 2 x 1.96 x the standard error of a rating (~ 30 Elo)


def test_disconnected_graph_components_centred_separately():
    bs = battles("a", "b", "a", 3) + battles("a", "b", "b", 1) + battles("c", "d", "a", 1) \
        + battles("c", "d", "b", 1) + battles("e", "c", "a", 2)
    lb = leaderboard(bs, n_boot=0)
    assert lb.components == [["c", "d", "e"], ["a", "b"]]
    r = ratings(lb)
    assert (r["a"] + r["b"]) / 2 == pytest.approx(1000)
    assert (r["c"] + r["d"] + r["e"]) / 3 == pytest.approx(1000)
    assert leaderboard(battles("a", "b", "a", 2) + battles("b", "c", "a", 2), n_boot=0).components == []
    assert components(np.array([0]), np.array([2]), 3) == [[0, 2], [1]]


def test_win_rate_matrix_and_never_met():
    bs = battles("a", "b", "a", 2) + battles("a", "b", "tie", 1) + battles("b", "a", "a", 1) \
        + battles("b", "c", "a", 1)
    wr = leaderboard(bs, n_boot=0).win_rate
    assert wr["a"]["b"] == pytest.approx(2.5 / 4) and wr["b"]["a"] == pytest.approx(1.5 / 4)
    assert wr["a"]["c"] is None and wr["c"]["a"] is None
    assert wr["b"]["c"] == 1.0 and wr["c"]["b"] == 0.0
    assert "a" not in wr["a"]


def test_wilson_thumbs_hand_value():
    """8 up of 10, z = 1.96: centre (0.8 + z^2/20) / (1 + z^2/10) = 0.71674; half-width
    z sqrt(0.8 * 0.2 / 10 + z^2 / 400) / (1 + z^2/10) = 0.22658 -> [0.4902, 0.9433]."""
    thumbs = [Thumb("a", True)] * 8 + [Thumb("a", False)] * 2 + [Thumb("b", False)]
    lb = leaderboard(battles("a", "b", "a", 1), thumbs, n_boot=0)
    row = {m.name: m for m in lb.models}
    assert (row["a"].thumbs_up, row["a"].thumbs_total, row["a"].thumbs_rate) == (8, 10, 0.8)
    assert row["a"].thumbs_lo == pytest.approx(0.4902, abs=1e-4)
    assert row["a"].thumbs_hi == pytest.approx(0.9433, abs=1e-4)
    assert (row["b"].thumbs_up, row["b"].thumbs_total, row["b"].thumbs_rate) == (0, 1, 0.0)
    assert row["b"].thumbs_lo == pytest.approx(0.0, abs=1e-12)


def test_to_json_is_plain_json_with_thumbs_only_model():
    bs = battles("a", "b", "a", 3) + battles("a", "b", "b", 2)
    lb = leaderboard(bs, [Thumb("solo", True), Thumb("a", False)], n_boot=20, seed=1)
    out = lb.to_json()
    assert json.loads(json.dumps(out, allow_nan=False)) == out
    assert [m["name"] for m in out["models"]] == ["a", "b", "solo"]
    solo = out["models"][2]
    assert solo["rating"] is None and solo["lo"] is None and solo["battles"] == 0
    assert solo["thumbs_rate"] == 1.0
    assert out["models"][1]["thumbs_rate"] is None  # b: no thumbs
    assert out["n_battles"] == 5 and out["n_boot"] == 20
    a = out["models"][0]
    assert a["lo"] <= a["rating"] <= a["hi"]


def test_bootstrap_seeded():
    bs = battles("a", "b", "a", 6) + battles("a", "b", "b", 4) + battles("b", "c", "a", 5) + battles("c", "b", "a", 5)
    assert leaderboard(bs, seed=7).to_json() == leaderboard(bs, seed=7).to_json()
    assert leaderboard(bs, seed=7).to_json() != leaderboard(bs, seed=8).to_json()


def test_no_battles_and_bad_input():
    lb = leaderboard([], [Thumb("a", True)])
    assert lb.n_battles == 0 and math.isnan(lb.models[0].rating)
    with pytest.raises(ValueError, match=r"battle 1: field 'outcome': 'left'"):
        leaderboard([Battle("a", "b", "a"), Battle("a", "b", "left")])
    with pytest.raises(ValueError, match="battle 0: model 'a' against itself"):
        leaderboard([Battle("a", "a", "tie")])
    with pytest.raises(ValueError, match="battle 0: field 'model_b'"):
        leaderboard([Battle("a", "", "tie")])
