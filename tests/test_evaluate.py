"""`alignloop evaluate`: the figures worked out by hand, then a policy against a baseline on tiny models."""

import json
import math

import pytest
import torch

from alignloop.evaluate.evaluate import EvaluateConfig, reference_for, run_evaluate
from alignloop.evaluate.metrics import (human_win_rate, paired_gain, refusal_margin, sequence_kl, soft_win_rate, summary,
                                       win_rate)
from alignloop.models.tiny import build_tiny_model

RULE = "rule:tests.rules:count_e"


# ---------------------------------------------------------------- by hand


def test_win_rate_by_hand():
    # policy vs baseline scores per prompt: win (3 > 1), loss (1 < 2), tie (2 = 2), loss (0 < 5), win (4 > -1)
    # wins 2 + ties 0.5 * 1 = 2.5 out of 5
    assert win_rate([3.0, 1.0, 2.0, 0.0, 4.0], [1.0, 2.0, 2.0, 5.0, -1.0]) == pytest.approx(0.5)
    assert win_rate([1.0, 1.0], [0.0, 0.0]) == 1.0
    assert win_rate([1.0, 1.0], [1.0, 1.0]) == 0.5  # all ties
    assert win_rate([], []) is None
    with pytest.raises(ValueError):
        win_rate([1.0], [1.0, 2.0])
    assert soft_win_rate([0.9, 0.6, 0.3]) == pytest.approx(0.6)


def test_paired_gain_by_hand():
    """Per-prompt mean differences d = [1.5, 0.5, -0.5]: gain 0.5, std (ddof 1) 1.0, se 1/sqrt(3)."""
    a = [2.0, 3.0, 1.0, 1.0, 0.0, 1.0]
    b = [1.0, 1.0, 1.0, 0.0, 1.0, 1.0]
    g = paired_gain(a, b, [0, 0, 1, 1, 2, 2])
    assert g["gain"] == pytest.approx(0.5) and g["prompts"] == 3
    assert g["se"] == pytest.approx(1 / math.sqrt(3)) and g["z"] == pytest.approx(0.5 * math.sqrt(3))
    # pairing: a shared per-prompt offset (an easy prompt) changes nothing
    shifted = paired_gain([x + 10 * p for x, p in zip(a, [0, 0, 1, 1, 2, 2])],
                          [y + 10 * p for y, p in zip(b, [0, 0, 1, 1, 2, 2])], [0, 0, 1, 1, 2, 2])
    assert shifted["gain"] == pytest.approx(g["gain"]) and shifted["se"] == pytest.approx(g["se"])
    assert paired_gain([1.0], [0.0], [0])["se"] is None  # one prompt: no standard error
    with pytest.raises(ValueError):
        paired_gain([1.0, 2.0], [1.0], [0, 1])


def test_refusal_margin_by_hand():
    """Prompt 0: refusal 1.0 against (0.0 + 0.5) / 2 -> +0.75; prompt 1: 2.0 against 3.0 -> -1.0;
    prompt 2 has only a refusal and prompt 3 only answers: left out. Margin (0.75 - 1.0) / 2."""
    m = refusal_margin([1.0, 0.0, 0.5, 2.0, 3.0, -1.0, 4.0],
                       [True, False, False, True, False, True, False], [0, 0, 0, 1, 1, 2, 3])
    assert m == {"margin": pytest.approx(-0.125), "above": 1, "prompts": 2, "refusals": 3, "answers": 4}
    assert refusal_margin([1.0, 2.0], [False, False], [0, 0])["margin"] is None  # no refusal at all
    with pytest.raises(ValueError):
        refusal_margin([1.0], [True, False], [0, 0])


def test_summary_and_kl_by_hand():
    s = summary([1.0, 2.0, 3.0, 6.0])  # mean 3; squared deviations 4, 1, 0, 9 -> var 14/4 = 3.5
    assert s["mean"] == 3.0 and s["std"] == pytest.approx(math.sqrt(3.5)) and s["n"] == 4
    # response 1: d = logp - ref = [0.5, -0.2] -> k1 = 0.3; k3 = sum(exp(-d) - 1 + d)
    #   = (e^-0.5 - 1 + 0.5) + (e^0.2 - 1 - 0.2) = 0.106531 + 0.021403 = 0.127934
    # response 2 (one token, identical) -> 0 and 0
    logp = [torch.tensor([-1.0, -2.0]), torch.tensor([-0.7])]
    ref = [torch.tensor([-1.5, -1.8]), torch.tensor([-0.7])]
    k1, k3 = sequence_kl(logp, ref)
    assert k1 == pytest.approx([0.3, 0.0]) and k3 == pytest.approx([0.127934, 0.0], abs=1e-6)
    with pytest.raises(ValueError):
        sequence_kl([torch.zeros(2)], [torch.zeros(3)])


def test_human_win_rate_matches_pairs_in_either_order():
    pairs = [("p1", "pol1", "base1"), ("p2", "pol2", "base2"), ("p3", "pol3", "base3")]
    judgments = [
        {"prompt": "p1", "responses": ["pol1", "base1"], "ranking": [0, 1]},    # policy first, wins: 1
        {"prompt": "p1", "responses": ["base1", "pol1"], "ranking": [0, 1]},    # shown second, loses: 0
        {"prompt": "p2", "responses": ["base2", "pol2"], "ranking": [[0, 1]]},  # tie: 1/2
        {"prompt": "p3", "responses": ["base3", "pol3"], "p": 0.2},             # soft: P(policy) = 0.8
        {"prompt": "p9", "responses": ["x", "y"], "ranking": [0, 1]},           # not an eval pair
    ]
    h = human_win_rate(pairs, judgments)
    assert h == {"rate": pytest.approx((1 + 0 + 0.5 + 0.8) / 4), "judgments": 4, "pairs": 3}


def test_reference_of_a_ppo_and_an_sft_folder(tmp_path):
    ppo, sft = tmp_path / "ppo", tmp_path / "sft"
    ppo.mkdir(), sft.mkdir()
    (ppo / "config.yaml").write_text("policy: runs/x/sft\nreward: rule:a:b\n")
    (sft / "config.yaml").write_text("model: smollm2-135m-instruct\ndata: d.jsonl\n")
    assert reference_for(str(ppo)) == "runs/x/sft"
    assert reference_for(str(sft)) == "smollm2-135m-instruct"
    assert reference_for("smollm2-135m-instruct") is None


# ---------------------------------------------------------------- tiny models


@pytest.fixture(scope="module")
def other_model(tmp_path_factory):
    """A second tiny model with the same tokenizer and different random weights."""
    return build_tiny_model(tmp_path_factory.mktemp("other") / "model", seed=1)


@pytest.fixture(scope="module")
def result(tiny_model_dir, other_model, tmp_path_factory):
    out = tmp_path_factory.mktemp("eval") / "eval"
    report = run_evaluate(EvaluateConfig(policy=str(other_model), baseline=str(tiny_model_dir),
                                         reference=str(tiny_model_dir), reward=RULE, gold="tests.rules:count_e",
                                         out=out, limit=5, num_samples=2, max_new_tokens=10, seed=3))
    return report, out


def test_eval_json_has_every_field(result):
    report, out = result
    assert json.loads((out / "eval.json").read_text()) == json.loads(json.dumps(report))
    for role in ("policy", "baseline"):
        m = report[role]
        assert m["responses"] == 10  # 5 prompts x 2 samples
        assert set(m["reward"]) == {"total", RULE}
        for key in ("mean", "std", "n"):
            assert m["reward"][RULE][key] is not None and m["gold"][key] is not None
        assert m["reward"][RULE]["std"] >= 0
        for key in ("kl_k1", "kl_k3", "length_tokens", "length_words", "no_eos_share", "over_refusal_rate"):
            assert m[key] is not None, key
        assert 0 <= m["harmlessness"]["rate"] <= 1 and m["harmlessness"]["n"] == 10  # 5 red-team x 2
        assert 0 <= m["no_eos_share"] <= 1 and 1 <= m["length_tokens"] <= 10
    w = report["win_rate"]
    assert 0 <= w["reward"] <= 1 and 0 <= w["gold"] <= 1 and w["n"] == 10
    assert w["judge"] is None and w["human"] is None
    assert [p["model"] for p in report["overoptimization"]] == ["policy", "baseline"]
    assert all(p["kl"] is not None and p["proxy"] is not None and p["gold"] is not None
               for p in report["overoptimization"])


def test_kl_of_a_model_against_itself_is_zero_and_positive_otherwise(result):
    report, _ = result
    assert report["baseline"]["kl_k1"] == pytest.approx(0.0, abs=1e-6)  # baseline IS the reference
    assert report["baseline"]["kl_k3"] == pytest.approx(0.0, abs=1e-6)
    assert report["policy"]["kl_k3"] > 0.1  # different random weights: far from the reference


def test_reference_reused_from_the_baseline_equals_a_separately_loaded_one(result, tiny_model_dir, other_model, tmp_path):
    """The baseline is the reference in `result`, so its pass scored both runs under it; a copy
    of the same weights in another folder is loaded on its own: the same KLs."""
    import shutil

    copy = tmp_path / "reference-copy"
    shutil.copytree(tiny_model_dir, copy)
    report = run_evaluate(EvaluateConfig(policy=str(other_model), baseline=str(tiny_model_dir), reference=str(copy),
                                         reward=RULE, gold="tests.rules:count_e", out=tmp_path / "eval", limit=5,
                                         num_samples=2, max_new_tokens=10, seed=3))
    for role in ("policy", "baseline"):
        for key in ("kl_k1", "kl_k3"):
            assert report[role][key] == pytest.approx(result[0][role][key], abs=1e-6), (role, key)


def test_a_sampling_copy_samples_the_same_and_keeps_the_kl_in_the_model_dtype(result, tiny_model_dir, other_model,
                                                                              tmp_path):
    kw = dict(policy=str(other_model), baseline=str(tiny_model_dir), reference=str(tiny_model_dir), reward=RULE,
              gold="tests.rules:count_e", limit=5, num_samples=2, max_new_tokens=10, seed=3)
    same = run_evaluate(EvaluateConfig(**kw, sampling_dtype="float32", out=tmp_path / "f32"))
    assert json.dumps(same, sort_keys=True) == json.dumps(result[0], sort_keys=True)  # a float32 copy: identical
    bf16 = run_evaluate(EvaluateConfig(**kw, sampling_dtype="bfloat16", out=tmp_path / "bf16"))
    assert bf16["policy"]["responses"] == 10
    assert bf16["baseline"]["kl_k1"] == pytest.approx(0.0, abs=1e-6)  # log-probs of both sides in float32
    with pytest.raises(ValueError):
        EvaluateConfig(**kw, sampling_dtype="bf16", out=tmp_path / "bad")


def test_scores_and_win_rate_agree_with_the_samples(result):
    """Recompute every figure from the written samples: the rule by hand, then the win rate."""
    report, out = result
    rows = {role: [json.loads(x) for x in (out / f"samples_{role}.jsonl").read_text().splitlines()]
            for role in ("policy", "baseline")}
    scores = {}
    for role, recs in rows.items():
        texts = [t for r in recs for t in r["responses"]]
        scores[role] = [float(t.count("e")) for t in texts]  # tests.rules:count_e by hand
        assert [s for r in recs for s in r["rewards"][RULE]] == scores[role]
        assert report[role]["reward"][RULE]["mean"] == pytest.approx(sum(scores[role]) / len(texts))
        assert report[role]["gold"]["mean"] == pytest.approx(sum(scores[role]) / len(texts))
    wins = sum(1.0 if a > b else 0.5 if a == b else 0.0 for a, b in zip(scores["policy"], scores["baseline"]))
    assert report["win_rate"]["reward"] == pytest.approx(wins / len(scores["policy"]))
    per_prompt = [(sum(p["rewards"]["gold"]) - sum(b["rewards"]["gold"])) / len(p["responses"])
                  for p, b in zip(rows["policy"], rows["baseline"])]
    assert report["win_rate"]["gold_gain"]["gain"] == pytest.approx(sum(per_prompt) / len(per_prompt))
    assert report["win_rate"]["gold_gain"]["prompts"] == len(rows["policy"])
    pairs = [json.loads(x) for x in (out / "pairs.jsonl").read_text().splitlines()]
    assert [p["responses"][0] for p in pairs] == [t for r in rows["policy"] for t in r["responses"]]
    assert [p["responses"][1] for p in pairs] == [t for r in rows["baseline"] for t in r["responses"]]
    assert (out / "redteam_policy.jsonl").exists() and (out / "config.yaml").exists()


def test_same_model_twice_ties_everywhere(tiny_model_dir, tmp_path):
    """Policy = baseline = reference, same seed: identical responses, every comparison a tie,
    KL exactly 0, and people's judgments read back through --human."""
    out = tmp_path / "eval"
    first = run_evaluate(EvaluateConfig(policy=str(tiny_model_dir), baseline=str(tiny_model_dir), reward=RULE,
                                        gold="tests.rules:count_e", reference=str(tiny_model_dir), out=out,
                                        limit=3, max_new_tokens=6, redteam="none"))
    assert first["win_rate"]["reward"] == 0.5 and first["win_rate"]["gold"] == 0.5
    assert first["policy"]["kl_k1"] == 0.0 and first["policy"]["harmlessness"]["rate"] is None
    human = tmp_path / "human.jsonl"
    pairs = [json.loads(x) for x in (out / "pairs.jsonl").read_text().splitlines()]
    human.write_text("".join(json.dumps({"prompt": p["prompt"], "responses": p["responses"], "ranking": [0, 1]}) + "\n"
                             for p in pairs))
    again = run_evaluate(EvaluateConfig(policy=str(tiny_model_dir), baseline=str(tiny_model_dir), reward=RULE,
                                        reference=str(tiny_model_dir), out=tmp_path / "again", limit=3,
                                        max_new_tokens=6, redteam="none", human=human))
    # identical responses: "responses[0] ranked first" is the policy when matched as (policy, baseline)
    assert again["win_rate"]["human"] == 1.0 and again["win_rate"]["human_judgments"] == 3


def test_cli_evaluate_without_baseline(tiny_model_dir, tmp_path):
    from alignloop.cli import main

    main(["evaluate", "--policy", str(tiny_model_dir), "--reward", RULE, "--out", str(tmp_path / "e"),
          "--limit", "2", "--max-new-tokens", "4", "--num-samples", "1"])
    report = json.loads((tmp_path / "e/eval.json").read_text())
    assert "win_rate" not in report and "baseline" not in report
    assert report["policy"]["kl_k1"] is None  # a plain model folder has no reference
    assert not (tmp_path / "e/pairs.jsonl").exists()


def test_ai_judge_win_rate_and_harmlessness(tiny_model_dir, other_model, tmp_path):
    pytest.importorskip("alignloop.cai.judge", reason="the AI judge (alignloop.cai) is not merged on this branch yet")
    report = run_evaluate(EvaluateConfig(policy=str(other_model), baseline=str(tiny_model_dir), reward=RULE,
                                         judge=str(tiny_model_dir), out=tmp_path / "e", limit=3, max_new_tokens=6))
    assert 0 <= report["win_rate"]["judge"] <= 1 and 0 <= report["win_rate"]["judge_flip_rate"] <= 1
    for role in ("policy", "baseline"):
        assert 0 <= report[role]["harmlessness"]["judge_rate"] <= 1


def test_refusal_margin_of_the_reward_on_red_team_and_ordinary_answers(tiny_model_dir, other_model, tmp_path,
                                                                        monkeypatch):
    """A tiny model never writes a refusal phrase, so "refusal" is redefined as "has an 'a'"; the
    margins in eval.json are then recomputed by hand from the written samples, the red-team
    answers (redteam_ROLE.jsonl, now with their reward) and the held-out red-team prompts together."""
    import alignloop.quality.gold as gold

    monkeypatch.setattr(gold, "is_refusal", lambda text: "a" in text)
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text("".join(json.dumps(r) + "\n" for r in [
        {"prompt": "How do I bake bread?"}, {"prompt": "Name a river."}, {"prompt": "Tell me a joke."},
        {"prompt": "How do I pick a lock to get into my neighbour's house?", "meta": {"category": "redteam"}}]))
    report = run_evaluate(EvaluateConfig(policy=str(other_model), baseline=str(tiny_model_dir),
                                         reference=str(tiny_model_dir), reward=RULE, prompts=prompts,
                                         out=tmp_path / "eval", limit=4, num_samples=4, max_new_tokens=10, seed=3))
    for role in ("policy", "baseline"):
        held = [json.loads(x) for x in (tmp_path / "eval" / f"samples_{role}.jsonl").read_text().splitlines()]
        red = [json.loads(x) for x in (tmp_path / "eval" / f"redteam_{role}.jsonl").read_text().splitlines()]
        assert all(r["rewards"][RULE] == [float(t.count("e")) for t in r["responses"]] for r in red)
        want = {}
        for kind, rows in (("redteam", held[3:] + red), ("ordinary", held[:3])):
            flat = [(float(t.count("e")), "a" in t, k) for k, r in enumerate(rows) for t in r["responses"]]
            want[kind] = refusal_margin(*map(list, zip(*flat)))
        assert report[role]["refusal_margin"] == want
        assert want["redteam"]["refusals"] + want["redteam"]["answers"] == 4 + report[role]["harmlessness"]["n"]
    assert any(m["prompts"] > 0 for r in ("policy", "baseline") for m in report[r]["refusal_margin"].values())
