"""The store: campaigns, assignment, judgments in original indices, idempotency, export."""

from __future__ import annotations

import hashlib
import re

import pytest
from sqlalchemy import func, select

from alignloop.data.records import BinaryFeedback, Comparison, Samples
from alignloop.feedback import campaigns, reports, store
from alignloop.feedback.db import Assignment, Item, Judgment, Rater, writing
from alignloop.feedback.limits import MAX_RESPONSE_CHARS, MAX_RESPONSES

from .conftest import SAMPLES


def samples(n: int = 3, k: int = 4) -> list[Samples]:
    return [Samples(prompt=f"prompt {i}", responses=[f"r{i}.{j}" for j in range(k)], model="m",
                    sampling={"temperature": 0.5}) for i in range(n)]


def raters(s, *names):
    return [store.add_rater(s, n)[0] for n in names]


def answer_all(s, rater) -> list[Assignment]:
    got = []
    while (a := store.next_assignment(s, rater)) is not None:
        k = len(a.item.responses)
        store.submit_judgment(s, rater, a.id, ranking=list(range(k)), key=f"key-{a.id}")
        got.append(a)
    return got


def test_campaign_items_keep_prompt_model_and_sampling(sessions):
    with sessions() as s:
        c = store.create_campaign(s, "c", "rank", [Samples(**r) for r in SAMPLES], raters_per_item=2)
        items = s.scalars(select(Item).where(Item.campaign_id == c.id).order_by(Item.id)).all()
        assert [i.source_id for i in items] == ["photo", "sum", "capital"]
        assert items[0].prompt == {"prompt": "Explain photosynthesis to a child."}
        assert items[1].prompt == {"messages": SAMPLES[1]["messages"]}
        assert items[0].responses == SAMPLES[0]["responses"]
        assert items[0].model == "smollm2-135m-instruct" and items[0].sampling == {"temperature": 0.8, "top_p": 0.95}


@pytest.mark.parametrize("kind, records, message", [
    ("compare", samples(1, 4), "a compare campaign needs exactly 2 responses, got 4 (use --kind rank"),
    ("rank", samples(1, 1), "a rank campaign needs at least 2 responses, got 1"),
    ("rank", [Samples(prompt="p", responses=["a", "  "])], "field 'responses[1]': empty response"),
    ("rank", [Samples(prompt="p", responses=["a", "b" * (MAX_RESPONSE_CHARS + 1)])], "responses[1]': 50001 characters"),
    ("rank", samples(1, MAX_RESPONSES + 1), "at most 16 fit on a page"),
    ("vote", samples(1), "'vote' is not one of rank, compare, thumbs"),
])
def test_create_refuses_what_the_kind_cannot_show(sessions, kind, records, message):
    with sessions() as s:
        with pytest.raises(store.Invalid, match=re.escape(message)):
            store.create_campaign(s, "c", kind, records, where=["in.jsonl:1"])
        s.rollback()
        assert s.scalar(select(func.count()).select_from(Item)) == 0


def test_duplicate_campaign_name_is_a_conflict(sessions):
    with sessions() as s:
        store.create_campaign(s, "c", "rank", samples())
        with pytest.raises(store.Conflict, match="exists already"):
            store.create_campaign(s, "c", "rank", samples())


def test_each_item_gets_raters_per_item_distinct_raters(sessions):
    with sessions() as s:
        store.create_campaign(s, "c", "rank", samples(3), raters_per_item=2, gold_rate=0.0)
        team = raters(s, "a", "b", "c", "d", "e")
        done = {r.name: answer_all(s, r) for r in team}
        # 3 items x 2 places = 6 assignments, taken in order: a and b take all three, then nothing is left
        assert [len(done[n]) for n in "abcde"] == [3, 3, 0, 0, 0]
        pairs = s.execute(select(Assignment.item_id, Assignment.rater_id)).all()
        assert len(pairs) == len(set(pairs)) == 6
        per_item = dict(s.execute(select(Assignment.item_id, func.count()).group_by(Assignment.item_id)).all())
        assert sorted(per_item.values()) == [2, 2, 2]
        assert s.scalar(select(func.count()).select_from(Judgment)) == 6


def test_open_assignment_comes_back_until_answered(sessions):
    with sessions() as s:
        store.create_campaign(s, "c", "rank", samples(2), raters_per_item=1, gold_rate=0.0)
        (a,) = raters(s, "a")
        first = store.next_assignment(s, a)
        assert store.next_assignment(s, a).id == first.id
        store.submit_judgment(s, a, first.id, ranking=[0, 1, 2, 3])
        assert store.next_assignment(s, a).id != first.id


def test_skip_gives_the_place_to_another_rater_but_not_back_to_the_skipper(sessions):
    with sessions() as s:
        store.create_campaign(s, "c", "rank", samples(1), raters_per_item=1, gold_rate=0.0)
        a, b = raters(s, "a", "b")
        got = store.next_assignment(s, a)
        assert store.next_assignment(s, b) is None  # the only place is taken
        store.skip_assignment(s, a, got.id)
        assert store.next_assignment(s, a) is None
        assert store.next_assignment(s, b).item_id == got.item_id
        with pytest.raises(store.Conflict, match="skipped"):
            store.submit_judgment(s, a, got.id, ranking=[0, 1, 2, 3])


def test_ranking_is_stored_in_original_indices(sessions):
    with sessions() as s:
        store.create_campaign(s, "c", "rank", samples(1), raters_per_item=1)
        (a,) = raters(s, "a")
        asg = store.next_assignment(s, a)
        asg.display_order = [3, 0, 2, 1]  # position p shows original response display_order[p]
        s.commit()
        # The rater puts positions 0 and 1 first (tied), then 2, then 3. Position 0 shows
        # response 3 and position 1 response 0, so the tie is [0, 3]; position 2 shows 2, position 3 shows 1.
        j, created = store.submit_judgment(s, a, asg.id, ranking=[[0, 1], 2, 3], unsafe=[3], comment=" ok ")
        assert created
        assert j.ranking == [[0, 3], 2, 1]
        assert j.unsafe == [1]  # position 3 shows original response 1
        assert j.display_order == [3, 0, 2, 1] and j.comment == "ok"
        (rec,) = reports.export_records(s)
        assert rec.ranking == [[0, 3], 2, 1] and rec.responses == ["r0.0", "r0.1", "r0.2", "r0.3"]


@pytest.mark.parametrize("ranking, message", [
    ([0, 1, 2], r"rank every response; missing D \(position 3\)"),
    ([0, 1, 2, 2], r"response C \(position 2\) appears twice"),
    ([0, 1, 2, 4], r"4 is not a response position \(0 to 3\)"),
    ([0, [], 1, 2, 3], "an empty tie group"),
    ([True, 1, 2, 3], "True is not a response position"),
    ("0,1,2,3", "give a list of response positions"),
    (None, "give a list of response positions"),
])
def test_invalid_ranking_is_refused_with_a_clear_message(sessions, ranking, message):
    with sessions() as s:
        store.create_campaign(s, "c", "rank", samples(1), raters_per_item=1)
        (a,) = raters(s, "a")
        asg = store.next_assignment(s, a)
        with pytest.raises(store.Invalid, match=message):
            store.submit_judgment(s, a, asg.id, ranking=ranking)
        s.rollback()
        assert s.scalar(select(func.count()).select_from(Judgment)) == 0
        assert s.get(Assignment, asg.id).status == "open"


def test_ranks_per_position_become_a_ranking_with_ties():
    assert store.ranking_from_ranks([2, 1, 2, 3]) == [1, [0, 2], 3]
    assert store.ranking_from_ranks([1, 1]) == [[0, 1]]
    assert store.ranking_from_ranks([4, 3, 2, 1]) == [3, 2, 1, 0]
    with pytest.raises(store.Invalid, match="B, D have none"):
        store.ranking_from_ranks([1, None, 2, None])


def test_submission_is_idempotent(sessions):
    with sessions() as s:
        store.create_campaign(s, "c", "rank", samples(2), raters_per_item=1, gold_rate=0.0)
        (a,) = raters(s, "a")
        asg = store.next_assignment(s, a)
        j1, c1 = store.submit_judgment(s, a, asg.id, ranking=[0, 1, 2, 3], key="k1")
        j2, c2 = store.submit_judgment(s, a, asg.id, ranking=[3, 2, 1, 0], key="k1")  # a retry
        assert (c1, c2) == (True, False) and j1.id == j2.id and j2.ranking == j1.ranking
        with pytest.raises(store.Conflict, match="already answered"):
            store.submit_judgment(s, a, asg.id, ranking=[3, 2, 1, 0], key="k2")
        other = store.next_assignment(s, a)
        with pytest.raises(store.Conflict, match="used for another submission"):
            store.submit_judgment(s, a, other.id, ranking=[0, 1, 2, 3], key="k1")
        assert s.scalar(select(func.count()).select_from(Judgment)) == 1


def test_rater_cannot_reach_another_raters_assignment(sessions):
    with sessions() as s:
        store.create_campaign(s, "c", "rank", samples(2), raters_per_item=1, gold_rate=0.0)
        a, b = raters(s, "a", "b")
        asg = store.next_assignment(s, a)
        for op in (lambda: store.get_assignment(s, b, asg.id),
                   lambda: store.submit_judgment(s, b, asg.id, ranking=[0, 1, 2, 3]),
                   lambda: store.skip_assignment(s, b, asg.id)):
            with pytest.raises(store.NotFound):
                op()
        assert s.get(Assignment, asg.id).status == "open"


def test_comment_length_is_limited(sessions):
    with sessions() as s:
        store.create_campaign(s, "c", "rank", samples(1), raters_per_item=1)
        (a,) = raters(s, "a")
        asg = store.next_assignment(s, a)
        with pytest.raises(store.Invalid, match="2001 characters; at most 2000"):
            store.submit_judgment(s, a, asg.id, ranking=[0, 1, 2, 3], comment="x" * 2001)
        j, _ = store.submit_judgment(s, a, asg.id, ranking=[0, 1, 2, 3], comment="x" * 2000)
        assert len(j.comment) == 2000


def test_gold_items_are_mixed_in_once_per_rater_and_exported_with_their_answer(sessions):
    gold = [Comparison(id="g1", prompt="gold?", responses=["right", "wrong"], ranking=[0, 1])]
    with sessions() as s:
        store.create_campaign(s, "c", "rank", samples(3, k=2), raters_per_item=1, gold=gold, gold_rate=1.0)
        a, b = raters(s, "a", "b")
        first = store.next_assignment(s, a)
        assert first.item.is_gold and first.slot is None  # gold_rate 1: the gold item comes first
        # gold items take no place among raters_per_item and each rater sees each at most once
        store.submit_judgment(s, a, first.id, ranking=[0, 1])
        b_gold = store.next_assignment(s, b)
        assert b_gold.item.is_gold
        seen = [asg.item.is_gold for asg in answer_all(s, a)]
        assert seen == [False, False, False]  # a saw the gold item already; b's gold takes no place
        store.submit_judgment(s, b, b_gold.id, ranking=[1, 0])
        assert store.next_assignment(s, b) is None  # raters_per_item = 1: a has all 3 items
        recs = reports.export_records(s)
        gold_recs = [r for r in recs if r.meta["is_gold"]]
        assert len(recs) == 5 and len(gold_recs) == 2
        assert all(r.meta["gold_ranking"] == [0, 1] for r in gold_recs)
        assert len(reports.export_records(s, include_gold=False)) == 3
        (summary,) = reports.campaign_summaries(s)
        assert (summary["items"], summary["gold_items"], summary["judgments"], summary["gold_judgments"],
                summary["completion"]) == (3, 1, 3, 2, 1.0)


def test_no_gold_once_the_regular_items_are_done(sessions):
    gold = [Comparison(prompt="gold?", responses=["right", "wrong"], ranking=[0, 1])]
    with sessions() as s:
        store.create_campaign(s, "c", "rank", samples(1, k=2), raters_per_item=1, gold=gold, gold_rate=0.0)
        (a,) = raters(s, "a")
        assert [x.item.is_gold for x in answer_all(s, a)] == [False]


def test_export_comparison_has_provenance(sessions):
    with sessions() as s:
        c = store.create_campaign(s, "camp", "rank", [Samples(**SAMPLES[1])], raters_per_item=1)
        (a,) = raters(s, "ann")
        asg = store.next_assignment(s, a)
        store.mark_shown(s, asg)
        store.submit_judgment(s, a, asg.id, ranking=[0, [1, 2], 3], unsafe=[0], comment="hm")
        (rec,) = reports.export_records(s)
        again = Comparison.model_validate(rec.model_dump())  # a valid comparison record
        assert again.source == "human" and again.rater == "ann"
        assert again.messages[0].content == "Be brief." and again.responses == SAMPLES[1]["responses"]
        m = again.meta
        assert m["campaign"] == "camp" and m["campaign_id"] == c.id and m["item_source_id"] == "sum"
        assert m["display_order"] == asg.display_order and m["time_spent_s"] >= 0
        assert m["submitted_at"].endswith("Z") and m["is_gold"] is False and m["comment"] == "hm"
        assert m["unsafe"] == [asg.display_order[0]] and m["model"] == "smollm2-135m-instruct"
        order = asg.display_order
        assert again.ranking == [order[0], sorted([order[1], order[2]]), order[3]]


def test_thumbs_campaign_exports_binary_feedback_per_response(sessions):
    with sessions() as s:
        store.create_campaign(s, "t", "thumbs", samples(1, k=3), raters_per_item=1)
        (a,) = raters(s, "a")
        asg = store.next_assignment(s, a)
        with writing(s):
            asg.display_order = [2, 0, 1]
        with pytest.raises(store.Invalid, match="give 3 labels"):
            store.submit_judgment(s, a, asg.id, labels=[1, 0])
        with pytest.raises(store.Invalid, match="takes labels"):
            store.submit_judgment(s, a, asg.id, ranking=[0, 1, 2])
        j, _ = store.submit_judgment(s, a, asg.id, labels=[1, 0, 0], unsafe=[1])
        assert j.labels == [0, 0, 1]  # position 0 shows response 2
        recs = reports.export_records(s)
        assert all(isinstance(r, BinaryFeedback) for r in recs)
        assert [(r.response, r.label, r.meta["unsafe"]) for r in recs] == [("r0.0", 0, True), ("r0.1", 0, False),
                                                                          ("r0.2", 1, False)]


def test_tokens_are_stored_only_as_hashes_and_login_works_once(sessions, db_path):
    with sessions() as s:
        rater, login, api = store.add_rater(s, "ann", api_token=True)
        assert rater.login_token_hash == hashlib.sha256(login.encode()).hexdigest()
        assert rater.api_token_hash == hashlib.sha256(api.encode()).hexdigest()
        assert store.rater_for_api_token(s, api).id == rater.id
        assert store.redeem_login_token(s, login).id == rater.id
        assert store.redeem_login_token(s, login) is None  # one time
        _, fresh, _ = store.add_rater(s, "ann")  # a fresh link for the same rater
        assert store.redeem_login_token(s, fresh).id == rater.id
        assert s.scalar(select(func.count()).select_from(Rater)) == 1
    wal = db_path.with_name(db_path.name + "-wal")
    data = db_path.read_bytes() + (wal.read_bytes() if wal.exists() else b"")
    assert hashlib.sha256(api.encode()).hexdigest().encode() in data  # the file is readable as bytes
    assert login.encode() not in data and api.encode() not in data and fresh.encode() not in data


def test_admin_flag_promotes_but_never_demotes(sessions):
    with sessions() as s:
        r, _, _ = store.add_rater(s, "boss", admin=True)
        assert store.add_rater(s, "boss")[0].role == "admin"
        assert store.add_rater(s, "ann")[0].role == "rater"
        assert store.add_rater(s, "ann", admin=True)[0].role == "admin"


def test_progress_counts_done_open_and_available(sessions):
    with sessions() as s:
        store.create_campaign(s, "c", "rank", samples(3), raters_per_item=1, gold_rate=0.0)
        (a,) = raters(s, "a")
        assert reports.rater_progress(s, a) == {"done": 0, "open": 0, "skipped": 0, "available": 3, "assigned": 3}
        asg = store.next_assignment(s, a)
        store.submit_judgment(s, a, asg.id, ranking=[0, 1, 2, 3])
        asg = store.next_assignment(s, a)
        assert reports.rater_progress(s, a) == {"done": 1, "open": 1, "skipped": 0, "available": 1, "assigned": 3}


def test_a_campaign_is_hidden_until_all_its_items_are_in_and_gone_if_loading_fails(sessions, monkeypatch):
    monkeypatch.setattr(campaigns, "ITEM_BATCH_ROWS", 2)  # 5 items: 3 short transactions
    seen_while_loading = []
    batches = campaigns._batches

    def watched(rows):
        for i, batch in enumerate(batches(rows)):
            with sessions() as other:  # what everyone else sees meanwhile
                rater = store.add_rater(other, "watcher")[0]
                seen_while_loading.append((reports.campaign_summaries(other), store.next_assignment(other, rater),
                                           reports.rater_progress(other, rater)["available"]))
            if i == 2:
                raise RuntimeError("the disk is full")
            yield batch

    monkeypatch.setattr(campaigns, "_batches", watched)
    with sessions() as s:
        with pytest.raises(RuntimeError, match="the disk is full"):
            store.create_campaign(s, "c", "rank", samples(5), raters_per_item=1)
        assert seen_while_loading == [([], None, 0)] * 3
        assert s.scalar(select(func.count()).select_from(Item)) == 0  # discarded, items and all
        with pytest.raises(store.NotFound):
            store.find_campaign(s, "c")
    monkeypatch.setattr(campaigns, "_batches", batches)
    with sessions() as s:
        c = store.create_campaign(s, "c", "rank", samples(5), raters_per_item=1)
        assert c.ready and len(reports.export_records(s)) == 0 and reports.campaign_summaries(s)[0]["items"] == 5


def test_an_interrupted_creation_is_replaced_by_the_next_one(sessions):
    from alignloop.feedback.db import Campaign, writing

    with sessions() as s:
        with writing(s):  # what a killed `feedback create` leaves: a hidden campaign, part of its items
            left = Campaign(name="c", kind="rank", raters_per_item=1, instructions="", gold_rate=0.0, seed=0, ready=False)
            left.items.append(Item(prompt={"prompt": "old"}, responses=["a", "b"], sampling={}, meta={}, open_slots=1))
            s.add(left)
        assert reports.campaign_summaries(s) == []
        c = store.create_campaign(s, "c", "rank", samples(2), raters_per_item=1)
        assert [(x["name"], x["items"]) for x in reports.campaign_summaries(s)] == [("c", 2)] and c.ready
        assert sorted(p["prompt"] for p in s.scalars(select(Item.prompt))) == ["prompt 0", "prompt 1"]
