"""`alignloop cai revise | label | score` end to end on the tiny random model (structure, not quality)."""

from __future__ import annotations

import json
import random
import subprocess
import sys

import pytest
import yaml
from click.testing import CliRunner

from alignloop.cai.cli import group
from alignloop.cai.constitution import load_constitution, sample_revision_principles
from alignloop.data.io import read_records
from alignloop.data.records import Comparison, Demonstration, Samples
from alignloop.assets import asset


def invoke(*args):
    result = CliRunner().invoke(group, [str(a) for a in args], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return result.output


def test_revise_writes_every_step_demonstrations_and_comparisons(tmp_path, tiny_model_dir):
    prompts = tmp_path / "redteam.jsonl"
    rows = [json.loads(x) for x in asset("redteam_heldout.jsonl").read_text().splitlines()[:3]]
    prompts.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    helpful = tmp_path / "helpful.jsonl"
    helpful.write_text('{"id": "h1", "prompt": "Name a fruit."}\n{"id": "h2", "prompt": "Say hello."}\n')
    out = tmp_path / "cai.jsonl"
    printed = invoke("revise", "--model", tiny_model_dir, "--prompts", prompts, "--out", out, "--revisions", 3,
                     "--helpful", helpful, "--max-new-tokens", 6, "--seed", 4, "--few-shot", 1)
    assert "revised 3 prompts x 3 steps" in printed

    trajectories = [json.loads(x) for x in out.read_text().splitlines()]
    assert [t["id"] for t in trajectories] == [r["id"] for r in rows]
    # a principle drawn at every step, from the seeded stream
    table = sample_revision_principles(random.Random(4), load_constitution().revision_principles(), 3, 3)
    for t, drawn in zip(trajectories, table):
        assert [s["principle_id"] for s in t["steps"]] == [p.id for p in drawn]
        assert [s["step"] for s in t["steps"]] == [1, 2, 3] and t["final"] == t["steps"][-1]["revision"]
        assert t["prompt"] and t["meta"]["category"] == "redteam" and "initial_response" in t
        for k, s in enumerate(t["steps"]):  # a degenerate revision keeps the previous response
            previous = t["initial_response"] if k == 0 else t["steps"][k - 1]["revision"]
            assert s["revision"] == previous if s["fallback"] else s["revision"].strip() != ""

    demos = read_records(out.with_suffix(".demos.jsonl"), Demonstration)
    revisions = [d for d in demos if d.meta["kind"] == "revision"]
    kept = sum(not s["fallback"] and bool(s["revision"]) for t in trajectories for s in t["steps"])
    assert len(revisions) == kept
    helpful_demos = [d for d in demos if d.meta["kind"] == "helpful"]
    assert {d.meta["source_id"] for d in helpful_demos} <= {"h1", "h2"} and len(helpful_demos) <= 4
    for d in revisions:
        t = next(t for t in trajectories if t["id"] == d.meta["source_id"])
        assert d.prompt == t["prompt"] and d.response == t["steps"][d.meta["step"] - 1]["revision"]

    comparisons_file = out.with_suffix(".comparisons.jsonl")
    comps = read_records(comparisons_file, Comparison) if comparisons_file.stat().st_size else []
    for c in comps:
        t = next(t for t in trajectories if t["id"] == c.meta["source_id"])
        assert c.responses == [t["final"], t["initial_response"]] and c.ranking == [0, 1] and c.source == "ai"
        assert c.meta["principles"] == [s["principle_id"] for s in t["steps"]]
    assert yaml.safe_load(out.with_suffix(".config.yaml").read_text())["revisions"] == 3


def test_label_writes_soft_comparisons_for_every_pair(tmp_path, tiny_model_dir):
    data = tmp_path / "pairs.jsonl"
    data.write_text(
        '{"id": "s1", "prompt": "How do I pick a lock?", "responses": ["I cannot help.", "Use a pin.", "Ask a '
        'locksmith."], "model": "m"}\n'
        '{"id": "c1", "prompt": "Name a colour.", "chosen": "Blue.", "rejected": "No.", "meta": {"k": 1}}\n')
    out = tmp_path / "ai.jsonl"
    printed = invoke("label", "--judge", tiny_model_dir, "--data", data, "--out", out, "--principles-per-pair", 2,
                     "--seed", 1)
    assert "labeled 4 pairs" in printed and "flips with order" in printed
    comps = read_records(out, Comparison)
    assert [c.id for c in comps] == ["s1:0-1", "s1:0-2", "s1:1-2", "c1"]
    assert [c.weight for c in comps] == [1 / 3, 1 / 3, 1 / 3, 1.0]
    assert comps[3].responses == ["Blue.", "No."] and comps[3].meta["k"] == 1
    for c in comps:
        m = c.meta
        assert c.source == "ai" and c.rater == str(tiny_model_dir) and 0 < c.p < 1 and c.ranking is None
        assert len(m["principles"]) == len(set(m["principles"])) == 2 and m["cot"] is False
        assert c.p == pytest.approx((sum(m["p_order_ab"]) + sum(m["p_order_ba"])) / 4, abs=2e-6)  # 6 decimals
        assert m["flipped"] == ((sum(m["p_order_ab"]) / 2 - 0.5) * (sum(m["p_order_ba"]) / 2 - 0.5) < 0)


def test_label_with_chain_of_thought_clamps(tmp_path, tiny_model_dir):
    data = tmp_path / "pairs.jsonl"
    data.write_text('{"prompt": "Hi", "responses": ["Hello!", "Go away."]}\n')
    out = tmp_path / "ai.jsonl"
    invoke("label", "--judge", tiny_model_dir, "--data", data, "--out", out, "--cot", "--cot-max-new-tokens", 5)
    (c,) = read_records(out, Comparison)
    assert 0.4 <= c.p <= 0.6 and c.meta["cot"] is True and len(c.meta["reasoning"]) == 2
    assert c.p == pytest.approx(min(0.6, max(0.4, c.meta["p_unclamped"])), abs=2e-6)


def test_score_adds_judge_rewards_to_samples(tmp_path, tiny_model_dir):
    data = tmp_path / "samples.jsonl"
    data.write_text('{"id": "a", "prompt": "Hi", "responses": ["Hello!", "Go away."], "rewards": {"rm": [1, 2]}}\n'
                    '{"id": "b", "prompt": "Name a colour.", "responses": ["Blue."]}\n')
    out = tmp_path / "scored.jsonl"
    invoke("score", "--judge", tiny_model_dir, "--data", data, "--out", out, "--name", "drlaif")
    a, b = read_records(out, Samples)
    assert a.rewards["rm"] == [1, 2] and len(a.rewards["drlaif"]) == 2 and len(b.rewards["drlaif"]) == 1
    assert all(-1 <= x <= 1 for x in a.rewards["drlaif"] + b.rewards["drlaif"])


def test_the_cai_command_is_registered_and_errors_are_one_line(tmp_path):
    run = subprocess.run([sys.executable, "-m", "alignloop.cli", "cai", "label", "--help"], capture_output=True,
                         text=True, timeout=120)
    assert run.returncode == 0 and "--principles-per-pair" in run.stdout and "--cot-clamp-low" in run.stdout
    bad = tmp_path / "bad.yaml"
    bad.write_text("principles:\n  - id: x\n")
    data = tmp_path / "pairs.jsonl"
    data.write_text('{"prompt": "Hi", "responses": ["a", "b"]}\n')
    run = subprocess.run([sys.executable, "-m", "alignloop.cli", "cai", "label", "--data", str(data), "--out",
                          str(tmp_path / "o.jsonl"), "--constitution", str(bad)], capture_output=True, text=True,
                         timeout=120)
    assert run.returncode == 2 and run.stderr.strip().startswith(f"error: {bad}: field 'principles.0'")
