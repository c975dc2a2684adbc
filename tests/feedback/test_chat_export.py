"""`alignloop chat export` read back by the project's readers (comparisons for reward / dpo,
binary feedback for kto and the quality tools, prompts for sampling), `alignloop quality arena
--db`, and the chat tables on an upgraded database and on PostgreSQL."""

from __future__ import annotations

import json

from click.testing import CliRunner

from alignloop.cli import app as cli
from alignloop.data.io import read_records
from alignloop.data.records import BinaryFeedback, Comparison, PromptRecord
from alignloop.quality.arena import Battle, Thumb, leaderboard

from .chat_helpers import answer_event, answer_text, events, models, site  # noqa: F401


def run(*args: str) -> str:
    result = CliRunner().invoke(cli, list(args), catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return result.output


def fill(rater, models) -> dict:
    """Two raters' chats with thumbs and arena battles with every outcome (one flagged)."""
    ann, bob = rater("ann"), rater("bob")
    conv = ann.new("chat", "alpha")
    m0 = answer_event(events(ann.send(conv["id"], "Tell me a <b>joke</b>", 0)))["message_id"]
    assert ann.thumb(m0, False, "not funny").status_code == 201
    models[0].answer = lambda messages: "A better joke."
    m1 = answer_event(events(ann.regenerate(conv["id"])))["message_id"]  # attempt 1: the one kept
    assert ann.thumb(m1, True).status_code == 201
    models[0].answer = lambda messages: f"alpha says: {messages[-1]['content']}"
    m2 = answer_event(events(ann.send(conv["id"], "Another", 1)))["message_id"]
    assert ann.thumb(m2, True, "good").status_code == 201
    models[0].answer = lambda messages: " "  # an empty answer: stored, thumbed, not exportable
    b_conv = bob.new("chat", "alpha")
    m3 = answer_event(events(bob.send(b_conv["id"], "Say nothing", 0)))["message_id"]
    assert bob.thumb(m3, False).status_code == 201
    models[0].answer = lambda messages: f"alpha says: {messages[-1]['content']}"
    battles = {}
    arena = bob.new("arena")
    for turn, outcome in enumerate(("a", "b", "tie", "both_bad")):
        evs = events(bob.send(arena["id"], f"Question {turn}", turn))
        battles[outcome] = (evs[0]["battle"], answer_text(evs, 0), answer_text(evs, 1))
        assert bob.vote(evs[0]["battle"], outcome).status_code == 201
    evs = events(ann.send(ann.new("arena")["id"], "Who are you?", 0))
    assert ann.vote(evs[0]["battle"], "a", flagged=True).status_code == 201
    return battles


def test_export_is_read_by_the_readers_of_reward_dpo_kto_and_sampling(site, models, db_path, tmp_path):
    from alignloop.quality.cli import read_judgments
    from alignloop.train.kto import binary_records

    app, rater = site(seed=5)
    battles = fill(rater, models)
    out = tmp_path / "export"
    printed = run("chat", "export", "--db", str(db_path), "--out", str(out))
    assert "3 thumbs" in printed and "4 arena votes" in printed and "1 votes on an empty answer skipped" in printed
    assert sorted(p.name for p in out.iterdir()) == ["comparisons.jsonl", "prompts.jsonl", "thumbs.jsonl"]

    comparisons = read_records(out / "comparisons.jsonl", Comparison)  # what `alignloop reward` / `dpo` read
    assert [c.ranking for c in comparisons] == [[0, 1], [1, 0], [[0, 1]], [[0, 1]]]
    assert [c.meta["both_bad"] for c in comparisons] == [False, False, False, True]
    assert {c.source for c in comparisons} == {"human"} and {c.rater for c in comparisons} == {"bob"}
    for c, outcome in zip(comparisons, ("a", "b", "tie", "both_bad")):
        _, left, right = battles[outcome]
        assert c.responses == [left, right] and sorted(c.meta["models"]) == ["alpha", "beta"]
        assert left.startswith(c.meta["models"][0])
    # turn 2 sees turn 0's left answer (a won) and turn 1's right answer (b won)
    assert [m.content for m in comparisons[2].messages] == [
        "Question 0", battles["a"][1], "Question 1", battles["b"][2], "Question 2"]
    assert len(read_judgments(out / "comparisons.jsonl")) == 4  # the quality tools read them too

    thumbs = binary_records(out / "thumbs.jsonl")  # what `alignloop kto` reads
    assert [(t.label, t.response) for t in thumbs] == [(0, "alpha says: Tell me a <b>joke</b>"),
                                                       (1, "A better joke."), (1, "alpha says: Another")]
    assert [t.meta["reason"] for t in thumbs] == ["not funny", "", "good"]
    assert thumbs[0].meta["model"] == "alpha" and thumbs[0].rater == "ann" and thumbs[0].meta["rater"] == "ann"
    assert [m.content for m in thumbs[2].messages] == ["Tell me a <b>joke</b>", "A better joke.", "Another"]
    assert read_records(out / "thumbs.jsonl", BinaryFeedback)[0].source == "human"

    prompts = read_records(out / "prompts.jsonl", PromptRecord)  # the next round's prompts
    last_turns = [p.messages[-1].content for p in prompts]
    assert last_turns.count("Question 3") == 1 and "Who are you?" in last_turns and "Say nothing" in last_turns
    assert all(p.messages[-1].role == "user" for p in prompts)

    run("chat", "export", "--db", str(db_path), "--out", str(out), "--include-flagged")
    flagged = read_records(out / "comparisons.jsonl", Comparison)
    assert len(flagged) == 5 and flagged[-1].meta["flagged"] is True
    assert not list(out.glob(".*.tmp"))  # written whole, then renamed


def test_quality_arena_prints_the_leaderboard_of_the_database(site, models, db_path, tmp_path):
    app, rater = site(seed=2)
    fill(rater, models)
    board = json.loads(run("quality", "arena", "--db", str(db_path), "--n-boot", "30", "--seed", "4"))
    out = tmp_path / "export"
    run("chat", "export", "--db", str(db_path), "--out", str(out))
    battles = [Battle(*c.meta["models"], c.meta["outcome"]) for c in read_records(out / "comparisons.jsonl", Comparison)]
    thumbs = [Thumb("alpha", up) for up in (False, True, True, False)]  # the empty answer's thumb counts here
    assert board == json.loads(json.dumps(leaderboard(battles, thumbs, n_boot=30, seed=4).to_json()))
    assert board["n_battles"] == 4
    with_flagged = json.loads(run("quality", "arena", "--db", str(db_path), "--include-flagged", "--n-boot", "0"))
    assert with_flagged["n_battles"] == 5
    result = CliRunner().invoke(cli, ["quality", "arena", "--db", str(tmp_path / "missing.db")])
    assert result.exit_code != 0 and "no such database" in str(result.exception)  # main() prints it
    assert not (tmp_path / "missing.db").exists()
