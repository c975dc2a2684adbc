"""The run report of a control stage: the shipped `control` recipe, made tiny, runs the loop, its
true-reward baseline and the report stage; the report's control section has the per-round table
of true return against labels beside the baseline, the figure, and links to the videos."""

from __future__ import annotations

import base64
import json
import re
from pathlib import Path

from alignloop.evaluate.report import CONTROL, SECTIONS, shown_sections
from alignloop.pipeline import run_recipe

TINY = ["control.total_steps=512", "control.rounds=2", "control.labels=16", "control.n_envs=2", "control.n_steps=128",
        "control.n_epochs=1", "control.rm_epochs=2", "control.eval_episodes=1", "control.fragment_length=10",
        "control.candidates=2", "control.video_every=1"]


def test_the_report_of_a_control_run_has_its_section(tmp_path):
    run = tmp_path / "run"
    result = run_recipe("control", run, overrides=TINY)
    assert result.status == "done" and result.ran == ["control", "report"]
    page = (run / "report.html").read_text(encoding="utf-8")
    sections = dict(re.findall(r"<section id=(\w+)>(.*?)</section>", page, re.S))
    assert list(sections) == ["control"]  # a control-only run: no empty language-model sections
    body = sections["control"]
    assert f"<h2>{CONTROL[1]}</h2>" in body
    # the table: one row per round (0 = the untrained policy), learned and true-reward returns side by side
    summary = json.loads((run / "control" / "summary.json").read_text())
    assert "true return, PPO on the learned reward" in body and "true return, PPO on the true reward" in body
    rows = re.findall(r"<tr><td>(\d+)</td><td>([\d,]+)</td><td>(\d+)</td><td>(-?[\d.]+)</td><td>(-?[\d.]+)</td>", body)
    assert [(int(r), int(s), int(n)) for r, s, n, _, _ in rows] == [
        (i, c["env_steps"], c["labels"]) for i, c in enumerate(summary["curve"])]
    assert [float(t) for *_, t in rows] == [round(c["true_return"], 3) for c in summary["baseline"]["curve"]]
    # the figure
    (image,) = re.findall(r"src='data:image/png;base64,([A-Za-z0-9+/=]+)'", body)
    assert base64.b64decode(image)[:8] == b"\x89PNG\r\n\x1a\n"
    # the videos: relative links to files that exist, the loop's and the baseline's
    links = re.findall(r"href='([^']+\.mp4)'", body)
    assert links == ["control/videos/round_001.mp4", "control/videos/round_002.mp4",
                     "control/baseline/videos/round_001.mp4", "control/baseline/videos/round_002.mp4"]
    assert all((run / link).is_file() for link in links)


def test_the_control_section_joins_the_language_model_sections(tmp_path):
    (tmp_path / "sft").mkdir()
    (tmp_path / "control").mkdir()
    folders = {k: tmp_path / k for k in ("sft", "quality", "reward", "ppo", "eval", "control")}
    assert shown_sections(folders) == [*SECTIONS, CONTROL]
    (tmp_path / "control").rmdir()
    assert shown_sections(folders) == SECTIONS
    assert shown_sections({**{k: None for k in folders}, "control": Path(tmp_path / "missing")}) == SECTIONS
