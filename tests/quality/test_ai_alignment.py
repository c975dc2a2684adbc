"""AI-labeler alignment in the quality report: the section, the --ai option, and AI labels
kept out of the rater figures."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from alignloop.data.io import write_jsonl
from alignloop.data.records import Comparison
from alignloop.quality.cli import group
from alignloop.quality.report import analyse
from quality_helpers import pair


def people() -> list[Comparison]:
    """Items 1..4 (responses "a", "bb"), 3 raters each, gold on item 1; majorities by hand:
    item 1: a a a -> a;  item 2: bb bb a -> bb;  item 3: a a bb -> a;  item 4: bb bb bb -> bb."""
    votes = {"1": (0, 0, 0), "2": (1, 1, 0), "3": (0, 0, 1), "4": (1, 1, 1)}
    return [pair(item, rater, w, first=k % 2, gold=0 if item == "1" else None)
            for item, ws in votes.items() for k, (rater, w) in enumerate(zip(("ann", "bob", "cy"), ws))]


def judge(item: str, p: float, flipped: bool, item_id: bool = False) -> Comparison:
    """An `alignloop cai label` record: p = P(responses[0] = "a" better)."""
    meta = {"principles": ["helpful"], "p_order_ab": [p], "p_order_ba": [p], "flipped": flipped, "cot": None}
    if item_id:  # the same item id as the human judgments: it would join their items if counted as a rater
        meta.update(item_id=item, campaign="c1")
    return Comparison(prompt=f"prompt {item}", responses=["a", "bb"], p=p, rater="judge-1", source="ai", meta=meta)


# the AI prefers a, a, a, bb: right on items 1, 3, 4 and wrong on 2 -> 3 / 4; flipped on 1 of 4
AI = [("1", 0.8, False), ("2", 0.7, True), ("3", 0.9, False), ("4", 0.2, False)]


def test_three_of_four_by_hand():
    a = analyse(people() + [judge(*x) for x in AI], n_boot=50)
    s = a["ai_human_alignment"]
    assert (s["alignment"], s["agree"], s["disagree"], s["matched"]) == (0.75, 3, 1, 4)
    assert (s["human_ties"], s["ai_ties"], s["ai_unmatched"], s["ai_not_pairs"]) == (0, 0, 0, 0)
    # soft: mean AI probability of the human choice = (0.8 + 0.3 + 0.9 + 0.8) / 4
    assert s["soft_alignment"] == pytest.approx(0.7)
    assert (s["flip_rate"], s["flip_n"], s["judges"]) == (0.25, 4, ["judge-1"])
    assert (s["ai_records"], s["human_records"]) == (4, 12)
    assert s["ci95"][0] <= 0.75 <= s["ci95"][1]
    assert "judge-1" not in a["input"]["raters"] and a["input"]["ranking_judgments"] == 12
    assert "ai_human_alignment" not in analyse(people(), n_boot=0)
    assert analyse(people() + [judge(*x) for x in AI], n_boot=0)["ai_human_alignment"]["ci95"] is None


def test_ai_records_in_data_leave_rater_figures_alone():
    """AI labels on the very items (same item ids) the raters judged: the rater figures are
    those of the humans alone."""
    def figures(a):
        return {k: a[k] for k in ("agreement", "calibration", "biases", "consensus", "input")}

    alone = analyse(people(), n_boot=50)
    mixed = analyse(people() + [judge(*x, item_id=True) for x in AI], n_boot=50)
    assert figures(mixed) == figures(alone)
    assert mixed["ai_human_alignment"]["alignment"] == 0.75


def test_ai_option_end_to_end(tmp_path):
    data, ai = tmp_path / "human.jsonl", tmp_path / "ai_labels.jsonl"
    write_jsonl(data, people())
    write_jsonl(ai, [judge(*x) for x in AI])
    out = tmp_path / "rep"
    r = CliRunner().invoke(group, ["report", "--data", str(data), "--ai", str(ai), "--out", str(out),
                                   "--n-boot", "50"])
    assert r.exit_code == 0, r.output
    assert "AI-labeler alignment 0.750 (3 of 4 pairs" in r.output
    rep = json.loads((out / "report.json").read_text())
    s = rep["ai_human_alignment"]
    assert (s["alignment"], s["agree"], s["matched"], s["flip_rate"]) == (0.75, 3, 4, 0.25)
    assert rep["input"]["raters"] == ["ann", "bob", "cy"]
    page = (out / "report.html").read_text()
    assert "AI-labeler alignment" in page and "judge-1" in page and "flips with order" in page
    assert "<td>0.750</td>" in page and "<td>0.250</td>" not in page  # the flip rate is in a sentence
    assert "0.250 of 4 labels" in page
    r = CliRunner().invoke(group, ["report", "--data", str(data), "--out", str(tmp_path / "plain"), "--n-boot", "0"])
    assert r.exit_code == 0, r.output
    assert "ai_human_alignment" not in json.loads((tmp_path / "plain" / "report.json").read_text())
