"""The online loop fed by chat votes (`feedback: {kind: chat}`, feedback/chat_round.py): a round
waits while arena votes are missing, goes on when enough arrive, writes comparisons the reward
stage reads, trains, prints the commands that serve the new policy beside the old, and the next
round counts only the votes that arrived since."""

from __future__ import annotations

import json

import pytest
import yaml

from alignloop.config import ConfigError
from alignloop.data.io import read_records
from alignloop.data.records import Comparison
from alignloop.feedback import chat_store, store
from alignloop.feedback.chat_round import leaderboard_lines, new_votes, serve_commands, used_ids
from alignloop.pipeline import read_state, run_recipe
from alignloop.quality.arena import Battle, leaderboard
from alignloop.recipe import find_recipe, load_recipe, plan

RECIPE = """
name: chatloop
seed: 0
stages:
  - feedback: {kind: chat, db: DB, min_votes: 3}
  - reward: {lora: false, batch_size: 2, max_length: 48, heldout_fraction: 0.0, epochs: 1}
  - ppo: {lora: false, iterations: 1, batch_size: 2, num_samples: 2, max_new_tokens: 4, save_every: 0,
          missing_eos_penalty: null, advantage: rloo}
  - arena: {port: 8200, chat_port: 8300}
"""


def add_battles(db, outcomes, start: int = 0, models=("round-0", "stand-in")) -> None:
    """One rater's arena conversation with a voted battle per outcome, through the chat store."""
    engine, sessions = store.open_db(str(db))
    with sessions() as s:
        rater, _, _ = store.add_rater(s, "ann")
        conv = chat_store.create_conversation(s, rater.id, "arena", None)
        for turn, outcome in enumerate(outcomes):
            jobs, battle, _ = chat_store.start_turn(s, rater.id, conv.id, f"Question {start + turn}?", turn, 100,
                                                    pair=models)
            for job in jobs:
                chat_store.save_answer(s, job, f"{job.model} answers {start + turn} at length" * (1 + job.side),
                                       {"temperature": 0.7}, "stop", 0.1)
            chat_store.vote(s, rater.id, battle.id, outcome)
    engine.dispose()


def _ids(path) -> list[str]:
    return [json.loads(x)["id"] for x in path.read_text().splitlines()]


@pytest.fixture
def recipe(tmp_path, tiny_model_dir):
    db = tmp_path / "chat" / "feedback.db"  # outside the run folder: it grows, and is not hashed
    db.parent.mkdir()
    path = tmp_path / "chatloop.yaml"
    path.write_text(RECIPE.replace("DB", str(db)) + f"model: {tiny_model_dir}\n")
    return path, db


def test_a_chat_round_waits_for_votes_trains_and_the_next_counts_only_new_ones(recipe, tmp_path, tiny_model_dir):
    path, db = recipe
    run = tmp_path / "run"
    first = run_recipe(path, run, overrides=["rounds=2"])
    assert first.status == "waiting" and first.ran == []
    assert "waiting for 3 more arena votes: round 1 has 0 new of the 3" in first.message
    assert "no votes yet" in first.message
    assert f"alignloop serve-model --model {tiny_model_dir} --name round-0 --port 8200" in first.message
    assert f"alignloop chat --db {db} --models round-0=http://127.0.0.1:8200 --port 8300" in first.message
    assert "the arena needs a second model" in first.message and "alignloop feedback add-rater" in first.message
    assert read_state(run, _step(path, run, "feedback"))["status"] == "waiting" and not (run / "reward").exists()

    add_battles(db, ["a", "b"])  # 2 of 3: still waiting, the leaderboard has them
    second = run_recipe(path, run, overrides=["rounds=2"])
    assert second.status == "waiting" and "waiting for 1 more arena votes: round 1 has 2 new" in second.message
    assert "round-0: " in second.message and "stand-in: " in second.message and "2 battles 1-1-0" in second.message

    add_battles(db, ["tie", "a"], start=2)  # 4 new votes: round 1 trains on all of them
    third = run_recipe(path, run, overrides=["rounds=2"])
    assert third.status == "waiting" and third.ran == ["feedback", "reward", "ppo", "arena"]
    labels = read_records(run / "comparisons.jsonl", Comparison)  # what the reward stage reads
    assert [c.ranking for c in labels] == [[0, 1], [1, 0], [[0, 1]], [0, 1]]
    assert {c.source for c in labels} == {"human"} and labels[0].meta["models"] == ["round-0", "stand-in"]
    assert [m.content for m in labels[1].messages] == ["Question 0?", labels[0].responses[0], "Question 1?"]
    assert (run / "reward/reward_config.json").exists() and (run / "ppo/alignloop_model.json").exists()
    assert yaml.safe_load((run / "ppo/config.yaml").read_text())["prompts"] == str(run / "prompts.jsonl")
    assert len((run / "prompts.jsonl").read_text().splitlines()) == 4
    meta = yaml.safe_load((run / "comparisons.config.yaml").read_text())
    assert meta["new_votes"] == 4 and meta["written"] == 4 and meta["leaderboard"]["n_battles"] == 4
    # the commands serving round-1 beside round-0, written to the round folder
    commands = (run / "arena.sh").read_text().splitlines()[1:]
    assert commands == [f"alignloop serve-model --model {tiny_model_dir} --name round-0 --port 8200",
                        f"alignloop serve-model --model {run / 'ppo'} --name round-1 --port 8201",
                        f"alignloop chat --db {db} --models round-0=http://127.0.0.1:8200,"
                        "round-1=http://127.0.0.1:8201 --port 8300"]
    # round 2 waits for new votes, showing round 1's leaderboard and both policies' commands
    assert "waiting for 3 more arena votes: round 2 has 0 new of the 3 it needs (4 in" in third.message
    assert "round-1=http://127.0.0.1:8201" in third.message and "4 battles" in third.message

    add_battles(db, ["b", "b", "a"], start=4, models=("round-0", "round-1"))
    fourth = run_recipe(path, run, overrides=["rounds=2"])
    assert fourth.status == "done" and fourth.skipped == ["feedback", "reward", "ppo", "arena"]  # the db grew
    assert fourth.ran == ["round-2/feedback", "round-2/reward", "round-2/ppo", "round-2/arena"]
    r2 = read_records(run / "round-2/comparisons.jsonl", Comparison)
    assert len(r2) == 3 and not set(_ids(run / "round-2/comparisons.jsonl")) & set(_ids(run / "comparisons.jsonl"))
    assert [c.meta["models"] for c in r2] == [["round-0", "round-1"]] * 3
    assert len((run / "round-2/reward-data.jsonl").read_text().splitlines()) == 7  # reward_data: all, each once
    assert "--name round-2 --port 8202" in (run / "round-2/arena.sh").read_text()
    assert run_recipe(path, run, overrides=["rounds=2"]).ran == []


def _step(recipe_file, run, name):
    recipe, path = load_recipe(recipe_file)
    return next(s for s in plan(recipe, run, str(path)) if s.name == name)


def test_train_on_all_writes_every_vote_and_still_waits_for_new_ones(recipe, tmp_path):
    path, db = recipe
    run = tmp_path / "run"
    over = ["rounds=2", "stages=" + json.dumps(
        [{"feedback": {"kind": "chat", "db": str(db), "min_votes": 2, "train_on": "all"}},
         {"reward": {"lora": False, "batch_size": 2, "max_length": 48, "heldout_fraction": 0.0}}])]
    add_battles(db, ["a", "b"])
    assert run_recipe(path, run, overrides=over).message.startswith("waiting for 2 more arena votes: round 2")
    add_battles(db, ["a"], start=2)  # one new: not enough
    assert "waiting for 1 more" in run_recipe(path, run, overrides=over).message
    add_battles(db, ["tie"], start=3)
    assert run_recipe(path, run, overrides=over).status == "done"
    assert len(_ids(run / "round-2/comparisons.jsonl")) == 4  # all of them


def test_thumbs_train_kto_only(recipe, tmp_path):
    path, db = recipe
    with pytest.raises(ConfigError, match=r"stages\[0\] \(feedback\): field 'labels': thumbs train kto only"):
        run_recipe(path, tmp_path / "run", overrides=["feedback.labels=thumbs"])


def test_new_votes_are_those_no_earlier_round_holds(tmp_path):
    earlier = tmp_path / "comparisons.jsonl"
    earlier.write_text('{"id": "arena/b1"}\n{"id": "arena/b3"}\n')
    records = [Comparison(id=f"arena/b{k}", prompt="p", responses=["x", "y"], ranking=[0, 1]) for k in (1, 2, 3, 4)]
    assert [r.id for r in new_votes(records, used_ids([earlier, tmp_path / "missing.jsonl"]))] == ["arena/b2",
                                                                                                    "arena/b4"]


def test_serve_commands_put_round_r_on_port_plus_r():
    assert serve_commands({"round-1": "runs/chat/ppo", "round-2": "runs/chat/round-2/ppo"}, "a b.db", 8100, 8000) == [
        "alignloop serve-model --model runs/chat/ppo --name round-1 --port 8101",
        "alignloop serve-model --model runs/chat/round-2/ppo --name round-2 --port 8102",
        "alignloop chat --db 'a b.db' --models round-1=http://127.0.0.1:8101,round-2=http://127.0.0.1:8102 --port 8000"]


def test_leaderboard_lines_show_the_best_first():
    board = leaderboard([Battle("new", "old", "a")] * 3 + [Battle("old", "new", "tie")], n_boot=0)
    lines = leaderboard_lines(board, 1)
    assert len(lines) == 1 and lines[0].startswith("new: ") and "4 battles 3-0-1" in lines[0]


def add_thumbs(db, ups, model: str = "round-0") -> None:
    """One rater's chat with `model`, a thumb (up or down) under each answer, through the chat store."""
    engine, sessions = store.open_db(str(db))
    with sessions() as s:
        rater, _, _ = store.add_rater(s, "bob")
        conv = chat_store.create_conversation(s, rater.id, "chat", model)
        for turn, up in enumerate(ups):
            (job,), _, _ = chat_store.start_turn(s, rater.id, conv.id, f"Tell me fact {turn}.", turn, 100)
            message = chat_store.save_answer(s, job, f"Fact {turn} is" + " true" * (turn + 1), {}, "stop", 0.1)
            chat_store.thumb(s, rater.id, message, up)
    engine.dispose()


def test_thumbs_wait_then_train_kto_on_binary_feedback(tmp_path, tiny_model_dir):
    from alignloop.train.kto import binary_records

    db = tmp_path / "feedback.db"
    path = tmp_path / "thumbs.yaml"
    path.write_text(f"name: thumbs\nmodel: {tiny_model_dir}\nstages:\n"
                    f"  - feedback: {{kind: chat, db: {db}, labels: thumbs, min_votes: 2}}\n"
                    "  - kto: {lora: false, batch_size: 2, max_length: 48, heldout_fraction: 0.0, epochs: 1}\n")
    run = tmp_path / "run"
    add_thumbs(db, [True])
    waiting = run_recipe(path, run)
    assert waiting.status == "waiting" and "waiting for 1 more thumbs: round 1 has 1 new" in waiting.message
    assert "people vote in the chat page (/chat)" in waiting.message and "round-0: " in waiting.message
    add_thumbs(db, [False, True])
    assert run_recipe(path, run).ran == ["feedback", "kto"]
    assert yaml.safe_load((run / "kto/config.yaml").read_text())["data"] == str(run / "thumbs.jsonl")
    assert [r.label for r in binary_records(run / "thumbs.jsonl")] == [1, 0, 1]
    assert (run / "kto/alignloop_model.json").exists()


def test_the_feedback_stage_is_titled_by_its_kind(recipe, tmp_path):
    from alignloop.stages import title

    path, db = recipe
    assert title(_step(path, tmp_path / "run", "feedback")) == "votes from the chat"
    quickstart = _step(find_recipe("quickstart"), tmp_path / "q", "feedback")
    assert title(quickstart) == "simulated raters' rankings of the samples"
