"""Bias detectors on simulated panels with planted biases (fixed seeds), and by hand."""

import numpy as np
import pytest

from alignloop.quality.bias import detect_biases, detected, position_bias
from alignloop.quality.demo_data import demo_samples
from alignloop.quality.gold import helpful_harmless
from alignloop.quality.judgments import load_judgments
from alignloop.quality.simulate import items_from_samples, parse_panel, simulate, synthetic_items

PLANTED = "careful:noise=0.2, hasty:noise=1.0, lefty:position_bias=0.3, verbose:length_bias=0.5"
CLEAN = "r1:noise=0.5, r2:noise=0.5, r3:noise=0.5, r4:noise=0.5"


@pytest.fixture(scope="module")
def demo_items():
    return items_from_samples(demo_samples(400, 2, seed=0), helpful_harmless)


def test_position_statistic_by_hand():
    from quality_helpers import pair

    # 30 judgments, the first-shown response wins 24: rate 0.8, z = (24 - 15) / sqrt(30 / 4)
    recs = [pair(f"i{n}", "r", winner=(n % 2) if n < 24 else 1 - n % 2, first=n % 2) for n in range(30)]
    f = next(x for x in position_bias(load_judgments(recs)) if x["scope"] == "r")
    assert f["first_win_rate"] == pytest.approx(0.8)
    assert f["z"] == pytest.approx(9 / np.sqrt(7.5))


def test_planted_panel_finds_exactly_the_planted_biases(demo_items):
    recs, _ = simulate(demo_items, parse_panel(PLANTED), per_item=3, seed=0)
    report = detect_biases(load_judgments(recs))
    found = detected(report)
    assert ("position", "lefty") in found and ("length", "verbose") in found
    per_rater = {(d, s) for d, s in found if s != "panel"}
    # hasty's planted attribute is noise: low agreement ("divergence") is its only allowed finding
    assert per_rater <= {("position", "lefty"), ("length", "verbose"), ("divergence", "hasty")}
    assert {d for d, s in found if s == "panel"} <= {"position"}  # the panel inherits lefty's bias
    eff = {(f["detector"], f["scope"]): f["effect"] for f in report["findings"]}
    assert 0.08 < eff[("position", "lefty")] < 0.22  # planted 0.3 -> expected 0.15
    assert abs(eff[("position", "careful")]) < 0.05


def test_clean_panel_flags_nothing(demo_items):
    for seed in (0, 1):
        recs, _ = simulate(demo_items, parse_panel(CLEAN), per_item=3, seed=seed)
        assert detected(detect_biases(load_judgments(recs))) == set()


def test_drift_and_leniency_detected_only_where_planted():
    items = synthetic_items(500, k=2, seed=0)
    recs, _ = simulate(items, parse_panel("a, b, c, tired:noise=0.2:drift=0.8"), per_item=4, seed=0,
                       gold_fraction=0, session_size=125)
    found = detected(detect_biases(load_judgments(recs)))
    assert ("drift", "tired") in found and not {f for f in found if f[0] == "drift" and f[1] != "tired"}
    recs, _ = simulate(synthetic_items(150, k=2, seed=1), parse_panel("a, b, c, kind:leniency=0.8, grim:leniency=-0.8"),
                       per_item=5, seed=0, gold_fraction=0, feedback="thumbs")
    report = detect_biases(load_judgments(recs))
    lenient = {f["scope"]: f for f in report["findings"] if f["detector"] == "leniency"}
    assert lenient["kind"]["detected"] and lenient["kind"]["direction"] == "lenient"
    assert lenient["grim"]["detected"] and lenient["grim"]["direction"] == "harsh"
    assert not any(lenient[r]["detected"] for r in "abc")
