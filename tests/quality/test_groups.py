"""Agreement and bias per rater group and between groups (quality/groups.py), hand-worked."""

from __future__ import annotations

import pytest

from alignloop.data.records import Comparison
from alignloop.quality.groups import cross_agreement, group_report, rater_groups
from alignloop.quality.judgments import load_judgments
from alignloop.quality.report import analyse


def _vote(rater: str, group: str, item: str, better: int, first: int = 0) -> Comparison:
    return Comparison(prompt=f"q {item}", responses=["short", "a much longer answer"], ranking=[better, 1 - better],
                      rater=rater, source="human",
                      meta={"item_id": item, "display_order": [first, 1 - first], "rater_attributes": {"region": group}})


def test_within_cross_and_flagged_hand_worked():
    # one unit: A votes (+1, +1), B votes (-1, -1, +1)  (+1: response 0 better)
    recs = [_vote("a1", "A", "x", 0), _vote("a2", "A", "x", 0),
            _vote("b1", "B", "x", 1), _vote("b2", "B", "x", 1), _vote("b3", "B", "x", 0)]
    groups = rater_groups(recs, "region")
    assert groups == {"a1": "A", "a2": "A", "b1": "B", "b2": "B", "b3": "B"}
    j = load_judgments(recs)
    rep = group_report(j, groups, n_boot=0)
    assert rep["groups"]["A"]["agreement"] == 1.0
    assert rep["groups"]["B"]["agreement"] == pytest.approx(1 / 3)
    (b,) = rep["between"]
    assert b["cross_agreement"] == pytest.approx(1 / 3)  # (2 * 1 + 0 * 2) / (2 * 3)
    assert b["gap"] == pytest.approx(1 / 3)
    assert b["opposite_majority_share"] == 1.0
    assert b["flagged_pairs"] == 1
    assert [f["item"] for f in rep["flagged_items"]] == ["x"]
    assert rep["flagged_items"][0]["pairs"][0]["groups"]["B"] == {"mean_vote": pytest.approx(-1 / 3), "votes": 3}


def test_a_group_that_prefers_longer_answers_is_told_apart():
    recs = []
    for k in range(40):  # A always picks the longer answer (1), B the shorter (0); display order alternates
        item = f"i{k}"
        recs += [_vote("a1", "A", item, 1, k % 2), _vote("a2", "A", item, 1, (k + 1) % 2),
                 _vote("b1", "B", item, 0, k % 2), _vote("b2", "B", item, 0, (k + 1) % 2)]
    rep = group_report(load_judgments(recs), rater_groups(recs, "region"), n_boot=100)
    assert rep["groups"]["A"]["length"] == 0.5 and rep["groups"]["B"]["length"] == -0.5
    (b,) = rep["between"]
    assert b["length_difference"] == 1.0 and b["length_difference_ci"][0] > 0.5
    assert b["position_difference"] == 0.0 and b["cross_agreement"] == 0.0
    assert rep["n_flagged_items"] == 40


def test_the_report_has_a_groups_section_per_attribute(tmp_path):
    from alignloop.quality.report import write_report

    recs = [_vote("a1", "A", "x", 0), _vote("a2", "A", "x", 0), _vote("b1", "B", "x", 1), _vote("b2", "B", "x", 1)]
    a = analyse(recs, consensus_method="majority", n_boot=0)
    assert set(a["groups"]) == {"region"} and a["groups"]["region"]["n_flagged_items"] == 1
    assert analyse(recs, consensus_method="majority", n_boot=0, group_by=[])["groups"] == {}
    html = write_report(a, tmp_path)["html"].read_text()
    assert "Rater groups by region" in html


