"""People label the control loop's clips (`--feedback human | mixed`, control/human.py): each round's
queries become a clips campaign, the run waits (Paused, exit status 3) and goes on when run again
after the campaign is complete; mixed tops up with the synthetic labeller and every label keeps its
source; people are measured against the synthetic labeller and the true-return order."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import imageio.v2 as imageio
import numpy as np
import pytest

from alignloop.config import ConfigError
from alignloop.configs import ControlConfig
from alignloop.control.clips import Clips
from alignloop.control.human import SYNTHETIC_ANSWERS, gold_pairs, vote_share
from alignloop.control.loop import run_control
from alignloop.feedback import reports, store
from alignloop.feedback.waiting import Paused

ROOT = Path(__file__).resolve().parents[2]
SMALL = dict(env="Pendulum-v1", total_steps=512, rounds=2, labels=6, n_envs=2, n_steps=128, batch_size=64,
             n_epochs=2, rm_epochs=3, eval_episodes=1, fragment_length=10, candidates=3)


def small(out: Path, **kw) -> ControlConfig:
    return ControlConfig(out=out, **{**SMALL, **kw})


def pool_returns(out: Path) -> dict[str, float]:
    """Clip id -> true return, of the pool the waiting round asked about (its checkpoint)."""
    pool = Clips.load(out / "checkpoint" / "pool.npz")
    return dict(zip(pool.ids.tolist(), pool.true_returns.tolist()))


def answer_all(db: Path, raters: dict[str, str], returns: dict[str, float] | None = None) -> int:
    """Each rater answers every item they are given: "truth" the clip of higher true return (as
    shown: left or right), "left" always left, "abstain" can't tell. The number of judgments."""
    _, sessions = store.open_db(db)
    n = 0
    with sessions() as s:
        for name, how in raters.items():
            rater = store.add_rater(s, name)[0]
            while (a := store.next_assignment(s, rater)) is not None:
                shown = [a.item.responses[o] for o in a.display_order]  # left, right
                if how == "abstain":
                    store.judge(s, rater.id, a.id, abstain=True)
                else:
                    left = how == "left" or returns[shown[0]] >= returns[shown[1]]
                    store.judge(s, rater.id, a.id, ranking=[0, 1] if left else [1, 0])
                n += 1
    return n


def test_a_human_round_waits_for_its_campaign_and_goes_on_when_run_again(tmp_path):
    out = tmp_path / "run"
    cfg = small(out, feedback="human", raters_per_item=2, gold_pairs=1)
    with pytest.raises(Paused) as paused:
        run_control(cfg)
    message = str(paused.value)
    db = out / "feedback.db"
    assert f"alignloop serve --db {db}" in message and "alignloop feedback add-rater NAME" in message
    assert "waiting for 4 judgments" in message and "round-1-" in message  # round 1: 2 pairs x 2 raters
    state = json.loads((out / "checkpoint" / "state.json").read_text())
    assert state["phase"] == "asked" and state["round"] == 1 and len(state["asked"]["pairs"]) == 2
    # the campaign: 2 clip pairs and 1 gold pair, each clip a short H.264 video in the media folder
    _, sessions = store.open_db(db)
    with sessions() as s:
        (summary,) = reports.campaign_summaries(s)
        assert (summary["kind"], summary["items"], summary["gold_items"], summary["raters_per_item"]) == ("clips", 2, 1, 2)
        campaign = store.find_campaign(s, summary["id"])
        items = campaign.items
        videos = [store.media_path(out / "feedback-media", m.sha256, "video/mp4") for i in items for m in i.media]
    assert len(videos) == 6 and all(v.is_file() for v in videos)
    with imageio.get_reader(videos[0]) as r:
        frames, meta = [f for f in r], r.get_meta_data()
    assert len(frames) == 11 and meta["fps"] == 20 and max(frames[0].shape[:2]) == 320  # 10 steps + 1, 500 px -> 320
    returns = pool_returns(out)
    (gold,) = [i for i in items if i.is_gold]
    assert gold.gold_answer == [0, 1] and returns[gold.responses[0]] > returns[gold.responses[1]]
    # run again before anyone answered: still waiting, the same campaign, nothing relabelled
    with pytest.raises(Paused):
        run_control(cfg)
    answer_all(db, {"ann": "truth", "bob": "abstain"}, returns)
    with pytest.raises(Paused) as paused:  # round 1 labelled and trained; round 2 asks 4 more pairs
        run_control(cfg)
    assert "round-2-" in str(paused.value) and "waiting for 8 judgments" in str(paused.value)
    answer_all(db, {"ann": "truth", "bob": "abstain"}, pool_returns(out))
    result = run_control(cfg)
    fb = result["feedback"]
    assert result["labels"] == 6 and fb["human_labels"] == 6 and fb["synthetic_labels"] == 0
    assert len(fb["campaigns"]) == 2
    with sessions() as s:  # each round's campaign its own seed: other gold turns and left/right orders
        seeds = [store.find_campaign(s, name).seed for name in fb["campaigns"]]
    assert seeds[0] != seeds[1]
    # people who follow the true return agree with its order on every pair they decided
    assert fb["agreement"]["true_order"]["alignment"] == 1.0 and fb["agreement"]["true_order"]["agree"] == 6
    assert fb["agreement"]["synthetic"]["matched"] == 6
    records = [json.loads(line) for line in (out / "comparisons.jsonl").read_text().splitlines()]
    regular = [r for r in records if not r["meta"]["is_gold"]]
    assert len(regular) == 12 and {r["source"] for r in records} == {"human"}  # 6 pairs x (ann, bob)
    assert sum(r["meta"]["abstained"] for r in regular) == 6 and all(r["meta"]["round"] in (1, 2) for r in records)
    assert all(isinstance(r["meta"]["heldout"], bool) for r in regular)
    assert len((out / SYNTHETIC_ANSWERS).read_text().splitlines()) == 6
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r.get("train/human_labels") for r in rows[1:]] == [2, 6]
    assert rows[-1]["eval/human_true_order_agreement"] == 1.0
    assert not (out / "checkpoint").exists()
    report = (out / "quality" / "report.html").read_text()
    assert fb["quality_report"] == str(out / "quality" / "report.html")
    abstained = sum(r["meta"]["abstained"] for r in records)  # bob's, gold pairs included
    assert "People vs the synthetic labeller" in report and f"{abstained} can't-tell answers" in report


def test_the_command_exits_with_status_3_while_it_waits(tmp_path):
    out = tmp_path / "run"
    args = [sys.executable, "-m", "alignloop.cli", "control", "--out", str(out), "--feedback", "human",
            *[f"--{k.replace('_', '-')}={v}" for k, v in SMALL.items()]]
    for _ in range(2):  # the same command again: still waiting
        r = subprocess.run(args, capture_output=True, text=True, cwd=ROOT)
        assert r.returncode == 3, r.stderr
        assert "paused for people's labels" in r.stdout and f"alignloop serve --db {out / 'feedback.db'}" in r.stdout
        assert "then go on:   alignloop control --out" in r.stdout
    other = subprocess.run([*args, "--labels=8"], capture_output=True, text=True, cwd=ROOT)
    assert other.returncode == 2 and "asked with other options" in other.stderr


def test_mixed_feedback_tops_up_with_the_synthetic_labeller_and_records_each_source(tmp_path):
    out = tmp_path / "run"
    cfg = small(out, feedback="mixed", human_share=0.5, gold_pairs=0)
    for _ in range(2):
        with pytest.raises(Paused):
            run_control(cfg)
        # round 1: 2 queries, 1 to people; round 2: 4 queries, 2 to people; people can't tell on the first round
        answer_all(out / "feedback.db", {"ann": "abstain" if _ == 0 else "left"}, None)
    result = run_control(cfg)
    fb = result["feedback"]
    assert result["labels"] == 6 and fb["human_labels"] == 2 and fb["synthetic_labels"] == 4
    records = [json.loads(line) for line in (out / "comparisons.jsonl").read_text().splitlines()]
    sources = [r["source"] for r in records]
    assert sources.count("simulated") == 4 and sources.count("human") == 3  # 1 abstention + 2 answers
    top_up = [r for r in records if r["meta"].get("top_up")]
    assert len(top_up) == 1 and top_up[0]["source"] == "simulated"  # the pair nobody decided
    assert fb["agreement"]["synthetic"]["matched"] == 2


def test_a_pairs_label_is_its_raters_vote_share():
    assert vote_share([2, 1, 1, 5]) == (2 + 0.5) / 4  # for a, for b, equal, can't tell (no vote)
    assert vote_share([0, 0, 0, 3]) is None
    assert vote_share([0, 0, 2, 0]) == 0.5


def test_gold_pairs_have_a_large_true_return_gap():
    clips = Clips(ids=np.array(["a", "b", "c", "d"]), obs=np.zeros((4, 2, 1), np.float32),
                  actions=np.zeros((4, 2, 1), np.float32), true_rewards=np.array([[5, 5], [0, 0], [4, 4], [9, 1]], float),
                  seed=np.zeros(4, np.int64), start=np.zeros(4, np.int64), replay_actions=np.empty(4, dtype=object))
    # returns 10, 0, 8, 10: 10 vs 0 (gap 10 of a range of 10), then 10 vs 8 is too close (2 < 5)
    assert gold_pairs(clips, 2) == [(0, 1)]


def test_a_run_waiting_for_people_is_not_continued_by_the_synthetic_labeller(tmp_path):
    out = tmp_path / "run"
    with pytest.raises(Paused):
        run_control(small(out, feedback="human"))
    with pytest.raises(ConfigError, match="waits for people"):
        run_control(small(out, resume=True))


def test_the_control_recipe_pauses_for_people_and_goes_on_when_run_again(tmp_path):
    from alignloop.pipeline import run_recipe

    run = tmp_path / "recipe"
    sets = ["control.feedback=human", "control.baseline=false", "control.video_every=0",
            *[f"control.{k}={v}" for k, v in SMALL.items()]]
    first = run_recipe("control", run, overrides=sets)
    assert first.status == "waiting" and "round-1-" in first.message
    state = json.loads((run / ".stages" / "control.json").read_text())
    assert state["status"] == "waiting"
    db = run / "feedback.db"  # the run's, beside the stage's folder: a re-run of the stage keeps the campaigns
    for _ in range(2):
        answer_all(db, {"ann": "truth"}, pool_returns(run / "control"))
        result = run_recipe("control", run, overrides=sets)  # the same command: it goes on, nothing removed
        if result.status == "done":
            break
        assert result.status == "waiting" and "round-2-" in result.message
    assert result.status == "done" and result.ran == ["control", "report"]
    summary = json.loads((run / "control" / "summary.json").read_text())
    assert summary["feedback"]["human_labels"] == 6 and (run / "report.html").exists()
    # the run report's control section says how many labels people gave and how they agree
    page = (run / "report.html").read_text()
    agree = summary["feedback"]["agreement"]["true_order"]
    assert "6 of them by people (--feedback human)" in page and "<h3>People's labels</h3>" in page
    assert f"<td>people vs the true-return order</td><td>{agree['alignment']:.3f}</td>" in page
    assert "href='control/quality/report.html'" in page
