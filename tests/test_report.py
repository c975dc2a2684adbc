"""`alignloop report`: a real (tiny) run folder made by every stage renders into one
self-contained HTML file with every section and its figures; missing stages are noted."""

import base64
import html
import json
import re
import shutil

import pytest

from alignloop.evaluate.evaluate import EvaluateConfig, run_evaluate
from alignloop.evaluate.report import SECTIONS, ReportConfig, run_report
from alignloop.quality.cli import QualityConfig, SimulateConfig, run_report as run_quality, run_simulate
from alignloop.train.ppo import PPOConfig, run_ppo
from alignloop.train.reward import RewardConfig, run_reward
from alignloop.train.sft import SFTConfig, run_sft

WORDS = "apple river mountain lantern violin garden".split()
PLOTTED = {"sft", "quality", "reward", "ppo", "eval"}  # sections that carry figures


@pytest.fixture(scope="module")
def run_folder(tiny_model_dir, tmp_path_factory):
    """RUN/ as DESIGN.md section 3 lays it out, from short runs of every stage on the tiny model."""
    run = tmp_path_factory.mktemp("run")
    demos, prompts = run / "demos.jsonl", run / "prompts.jsonl"
    demos.write_text("".join(json.dumps({"prompt": f"Say something about the {w}.",
                                         "response": f"The {w} is lovely, and I like the {w}."}) + "\n"
                             for w in WORDS * 4))
    prompts.write_text("".join(json.dumps({"prompt": f"Tell me about the {w}."}) + "\n" for w in WORDS))
    (run / "config.yaml").write_text("stages: [sft, quality, reward, ppo, eval]\n")
    run_sft(SFTConfig(model=str(tiny_model_dir), data=demos, out=run / "sft", epochs=2, batch_size=4,
                      learning_rate=3e-3, eval_every=2, save_every=0, heldout_fraction=0.25, max_length=48))
    run_simulate(SimulateConfig(demo_items=30, per_item=3, out=run / "comparisons.jsonl", gold_fraction=0.3))
    run_quality(QualityConfig(data=run / "comparisons.jsonl", out=run / "quality", n_boot=0))
    run_reward(RewardConfig(model=str(tiny_model_dir), data=run / "comparisons.jsonl", out=run / "reward", epochs=1,
                            batch_size=16, lora=False, learning_rate=1e-3, eval_every=2, save_every=0, max_length=48))
    run_ppo(PPOConfig(model=str(run / "sft"), reward=f"{run / 'reward'},rule:tests.rules:count_e", prompts=prompts,
                      out=run / "ppo", iterations=3, batch_size=6, max_new_tokens=8, learning_rate=2e-3,
                      missing_eos_penalty=None, save_every=0, log_samples_every=1))
    run_evaluate(EvaluateConfig(policy=str(run / "ppo"), baseline=str(run / "sft"), gold="tests.rules:count_e",
                                out=run / "eval", limit=4, max_new_tokens=8))
    return run


def _sections(page: str) -> dict[str, str]:
    """Section id -> its HTML."""
    return dict(re.findall(r"<section id=(\w+)>(.*?)</section>", page, re.S))


def test_report_has_every_section_with_images_and_no_network(run_folder):
    out = run_report(ReportConfig(run=run_folder))
    assert out == run_folder / "report.html"
    page = out.read_text(encoding="utf-8")
    sections = _sections(page)
    assert list(sections) == [k for k, _ in SECTIONS]
    for key, title in SECTIONS:
        assert f"<h2>{title}</h2>" in sections[key]
        assert "class=missing" not in sections[key], key
    for key in PLOTTED:
        images = re.findall(r"src='data:image/png;base64,([A-Za-z0-9+/=]+)'", sections[key])
        assert images, f"section {key} has no embedded figure"
        assert all(base64.b64decode(b)[:8] == b"\x89PNG\r\n\x1a\n" for b in images)
    # every stage's figures: SFT/reward/PPO curves, quality's plots, win rates + proxy-vs-gold
    assert len(re.findall("data:image/png", sections["eval"])) == 2
    text = re.sub(r"data:image/png;base64,[A-Za-z0-9+/=]+", "", page)
    assert not re.search(r"(?i)https?:|//[a-z0-9]|url\(|@import", text), "a reference outside the file"
    assert set(re.findall(r"src='([^:']*):", page)) == {"data"}
    assert all(h.startswith("#") for h in re.findall(r"href='([^']*)'", page))
    assert "<script" not in page and "<link" not in page
    # samples before/after: the baseline's and the policy's responses to the same prompts, escaped
    baseline = [json.loads(x) for x in (run_folder / "eval/samples_baseline.jsonl").read_text().splitlines()]
    assert "before (baseline)" in sections["samples"] and "after (policy)" in sections["samples"]
    for rec in baseline:
        assert html.escape(rec["prompt"]) in sections["samples"]
    assert "stages: [sft, quality, reward, ppo, eval]" in page  # the run's config


def test_report_of_a_run_missing_stages_says_so(run_folder, tmp_path):
    partial = tmp_path / "partial"
    shutil.copytree(run_folder / "ppo", partial / "ppo")
    out = run_report(ReportConfig(run=partial, out=tmp_path / "r.html"))
    sections = _sections(out.read_text(encoding="utf-8"))
    for key, what in (("sft", "SFT stage"), ("quality", "feedback-quality report"), ("reward", "reward-model stage"),
                      ("eval", "evaluation stage"), ("samples", "evaluation samples")):
        assert f"No {what} in this run" in sections[key], key
    assert "data:image/png" in sections["ppo"] and "Training samples" in sections["ppo"]


def test_stage_folders_given_explicitly(run_folder, tmp_path):
    out = run_report(ReportConfig(sft=run_folder / "sft", eval=run_folder / "eval", out=tmp_path / "r.html",
                                  title="explicit"))
    sections = _sections(out.read_text(encoding="utf-8"))
    assert "data:image/png" in sections["sft"] and "data:image/png" in sections["eval"]
    assert "No PPO stage" in sections["ppo"]


def test_cli_report_writes_run_report(run_folder, tmp_path):
    from alignloop.cli import main

    target = tmp_path / "cli.html"
    main(["report", str(run_folder), "--out", str(target), "--samples", "1"])
    page = target.read_text(encoding="utf-8")
    assert page.count("<section") == len(SECTIONS)
    assert page.count("class=sample>") == 2  # one held-out and one red-team pair
