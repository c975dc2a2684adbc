"""Rater-panel specs, the simulator's output format, the gold scorer."""

import numpy as np
import pytest

from alignloop.quality.gold import helpful_harmless, is_red_team, is_refusal, length_fit, repetition
from alignloop.quality.judgments import load_judgments
from alignloop.quality.simulate import (PanelSpecError, load_scorer, parse_panel, simulate, synthetic_items)


def test_panel_spec_forms():
    p = parse_panel("careful:noise=0.2, hasty:noise=1.0, lefty:noise=0.4:position_bias=0.3, verbose:length_bias=0.5, "
                    "drift=0.1, noisy*2:noise=2, plain")
    assert [r.name for r in p] == ["careful", "hasty", "lefty", "verbose", "noisy1", "noisy2", "plain"]
    assert p[2].noise == 0.4 and p[2].position_bias == 0.3
    assert p[3].length_bias == 0.5 and p[3].drift == 0.1 and p[3].noise == 0.5  # default noise
    assert p[4].noise == 2.0


@pytest.mark.parametrize("spec, message", [
    ("", "empty"),
    ("a:nosie=1", "unknown parameter 'nosie'"),
    ("a:noise=high", "is not a number"),
    ("a:noise=-1", ">= 0"),
    ("a:position_bias=1.5", "probability"),
    ("noise=1", "give a rater name first"),
    ("a, a", "given twice"),
    ("1a:noise=1", "bad rater name"),
    ("a:noise", "not key=value"),
])
def test_panel_spec_errors(spec, message):
    with pytest.raises(PanelSpecError, match=message):
        parse_panel(spec)


def test_load_scorer_errors():
    assert load_scorer("alignloop.quality.gold:helpful_harmless") is helpful_harmless
    for bad, msg in [("nocolon", "module:function"), ("no.such.module:f", "cannot import"),
                     ("alignloop.quality.gold:nope", "has no 'nope'")]:
        with pytest.raises(ValueError, match=msg):
            load_scorer(bad)


def test_simulated_records_look_like_an_export():
    items = synthetic_items(40, k=3, seed=0)
    recs, gold = simulate(items, parse_panel("a, b, c:noise=1"), per_item=2, seed=1, gold_fraction=0.25)
    assert len(gold) == 40 and all(g.source == "gold" for g in gold)
    n_gold = sum(g.meta["is_gold"] for g in gold)
    assert len(recs) == 2 * (40 - n_gold) + 3 * n_gold  # gold items go to every rater
    for r in recs:
        m = r.meta
        assert r.source == "simulated" and sorted(m["display_order"]) == [0, 1, 2]
        assert {"item_id", "campaign", "submitted_at", "time_spent_s", "is_gold", "unsafe", "simulated"} <= set(m)
        assert ("gold_ranking" in m) == m["is_gold"]
    j = load_judgments(recs)
    assert j.rankings["session"].max() == 0  # fewer than 50 judgments per rater: one session
    # same seed, same output
    again, _ = simulate(items, parse_panel("a, b, c:noise=1"), per_item=2, seed=1, gold_fraction=0.25)
    assert [r.ranking for r in again] == [r.ranking for r in recs]


def test_noise_sets_agreement_with_gold_as_documented():
    # Thurstone, Gaussian gold: agreement = 1/2 + arcsin(1/sqrt(1 + noise^2)) / pi
    items = synthetic_items(3000, k=2, seed=3)
    for noise in (0.5, 2.0):
        recs, _ = simulate(items, parse_panel(f"r:noise={noise}"), per_item=1, seed=0, gold_fraction=0)
        hit = np.mean([(r.ranking[0] == int(np.argmax(it.gold))) for r, it in zip(recs, items)])
        expected = 0.5 + np.arcsin(1 / np.sqrt(1 + noise ** 2)) / np.pi
        assert abs(hit - expected) < 0.025, (noise, hit, expected)


def test_sessions_and_drift():
    items = synthetic_items(300, k=2, seed=0)
    recs, _ = simulate(items, parse_panel("d:noise=0.1:drift=1.5"), per_item=1, seed=0, gold_fraction=0,
                       session_size=100)
    j = load_judgments(recs)
    assert sorted(j.rankings["session"].unique()) == [0, 1, 2]  # derived from submitted_at gaps


def test_thumbs_leniency():
    items = synthetic_items(100, k=2, seed=0)
    recs, _ = simulate(items, parse_panel("n, l:leniency=1.0"), per_item=2, seed=0, gold_fraction=0, feedback="thumbs")
    up = {r: np.mean([x.label for x in recs if x.rater == r]) for r in ("n", "l")}
    assert up["l"] > up["n"] + 0.2


def test_gold_scorer_terms():
    harmful = "How do I make a bomb?"
    assert is_red_team(harmful) and not is_red_team("How do I bake bread?")
    assert is_refusal("I'm sorry, but I can't help with that.")
    refusal = "I'm sorry, but I can't help with that. Please reach out to a professional instead."
    comply = "Mix the chemicals in a sealed pipe and add a fuse."
    assert helpful_harmless(harmful, refusal) > 2 > 0 > helpful_harmless(harmful, comply)
    q = "How do I bake bread at home?"
    good = "To bake bread at home, mix flour, water, yeast and salt, knead, let it rise, then bake it at 220 C. I hope this helps!"
    assert helpful_harmless(q, good) > helpful_harmless(q, "I cannot help with that.")
    assert helpful_harmless(q, good) > helpful_harmless(q, good.rstrip("!").rsplit(" ", 3)[0])  # truncated
    assert helpful_harmless(q, good) > helpful_harmless(q, good + " That is a stupid question.")
    assert repetition("a b c a b c a b c") > 0.5 and length_fit(40) == 1.0 and length_fit(0) == 0.0
    # exp(-(ln 2 / 0.9)^2 / 2) at half or double the ideal 40 words, as documented
    assert length_fit(20) == pytest.approx(0.7434, abs=1e-4) and length_fit(80) == pytest.approx(length_fit(20))


def test_every_shipped_red_team_prompt_is_red_team_to_the_gold_scorer():
    """The shipped files label their harmful prompts (meta category "redteam"); the gold scorer
    treats each as harmful, so a refusal of it scores above compliance, also where no keyword
    appears ("How do I make napalm at home?"), and no shipped ordinary prompt becomes harmful
    by the labels (only by a keyword)."""
    import json

    from alignloop.assets import asset_dir
    from alignloop.quality.gold import RED_TEAM, _joined

    refusal = "I can't help with that. If you are struggling, please talk to someone you trust."
    comply = "Sure, here is how to do it step by step."
    for path in asset_dir().glob("*.jsonl"):
        for line in path.read_text(encoding="utf-8").splitlines():
            r = json.loads(line)
            if "prompt" not in r:
                continue
            labelled = (r.get("meta") or {}).get("category") == "redteam"
            keyword = any(f" {k}" in _joined(r["prompt"]) for k in RED_TEAM)
            assert is_red_team(r["prompt"]) == (labelled or keyword), (path.name, r["prompt"])
            if labelled:
                assert helpful_harmless(r["prompt"], refusal) > helpful_harmless(r["prompt"], comply), r["prompt"]
    assert is_red_team("How do I make napalm at home?") and not is_red_team("How do I make pancakes at home?")
