"""Diverse panels and practice rounds: rater attributes, assignment balanced across groups (hand-
worked), coverage, the attributes form, practice rounds with known answers and explanations."""

from __future__ import annotations

import re

import pytest
from fastapi.testclient import TestClient

from alignloop.data.records import Comparison, Samples
from alignloop.feedback import reports, store
from alignloop.feedback.app import create_app
from alignloop.feedback.panels import Candidate, groups_needed, pick_item
from alignloop.feedback.practice import ranking_score, round_outcome

from .conftest import SAMPLES, hidden
from .test_feedback_postgres import pg_url  # noqa: F401  (fixture: a fresh PostgreSQL database, or skip)

PANEL = {"panel": {"attribute": "region", "min_groups": 2}}


def _samples(n: int) -> list[Samples]:
    return [Samples(id=f"s{i}", prompt=f"Question {i}?", responses=[f"answer {i} one", f"answer {i} two"])
            for i in range(n)]


def _gold(n: int) -> list[Comparison]:
    return [Comparison(id=f"g{i}", prompt=f"Gold question {i}?", responses=[f"right {i}", f"wrong {i}"],
                       ranking=[0, 1], explanation=f"Answer 'right {i}' is correct because it is right.")
            for i in range(n)]


# --- hand-worked balanced assignment -----------------------------------------------------------

def test_pick_item_hand_worked():
    # item 1: one EU rater so far, 1 free place, a US rater could still come -> n = 2, m = 1:
    # the last place is held for the US group; item 2: empty, 2 places.
    c1 = Candidate(1, ("eu",), 1, frozenset({"us"}))
    c2 = Candidate(2, (), 2, frozenset({"eu", "us"}))
    assert groups_needed(c1, 2) == 1 and groups_needed(c2, 2) == 2
    assert pick_item([c1, c2], "eu", 2) == 2  # EU: new to item 2 only
    assert pick_item([c1, c2], "us", 2) == 1  # US is new to both: the oldest first
    assert pick_item([c1], "eu", 2) is None  # item 1's last place waits for the US group
    assert pick_item([c1], None, 2) is None  # a rater without the attribute adds no group either
    # no US rater can come any more (none exists, or all had item 1): the place is free for anyone
    c1_alone = Candidate(1, ("eu",), 1, frozenset())
    assert groups_needed(c1_alone, 2) == 0 and pick_item([c1_alone], "eu", 2) == 1
    # three places, two groups needed, one EU so far: an EU rater may take one of the two free places
    assert pick_item([Candidate(3, ("eu",), 2, frozenset({"us"}))], "eu", 2) == 3
    # a group already covered twice still counts once
    assert groups_needed(Candidate(4, ("eu", "eu"), 1, frozenset({"us", "asia"})), 3) == 2


def _panel_db(sessions, raters: dict[str, str | None], n_items: int = 4, rpi: int = 2) -> dict[str, int]:
    with sessions() as s:
        store.create_campaign(s, "panel", "compare", _samples(n_items), raters_per_item=rpi, gold_rate=0.0,
                              options=PANEL)
        ids = {}
        for name, region in raters.items():
            rater = store.add_rater(s, name)[0]
            ids[name] = rater.id
            if region:
                store.set_attributes(s, rater.id, {"region": region})
    return ids


def _take_all(s, rater_id: int) -> list[int]:
    """Items the rater is given, answering each one at once ([0, 1])."""
    items = []
    while (a := store.next_assignment_view(s, rater_id)) is not None:
        items.append(a.item.id)
        store.judge(s, rater_id, a.id, ranking=[0, 1])
    return items


def test_panel_assignment_two_groups(sessions):
    ids = _panel_db(sessions, {"a1": "eu", "a2": "eu", "b1": "us"})
    with sessions() as s:
        assert _take_all(s, ids["a1"]) == [1, 2, 3, 4]  # new to every item
        assert _take_all(s, ids["a2"]) == []  # every last place is held for the US rater
        assert _take_all(s, ids["b1"]) == [1, 2, 3, 4]
        cov = store.coverage(s, 1, store.CampaignOptions.model_validate(PANEL).panel)
    assert cov["items_covered"] == 4 and cov["items_by_groups"] == {2: 4}
    assert {g["group"]: g["judgments"] for g in cov["groups"]} == {"eu": 4, "us": 4}


def test_panel_never_deadlocks_on_an_empty_group(sessions):
    ids = _panel_db(sessions, {"a1": "eu", "a2": "eu", "x": None})
    with sessions() as s:  # only one group exists: items fill as without the option
        assert _take_all(s, ids["a1"]) == [1, 2, 3, 4]
        assert _take_all(s, ids["a2"]) == [1, 2, 3, 4]
        assert _take_all(s, ids["x"]) == []  # full


def test_a_held_place_is_freed_when_the_groups_last_rater_skips(sessions):
    ids = _panel_db(sessions, {"a1": "eu", "a2": "eu", "b1": "us"}, n_items=1)
    with sessions() as s:
        assert _take_all(s, ids["a1"]) == [1]
        assert store.next_assignment_view(s, ids["a2"]) is None
        a = store.next_assignment_view(s, ids["b1"])
        store.skip_assignment(s, store.caller(s, ids["b1"]), a.id)
        assert _take_all(s, ids["a2"]) == [1]  # no US rater can take item 1 any more


def test_panel_campaign_that_holds_its_places_does_not_block_the_next_campaign(sessions):
    ids = _panel_db(sessions, {"a1": "eu", "a2": "eu", "b1": "us"}, n_items=1)
    with sessions() as s:
        store.create_campaign(s, "plain", "compare", _samples(1), raters_per_item=2, gold_rate=0.0)
        _take_all(s, ids["a1"])
        a = store.next_assignment_view(s, ids["a2"])
        assert a is not None and a.campaign.name == "plain"


def test_attributes_are_checked_merged_and_exported(sessions):
    with sessions() as s:
        store.create_campaign(s, "c", "compare", _samples(1), raters_per_item=1, gold_rate=0.0)
        r = store.add_rater(s, "ann")[0]
        assert store.set_attributes(s, r.id, store.parse_attributes("region=eu, expert=yes")) == \
            {"region": "eu", "expert": "yes"}
        assert store.set_attributes(s, r.id, store.parse_attributes("expert=")) == {"region": "eu"}
        with pytest.raises(store.Invalid, match="not key=value"):
            store.parse_attributes("region")
        with pytest.raises(store.Invalid, match="key '1x'"):
            store.parse_attributes("1x=a")
        a = store.next_assignment_view(s, r.id)
        store.judge(s, r.id, a.id, ranking=[1, 0])
        (rec,) = reports.export_records(s)
    assert rec.meta["rater_attributes"] == {"region": "eu"}


def test_options_are_validated(sessions):
    with sessions() as s:
        with pytest.raises(store.Invalid, match="options.panel.min_groups"):
            store.create_campaign(s, "c", "compare", _samples(1), raters_per_item=1, options=PANEL)
        with pytest.raises(store.Invalid, match="options.practice.items: 3 practice items need as many gold"):
            store.create_campaign(s, "c", "compare", _samples(1), gold=_gold(2), options={"practice": {"items": 3}})
        with pytest.raises(store.Invalid, match="options.colour"):
            store.create_campaign(s, "c", "compare", _samples(1), options={"colour": 1})
        bad = _gold(1)[0].model_copy(update={"explanation": " "})
        with pytest.raises(store.Invalid, match="gold record 1: field 'explanation'"):
            store.create_campaign(s, "c", "compare", _samples(1), gold=[bad])


# --- practice: scores ---------------------------------------------------------------------------

def test_practice_scores_hand_worked():
    assert ranking_score([0, 1, 2], [0, [1, 2]]) == pytest.approx(2.5 / 3)
    assert ranking_score([0, 1], [1, 0]) == 0.0
    assert ranking_score([[0, 1]], [1, 0]) == 1.0  # no strict gold pair: nothing to get wrong
    assert round_outcome([1.0], 2, 0.8) == "open"
    assert round_outcome([1.0, 0.5], 2, 0.8) == "failed"  # mean 0.75
    assert round_outcome([1.0, 0.6], 2, 0.8) == "passed"


# --- pages: attributes on first login, a practice round -----------------------------------------

def login(app, token: str) -> TestClient:
    client = TestClient(app)
    page = client.get(f"/login/{token}")
    client.post(f"/login/{token}", data={"csrf_token": hidden(page.text, "csrf_token")}, follow_redirects=False)
    return client


def _answer_practice(client: TestClient, campaign_id: int, right: bool) -> str:
    page = client.get(f"/practice/{campaign_id}")
    assert page.status_code == 200 and "Practice round" in page.text
    letters = re.findall(r'<li class="card".*?<span class="letter">(\w)</span>.*?<div class="text">(.*?)</div>',
                         page.text, flags=re.S)
    ranks = {}
    for p, (_, text) in enumerate(letters):
        good = text.startswith("right")
        ranks[f"rank_{p}"] = "1" if good == right else "2"
    r = client.post(f"/practice/{campaign_id}/answer", data={
        "csrf_token": hidden(page.text, "csrf_token"), "item_id": hidden(page.text, "item_id"), **ranks})
    assert r.status_code == 200, r.text
    return r.text


@pytest.mark.parametrize("on_fail", ["retry", "stop"])
def test_practice_round_in_the_pages(db_path, on_fail):
    _, sessions = store.open_db(db_path)
    with sessions() as s:
        store.create_campaign(s, "prac", "compare", _samples(2), raters_per_item=1, gold=_gold(3), gold_rate=0.0,
                              options={"ask": ["region"],
                                       "practice": {"items": 2, "pass": 1.0, "on_fail": on_fail}})
        token = store.add_rater(s, "ann")[1]
        boss = store.add_rater(s, "boss", admin=True)[1]
    app = create_app(db_path)
    client = login(app, token)
    r = client.get("/", follow_redirects=False)
    assert r.headers["location"] == "/profile/1"  # first the attribute the campaign asks for
    page = client.get("/profile/1")
    client.post("/profile/1", data={"csrf_token": hidden(page.text, "csrf_token"), "attr_region": "eu"})
    assert client.get("/", follow_redirects=False).headers["location"] == "/practice/1"

    shown = _answer_practice(client, 1, right=True)
    assert "your score 100%" in shown and "is correct because it is right" in shown
    assert re.search(r'id="known-answer"><li><strong>\w</strong> right', shown)
    shown = _answer_practice(client, 1, right=False)  # round mean 0.5 < 1.0
    if on_fail == "stop":
        assert 'id="practice-failed"' in shown
        assert "All done" in client.get("/").text  # no live items for this rater
    else:
        assert 'id="practice-retry"' in shown
        _answer_practice(client, 1, right=True)
        shown = _answer_practice(client, 1, right=True)
        assert 'id="practice-passed"' in shown
        r = client.get("/", follow_redirects=False)
        assert r.headers["location"].startswith("/assignments/")
    with sessions() as s:
        assert reports.export_records(s) == []  # practice answers are never judgments
        curves = store.practice_curves(s, 1, 1.0)
    assert [a["score"] for a in curves[0]["answers"]] == ([1.0, 0.0] if on_fail == "stop" else [1.0, 0.0, 1.0, 1.0])
    admin = login(app, boss).get("/admin")
    assert 'id="practice-1"' in admin.text and "1: 50% (2)" in admin.text  # round 1's mean and size


def test_a_practised_gold_item_is_never_a_live_gold_check(sessions):
    with sessions() as s:
        store.create_campaign(s, "prac", "compare", _samples(6), raters_per_item=1, gold=_gold(2), gold_rate=1.0,
                              options={"practice": {"items": 1, "pass": 0.5}})
        r = store.add_rater(s, "ann")[0]
        info = store.campaign_info(s.connection(), 1)
        assert store.next_assignment_view(s, r.id) is None  # practice first
        state = store.practice_state(s.connection(), r.id, info)
        store.submit_practice(s, r.id, info, state.next_item, ranking=[0, 1])
        practised = state.next_item
        seen = []
        while (a := store.next_assignment_view(s, r.id)) is not None:
            seen.append((a.item.id, a.item.is_gold))
            store.judge(s, r.id, a.id, ranking=[0, 1])
    gold_seen = {i for i, g in seen if g}
    assert practised not in gold_seen and len(gold_seen) == 1  # the other gold item only


def test_admin_sets_attributes_and_sees_coverage(db_path):
    _, sessions = store.open_db(db_path)
    with sessions() as s:
        store.create_campaign(s, "panel", "rank", [Samples(**r) for r in SAMPLES], raters_per_item=2, gold_rate=0.0,
                              options=PANEL)
        boss = store.add_rater(s, "boss", admin=True)[1]
        store.add_rater(s, "ann")
    client = login(create_app(db_path), boss)
    page = client.get("/admin")
    r = client.post("/admin/raters/attributes", data={"csrf_token": hidden(page.text, "csrf_token"), "name": "ann",
                                                      "attributes": "region=eu, language=de"})
    assert r.status_code == 200 and "ann: language=de, region=eu" in r.text
    assert 'id="coverage-1"' in r.text and "0 of 3" in r.text
    r = client.post("/admin/raters/attributes", data={"csrf_token": hidden(page.text, "csrf_token"), "name": "nobody",
                                                      "attributes": "region=eu"})
    assert r.status_code == 404


def test_cli_creates_a_panel_and_practice_campaign_and_sets_attributes(capsys, tmp_path, samples_file, db_path):
    from alignloop.cli import main

    gold = tmp_path / "gold.jsonl"
    gold.write_text("".join(r.model_dump_json() + "\n" for r in _gold(2)), encoding="utf-8")
    db = str(db_path)
    main(["feedback", "create", "--db", db, "--samples", str(samples_file), "--gold", str(gold), "--raters-per-item",
          "2", "--panel", "region:2", "--ask", "region", "--practice-items", "2", "--practice-pass", "0.5"])
    main(["feedback", "add-rater", "ann", "--db", db])
    capsys.readouterr()
    main(["feedback", "set-attributes", "ann", "--db", db, "--attributes", "region=eu, expert=yes"])
    assert capsys.readouterr().out.strip() == "rater 'ann': expert=yes, region=eu"
    with pytest.raises(SystemExit) as exc:
        main(["feedback", "create", "--db", db, "--samples", str(samples_file), "--name", "x", "--panel", "region"])
    assert exc.value.code == 2 and "--panel 'region': give ATTRIBUTE:N" in capsys.readouterr().err
    _, sessions = store.open_db(db_path)
    with sessions() as s:
        info = store.campaign_info(s.connection(), 1)
    assert info.options.panel.attribute == "region" and info.options.practice.items == 2
    assert info.options.ask == ["region"] and info.options.practice.pass_ == 0.5


def test_panels_and_practice_on_postgres(pg_url):
    """The same panel assignment and practice round on PostgreSQL (candidate items locked with
    SKIP LOCKED). Skipped unless a server is reachable (test_feedback_postgres.py)."""
    from alignloop.feedback.practice import practice_order

    engine, sessions = store.open_db(pg_url)
    ids = _panel_db(sessions, {"a1": "eu", "a2": "eu", "b1": "us"})
    with sessions() as s:
        assert _take_all(s, ids["a1"]) == [1, 2, 3, 4]
        assert _take_all(s, ids["a2"]) == []
        assert _take_all(s, ids["b1"]) == [1, 2, 3, 4]
        store.create_campaign(s, "prac", "compare", _samples(1), raters_per_item=1, gold=_gold(2), gold_rate=0.0,
                              options={"practice": {"items": 1, "pass": 1.0}})
        info = store.campaign_info(s.connection(), 2)
        assert store.next_assignment_view(s, ids["a2"]) is None  # practice first
        state = store.practice_state(s.connection(), ids["a2"], info)
        shown = practice_order(info, ids["a2"], 1, state.next_item, 2)
        right = [shown.index(0), shown.index(1)]  # the gold answer [0, 1] in display positions
        result = store.submit_practice(s, ids["a2"], info, state.next_item, ranking=right)
        assert result.score == 1.0 and result.state.status == "passed"
        a = store.next_assignment_view(s, ids["a2"])
        assert a is not None and a.campaign.name == "prac"
    engine.dispose()


def test_audit_of_a_database_counts_skips_and_groups(sessions, db_path, tmp_path, capsys):
    import json

    from alignloop.cli import main

    ids = _panel_db(sessions, {"a1": "eu", "b1": "us"}, n_items=4)
    with sessions() as s:
        for name in ("a1", "b1"):
            rid = ids[name]
            caller = store.caller(s, rid)
            a = store.next_assignment_view(s, rid)
            store.skip_assignment(s, caller, a.id)  # one skip each
            _take_all(s, rid)  # the other three answered
    main(["quality", "audit", "--db", str(db_path), "--campaign", "panel", "--group-attribute", "region",
          "--out", str(tmp_path / "audit.json")])
    assert "audit of 6 judgments by 2 raters" in capsys.readouterr().out
    a = json.loads((tmp_path / "audit.json").read_text())
    assert a["per_rater"]["a1"]["skip_rate"] == pytest.approx(1 / 4) and a["per_rater"]["a1"]["group"] == "eu"
    assert {(d["group"], d["judgments"]) for d in a["per_day_group"]} == {("eu", 3), ("us", 3)}
    assert a["per_group"]["eu"]["skip_rate"] == pytest.approx(1 / 4) and a["per_group"]["us"]["judgments"] == 3


def test_thumbs_practice_scores_labels(sessions):
    from alignloop.data.records import BinaryFeedback

    gold = [BinaryFeedback(prompt="Is this polite?", response="Thank you kindly.", label=1, explanation="It thanks."),
            BinaryFeedback(prompt="Is this polite?", response="Go away.", label=0, explanation="It dismisses.")]
    with sessions() as s:
        store.create_campaign(s, "t", "thumbs", _samples(1), raters_per_item=1, gold=gold, gold_rate=0.0,
                              options={"practice": {"items": 2, "pass": 0.5, "on_fail": "stop"}})
        r = store.add_rater(s, "ann")[0]
        info = store.campaign_info(s.connection(), 1)
        scores = []
        while (st := store.practice_state(s.connection(), r.id, info)).status == "todo":
            label = 1  # always thumbs up: right on one of the two
            result = store.submit_practice(s, r.id, info, st.next_item, labels=[label])
            scores.append(result.score)
            assert result.explanation in ("It thanks.", "It dismisses.")
        assert sorted(scores) == [0.0, 1.0] and st.status == "passed"  # mean 0.5 reaches the pass mark


def test_admin_quality_section_shows_agreement_per_group(db_path):
    _, sessions = store.open_db(db_path)
    ids = _panel_db(sessions, {"a1": "eu", "b1": "us"}, n_items=3)
    with sessions() as s:
        for name, best in (("a1", 0), ("b1", 1)):  # a1 always prefers response 0, b1 response 1
            while (a := store.next_assignment_view(s, ids[name])) is not None:
                order = list(a.display_order)
                store.judge(s, ids[name], a.id, ranking=[order.index(best), order.index(1 - best)])
        boss = store.add_rater(s, "boss", admin=True)[1]
    page = login(create_app(db_path), boss).get("/admin").text
    assert 'id="quality-groups-region"' in page
    # one rater per group: no within-group agreement; opposite majorities need 2 votes per group
    assert "eu vs us: cross-group agreement 0.000" in page and "0 pairs with opposite majorities" in page
