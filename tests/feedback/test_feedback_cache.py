"""The per-process cache of ready campaigns and item texts (campaigns.py): it serves each
database its own rows, never an item of a hidden (unfinished) campaign, whose ids SQLite may
give to the next campaign's items, and stays bounded."""

from __future__ import annotations

from alignloop.data.records import Samples
from alignloop.feedback import campaigns, store
from alignloop.feedback.db import Campaign, Item, writing


def samples(n: int, tag: str) -> list[Samples]:
    return [Samples(prompt=f"{tag} prompt {i}", responses=[f"{tag} {i}.{j}" for j in range(3)]) for i in range(n)]


def test_each_database_gets_its_own_items_under_the_same_ids(tmp_path):
    opened = [store.open_db(tmp_path / f"{tag}.db") for tag in ("one", "two")]
    for (_, sessions), tag in zip(opened, ("one", "two")):
        with sessions() as s:
            store.create_campaign(s, tag, "rank", samples(2, tag), raters_per_item=1)
    for _ in range(2):  # read from the database, then from the cache: the same
        for (_, sessions), tag in zip(opened, ("one", "two")):
            with sessions() as s:
                item = store.item_text(s.connection(), 1)
                assert item.responses == (f"{tag} 0.0", f"{tag} 0.1", f"{tag} 0.2")
                assert item.messages == ({"role": "user", "content": f"{tag} prompt 0"},)
                assert store.campaign_info(s.connection(), 1).name == tag
    for engine, _ in opened:
        engine.dispose()


def test_a_hidden_campaign_is_not_cached_and_its_reused_ids_serve_the_new_items(sessions):
    with sessions() as s:
        with writing(s):  # what a killed `feedback create` leaves: a hidden campaign with items
            left = Campaign(name="c", kind="rank", raters_per_item=1, instructions="", gold_rate=0.0, seed=0, ready=False)
            left.items += [Item(prompt={"prompt": "old"}, responses=["old a", "old b"], sampling={}, meta={},
                                open_slots=1) for _ in range(2)]
            s.add(left)
        old_ids = [i.id for i in left.items]
        assert store.item_text(s.connection(), old_ids[0]) is None  # nobody is shown a hidden item
        assert store.campaign_info(s.connection(), left.id) is None
        c = store.create_campaign(s, "c", "rank", samples(2, "new"), raters_per_item=1)  # replaces it
        rater = store.add_rater(s, "ann")[0]
        a = store.next_assignment_view(s, rater.id)
        assert a.campaign.id == c.id and a.item.campaign_id == c.id
        assert a.item.responses == ("new 0.0", "new 0.1", "new 0.2")
        for item_id in old_ids:  # whether or not SQLite gave these ids again: what is there now
            item = store.item_text(s.connection(), item_id)
            assert item is None or item.responses[0].startswith("new")


def test_the_item_cache_keeps_the_most_recently_used(sessions, monkeypatch):
    monkeypatch.setattr(campaigns, "ITEM_CACHE_SIZE", 2)
    with sessions() as s:
        store.create_campaign(s, "c", "rank", samples(3, "x"), raters_per_item=1)
        conn = s.connection()
        for item_id in (1, 2, 1, 3):
            assert store.item_text(conn, item_id).id == item_id
        assert list(campaigns._cache(conn).items) == [1, 3]
