"""PPO on a tiny model with a rule reward: learns, keeps its reference, resumes, scales to 2 processes."""

import json
import os
import subprocess
import sys

import pytest
import torch

import alignloop.models.loading as loading
from alignloop.train.ppo import PPOConfig, run_ppo
from alignloop.train.tracking import read_metrics

RULE = "rule:tests.rules:count_e"


@pytest.fixture(scope="module")
def prompts(tmp_path_factory):
    path = tmp_path_factory.mktemp("ppo") / "prompts.jsonl"
    path.write_text("".join(json.dumps({"prompt": f"Say something, number {i}."}) + "\n" for i in range(32)))
    return path


def _cfg(tiny_model_dir, prompts, out, **kw):
    base = dict(model=str(tiny_model_dir), reward=RULE, prompts=prompts, out=out, iterations=16, batch_size=16,
                max_new_tokens=16, lora=False, learning_rate=2e-3, kl_coef=0.05, missing_eos_penalty=None,
                save_every=0, log_samples_every=0, seed=0)
    return PPOConfig(**{**base, **kw})


def _recording_loader(monkeypatch):
    """Record every model load_causal_lm returns (the policy's base and, in full mode, the reference)."""
    loaded = []
    original = loading.load_causal_lm

    def record(*args, **kw):
        model = original(*args, **kw)
        loaded.append(model)
        return model

    monkeypatch.setattr(loading, "load_causal_lm", record)
    return loaded


def test_full_finetuning_learns_the_rule_and_keeps_the_reference(tiny_model_dir, prompts, tmp_path, monkeypatch):
    loaded = _recording_loader(monkeypatch)
    out = run_ppo(_cfg(tiny_model_dir, prompts, tmp_path / "full"))
    m = read_metrics(out)
    first = sum(x["reward/score"] for x in m[:3]) / 3
    last = sum(x["reward/score"] for x in m[-3:]) / 3
    assert last > first + 2.0, [x["reward/score"] for x in m]
    assert max(x["kl/mean"] for x in m) < 100  # bounded by the penalty
    reference = loaded[1].state_dict()  # [0] became the policy, [1] is the frozen reference
    fresh = loading.AutoModelForCausalLM.from_pretrained(str(tiny_model_dir)).state_dict()
    assert all(torch.equal(reference[k], fresh[k]) for k in fresh)
    for key in ("reward/rlhf", "policy/approx_kl", "policy/clipfrac", "policy/entropy", "loss/policy",
                "loss/value", "value/explained_variance", "kl/beta", "time/generate_s", "time/tokens_per_s",
                "response/length", "response/no_eos_share", "response/repeated_3gram_share"):
        assert key in m[-1], key
    tuned = loading.load_causal_lm(str(out)).state_dict()
    assert not torch.equal(tuned["model.norm.weight"], fresh["model.norm.weight"])


def test_lora_learns_on_one_copy_with_the_base_untouched(tiny_model_dir, prompts, tmp_path, monkeypatch):
    loaded = _recording_loader(monkeypatch)
    out = run_ppo(_cfg(tiny_model_dir, prompts, tmp_path / "lora", lora=True, learning_rate=1e-2, iterations=12))
    assert len(loaded) == 1  # no second copy of the weights for the reference
    base = {k: v for k, v in loaded[0].state_dict().items() if "lora_" not in k}
    fresh = loading.AutoModelForCausalLM.from_pretrained(str(tiny_model_dir)).state_dict()
    for k, v in base.items():
        plain = k.replace("base_model.model.", "").replace(".base_layer", "")
        assert torch.equal(v, fresh[plain]), k
    m = read_metrics(out)
    assert sum(x["reward/score"] for x in m[-3:]) > sum(x["reward/score"] for x in m[:3]) + 1.5
    assert (out / "adapter_model.safetensors").exists()


@pytest.mark.parametrize("advantage,extra", [("rloo", {}), ("grpo", {"kl_in_loss": True}), ("gae", {"adaptive_kl": True, "kl_estimator": "k3", "whiten_rewards": True, "minibatches": 2, "micro_batch_size": 4})])
def test_other_options_run(tiny_model_dir, prompts, tmp_path, advantage, extra):
    out = run_ppo(_cfg(tiny_model_dir, prompts, tmp_path / advantage, advantage=advantage, iterations=2, batch_size=4,
                       num_samples=2 if advantage != "gae" else 1, ppo_epochs=2, **extra))
    m = read_metrics(out)
    assert len(m) == 2 and all(torch.isfinite(torch.tensor(x["loss/policy"])) for x in m)
    if extra.get("adaptive_kl"):
        assert m[-1]["kl/next_beta"] != 0.05


def _final(out):
    return loading.load_causal_lm(str(out)).state_dict()


def test_resume_equals_uninterrupted_run(tiny_model_dir, prompts, tmp_path):
    kw = dict(iterations=6, batch_size=8, adaptive_kl=True)
    whole = run_ppo(_cfg(tiny_model_dir, prompts, tmp_path / "whole", **kw))
    run_ppo(_cfg(tiny_model_dir, prompts, tmp_path / "part", stop_at_iteration=3, **kw))
    part = run_ppo(_cfg(tiny_model_dir, prompts, tmp_path / "part", resume=True, **kw))
    a, b = _final(whole), _final(part)
    assert max((a[k] - b[k]).abs().max().item() for k in a) < 1e-6
    assert [x["kl/beta"] for x in read_metrics(whole)] == [x["kl/beta"] for x in read_metrics(part)]


def test_two_processes_match_one(tiny_model_dir, prompts, tmp_path):
    """Greedy sampling (tiny top-p) makes the rollouts independent of each rank's seed; gradients are
    token-averaged over both processes, so the update equals one process with the same global batch."""
    common = ["--model", str(tiny_model_dir), "--reward", RULE, "--prompts", str(prompts), "--iterations", "2",
              "--max-new-tokens", "8", "--no-lora", "--learning-rate", "1e-3", "--top-p", "1e-6", "--save-every", "0",
              "--log-samples-every", "0", "--seed", "0"]
    one = run_ppo(_cfg(tiny_model_dir, prompts, tmp_path / "one", iterations=2, batch_size=8, max_new_tokens=8,
                       learning_rate=1e-3, top_p=1e-6, missing_eos_penalty=1.0))
    launcher = os.path.join(os.path.dirname(sys.executable), "accelerate")
    r = subprocess.run([launcher, "launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1",
                        "--mixed_precision", "no", "--dynamo_backend", "no", "-m", "alignloop.cli", "ppo", *common,
                        "--batch-size", "4", "--out", str(tmp_path / "two")],
                       capture_output=True, text=True, timeout=300, cwd=os.getcwd(),
                       env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert r.returncode == 0, r.stderr[-3000:]
    a, b = _final(one), _final(tmp_path / "two")
    assert max((a[k] - b[k]).abs().max().item() for k in a) < 1e-4


def test_sampling_copy_follows_the_lora_policy_and_leaves_it_alone(tiny_model_dir):
    from alignloop.config import LoraOptions
    from alignloop.models.loading import apply_lora
    from alignloop.models.policy import SamplingCopy

    torch.manual_seed(0)
    opts = LoraOptions(lora_rank=4, lora_alpha=8.0, lora_targets=["q_proj", "v_proj", "up_proj"])
    lm = apply_lora(loading.load_causal_lm(str(tiny_model_dir)), opts)
    lora_b = [p for name, p in lm.named_parameters() if "lora_B" in name]
    with torch.no_grad():  # LoRA's B starts at 0: give the adapters something to merge
        for p in lora_b:
            p.normal_(std=0.05)
    before = {k: v.clone() for k, v in lm.state_dict().items()}
    ids = torch.randint(0, lm.config.vocab_size, (2, 12))
    copy = SamplingCopy(lm, torch.float32)
    assert not any("lora" in name for name, _ in copy.model.named_parameters())
    with torch.no_grad():
        assert torch.allclose(lm(input_ids=ids).logits, copy.model(input_ids=ids).logits, atol=1e-4)
        with lm.disable_adapter():
            base_logits = lm(input_ids=ids).logits
        assert not torch.allclose(base_logits, copy.model(input_ids=ids).logits, atol=1e-3)  # the adapters did matter
        for p in lora_b:  # an optimizer step: the copy is stale until refreshed
            p.add_(torch.randn_like(p) * 0.05)
        stale = copy.model(input_ids=ids).logits
        fresh = copy.refresh()(input_ids=ids).logits
        adapter_logits = lm(input_ids=ids).logits
    assert not torch.allclose(stale, adapter_logits, atol=1e-3)
    assert torch.allclose(fresh, adapter_logits, atol=1e-4)
    after = lm.state_dict()
    assert all(torch.equal(after[k], v) for k, v in before.items() if "lora_B" not in k)  # only read


def test_sampling_copy_of_a_fully_trained_policy_in_bf16(tiny_model_dir):
    from alignloop.models.policy import SamplingCopy

    lm = loading.load_causal_lm(str(tiny_model_dir)).requires_grad_(True)
    copy = SamplingCopy(lm, torch.bfloat16)
    assert {p.dtype for p in copy.model.parameters()} == {torch.bfloat16}
    assert next(lm.parameters()).dtype == torch.float32
    weight = lm.model.layers[0].mlp.up_proj.weight
    with torch.no_grad():
        weight.add_(1.0)
        copied = copy.refresh().model.layers[0].mlp.up_proj.weight
    assert torch.equal(copied, weight.to(torch.bfloat16))
