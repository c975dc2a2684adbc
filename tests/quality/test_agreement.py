"""Agreement figures on hand-made tables whose values are worked out by hand."""

import math

import pytest

from alignloop.data.records import Comparison
from alignloop.quality.agreement import (kendall_w, krippendorff_alpha, pairwise_agreement, rater_matrix,
                                         rater_vs_others, agreement_summary)
from alignloop.quality.judgments import load_judgments
from quality_helpers import pair

WINNERS = [0, 1, 0, 1]  # four items; raters a and b agree on all, c reverses every one


def table(raters: dict[str, list[int]]):
    return load_judgments([pair(f"i{n}", r, w) for r, ws in raters.items() for n, w in enumerate(ws)])


def test_identical_raters_alpha_1_agreement_1_tau_1():
    j = table({"a": WINNERS, "b": WINNERS, "c": WINNERS})
    assert krippendorff_alpha(j.pairs) == pytest.approx(1.0)
    assert pairwise_agreement(j.pairs) == 1.0
    m = rater_matrix(j.pairs)
    assert m["tau"][0][1] == 1.0 and m["agreement"][0][2] == 1.0


def test_two_raters_one_reversed_alpha_minus_0_75():
    # o(+,-) = o(-,+) = 4, n+ = n- = 4, n = 8: D_o = 8/8 = 1, D_e = 2*4*4 / (8*7) = 4/7,
    # alpha = 1 - 1 / (4/7) = -0.75
    j = table({"a": WINNERS, "c": [1 - w for w in WINNERS]})
    assert krippendorff_alpha(j.pairs) == pytest.approx(-0.75)
    assert pairwise_agreement(j.pairs) == 0.0
    assert rater_matrix(j.pairs)["tau"][0][1] == -1.0


def test_three_raters_one_reversed_alpha_minus_2_9_agreement_1_3():
    # each unit holds (v, v, -v): per unit o(v,v) += 1, o(v,-v) += 1, o(-v,v) += 1 (weights 1/(m-1));
    # over 4 units: D_o = 8/12 = 2/3, n+ = n- = 6, D_e = 72/132 = 6/11, alpha = 1 - (2/3)/(6/11) = -2/9.
    # Rater pairs: (a,b) agree, (a,c) and (b,c) disagree -> 1/3.
    j = table({"a": WINNERS, "b": WINNERS, "c": [1 - w for w in WINNERS]})
    assert krippendorff_alpha(j.pairs) == pytest.approx(-2 / 9)
    assert pairwise_agreement(j.pairs) == pytest.approx(1 / 3)
    per = rater_vs_others(j.pairs, n_boot=50)
    assert per["a"]["agreement"] == pytest.approx(0.5)  # agrees with b, not with c
    assert per["c"]["agreement"] == 0.0


def test_ties_count_as_a_third_vote():
    # unit votes (+, +, tie): agreeing pairs 1 of 3
    j = load_judgments([pair("x", "a", 0), pair("x", "b", 0), pair("x", "c", None)])
    assert pairwise_agreement(j.pairs) == pytest.approx(1 / 3)


def test_kendall_w_hand_values():
    assert kendall_w([[[0], [1], [2]]] * 3, 3) == pytest.approx(1.0)  # identical rankings
    assert kendall_w([[[0], [1], [2]], [[2], [1], [0]]], 3) == pytest.approx(0.0)  # reversed
    # rank sums (2, 5, 5) for two raters [0,1,2] and [0,2,1]: S = 6, W = 12*6 / (4 * 24) = 0.75
    assert kendall_w([[[0], [1], [2]], [[0], [2], [1]]], 3) == pytest.approx(0.75)
    # all-tie rankings give no information
    assert math.isnan(kendall_w([[[0, 1, 2]], [[0, 1, 2]]], 3))


def test_kendall_tau_b_with_a_tie():
    # a: (+, +, -), b: (+, tie, -): C = 2, D = 0, T_b = 1 -> tau_b = 2 / sqrt(2 * 3)
    recs = [pair("1", "a", 0), pair("2", "a", 0), pair("3", "a", 1),
            pair("1", "b", 0), pair("2", "b", None), pair("3", "b", 1)]
    assert rater_matrix(load_judgments(recs).pairs)["tau"][0][1] == pytest.approx(2 / math.sqrt(6))


def test_k3_rankings_decompose_into_pairs():
    r = Comparison(prompt="p", responses=["x", "y", "z"], ranking=[2, [0, 1]], rater="a", meta={"item_id": "k"})
    p = load_judgments([r]).pairs.set_index(["i", "j"])["y"]
    assert p.to_dict() == {(0, 1): 0, (0, 2): -1, (1, 2): -1}


def test_summary_per_campaign_and_bootstrap_interval_contains_estimate():
    recs = [pair(f"i{n}", r, (n + (r == "c" and n % 3 == 0)) % 2) for n in range(30) for r in "abc"]
    for rec in recs[:45]:
        rec.meta["campaign"] = "c0"
    s = agreement_summary(load_judgments(recs), n_boot=100)
    o = s["overall"]
    assert o["pairwise_agreement_ci"][0] <= o["pairwise_agreement"] <= o["pairwise_agreement_ci"][1]
    assert set(s["campaigns"]) == {"c0", "c1"}
    assert 0 < o["krippendorff_alpha"] < 1
