"""PPO on a tiny model with a rule reward: learns, keeps its reference, resumes, scales to 2
processes; advantages by hand; weighted reward sources; the ratio guard; the NaN stop."""

import json
import math
import statistics

import pytest
import torch

import alignloop.models.loading as loading
from alignloop.train import ppo
from alignloop.train.ppo import PPOConfig, Rollout, compute_advantages, run_ppo
from alignloop.train.tracking import read_metrics
from tests.two_processes import job_config, nan_on_call

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
    assert all(x["policy/skipped_minibatches"] == 0 for x in m)  # the ratio guard stays quiet
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
def test_other_options_train_the_policy_and_keep_the_reference(tiny_model_dir, prompts, tmp_path, monkeypatch,
                                                               advantage, extra):
    loaded = _recording_loader(monkeypatch)
    out = run_ppo(_cfg(tiny_model_dir, prompts, tmp_path / advantage, advantage=advantage, iterations=2, batch_size=4,
                       num_samples=2 if advantage != "gae" else 1, ppo_epochs=2, **extra))
    m = read_metrics(out)
    assert len(m) == 2 and all(torch.isfinite(torch.tensor(x["loss/policy"])) for x in m)
    if extra.get("adaptive_kl"):
        assert m[-1]["kl/next_beta"] != 0.05
    fresh = loading.AutoModelForCausalLM.from_pretrained(str(tiny_model_dir)).state_dict()
    assert all(torch.equal(loaded[1].state_dict()[k], fresh[k]) for k in fresh)  # the reference: bit-identical
    assert _max_diff(_final(out), fresh) > 1e-4  # the policy: trained


def _rollout(mask, scores, kl, values=None) -> Rollout:
    """A hand-made rollout: only what compute_advantages reads is real."""
    mask = torch.tensor(mask, dtype=torch.float32)
    kl = torch.tensor(kl) * mask
    zeros = torch.zeros_like(mask)
    return Rollout(inputs={}, mask=mask, logprobs=zeros, ref_logprobs=zeros,
                   values=zeros if values is None else torch.tensor(values), kl=kl, scores=torch.tensor(scores),
                   finished=torch.ones(len(scores), dtype=torch.bool), source_scores={}, chats=[], texts=[],
                   response_ids=[], timing={})


def _whitened(per_row: list[list[float]]) -> list[list[float]]:
    """Whiten the real tokens by the textbook formula: (x - mean) / sqrt(unbiased variance + 1e-8)."""
    flat = [x for row in per_row for x in row]
    mean, var = statistics.fmean(flat), statistics.variance(flat)
    return [[(x - mean) / math.sqrt(var + 1e-8) for x in row] for row in per_row]


def _assert_rows(tensor, mask, rows):
    for b, row in enumerate(rows):
        real = tensor[b][torch.tensor(mask[b], dtype=torch.bool)].tolist()
        assert real == pytest.approx(row, abs=1e-5), (b, real, row)
    assert (tensor[~torch.tensor(mask, dtype=torch.bool)] == 0).all()  # padding


MASK = [[1, 1, 1], [1, 1, 0], [1, 0, 0], [1, 1, 1]]  # 2 prompts x K = 2 samples, prompt-major
SCORES = [1.0, 0.0, 2.0, 1.0]
KL = [[0.1, 0.1, 0.1], [0.2, 0.0, 9.0], [0.5, 9.0, 9.0], [0.0, 0.0, 0.0]]  # 9.0: padding, never read


@pytest.mark.numerics
def test_rloo_advantages_by_hand():
    # KL-penalised sequence scores, beta 0.1: 1 - 0.03, 0 - 0.02, 2 - 0.05, 1 - 0 = 0.97, -0.02, 1.95, 1.0
    # leave-one-out with K = 2: each minus the other of its prompt: 0.99, -0.99, 0.95, -0.95, on every token
    cfg = PPOConfig(model="m", reward="r", prompts="p", out="o", advantage="rloo", num_samples=2)
    adv, returns = compute_advantages(cfg, _rollout(MASK, SCORES, KL), beta=0.1)
    assert returns is None
    _assert_rows(adv, MASK, _whitened([[0.99] * 3, [-0.99] * 2, [0.95], [-0.95] * 3]))


@pytest.mark.numerics
def test_grpo_with_kl_in_the_loss_by_hand():
    # --kl-in-loss: the KL stays out of the scores. Groups (1, 0) and (2, 1): mean 0.5 / 1.5, sample std
    # sqrt(0.5); A = +-0.5 / (sqrt(0.5) + 1e-6) = +-0.70711
    cfg = PPOConfig(model="m", reward="r", prompts="p", out="o", advantage="grpo", num_samples=2, kl_in_loss=True)
    adv, _ = compute_advantages(cfg, _rollout(MASK, SCORES, KL), beta=0.1)
    a = 0.5 / (math.sqrt(0.5) + 1e-6)
    _assert_rows(adv, MASK, _whitened([[a] * 3, [-a] * 2, [a], [-a] * 3]))


@pytest.mark.numerics
def test_gae_with_whitened_rewards_by_hand():
    # per-token rewards, beta 0.5: -0.5 kl_t, + the score on the last real token
    #   row 0: -0.05, -0.05, -0.05 + 1 ; row 1: -0.1, 0 + 0 ; row 2: -0.25 + 2 ; row 3: 0, 0, 0 + 1
    # whitened keeping their mean (shift_mean False); then GAE with V = 0, gamma 1, lam 0.5:
    # A_t = r_t + 0.5 A_{t+1}; the returns are A + V = A; the advantages whitened again
    rewards = [[-0.05, -0.05, 0.95], [-0.1, 0.0], [1.75], [0.0, 0.0, 1.0]]
    flat = [x for row in rewards for x in row]
    mean = statistics.fmean(flat)
    rewards = [[x + mean for x in row] for row in _whitened(rewards)]
    adv = []
    for row in rewards:
        a, out = 0.0, []
        for r in reversed(row):
            a = r + 0.5 * a
            out.insert(0, a)
        adv.append(out)
    cfg = PPOConfig(model="m", reward="r", prompts="p", out="o", advantage="gae", whiten_rewards=True, gamma=1.0, lam=0.5)
    got, returns = compute_advantages(cfg, _rollout(MASK, SCORES, KL), beta=0.5)
    _assert_rows(returns, MASK, adv)
    _assert_rows(got, MASK, _whitened(adv))


def test_weighted_reward_sources_are_summed(tiny_model_dir, prompts, tmp_path):
    counts, words = "rule:tests.rules:count_e", "rule:tests.rules:word_count"
    out = run_ppo(_cfg(tiny_model_dir, prompts, tmp_path / "mix", reward=f"2*{counts},-0.5*{words}", iterations=2,
                       batch_size=4, score_clip=None))
    for row in read_metrics(out):
        assert row[f"score/{counts}"] > 0 and row[f"score/{words}"] > 0  # each source's raw mean, named as given
        assert row["reward/score"] == pytest.approx(2 * row[f"score/{counts}"] - 0.5 * row[f"score/{words}"], abs=1e-4)


def test_the_ratio_guard_skips_minibatches_whose_policy_jumped(tiny_model_dir, prompts, tmp_path, monkeypatch):
    """Learning rate 0.05: after a minibatch's step the policy has jumped, so the next minibatch's
    mean ratio exceeds 1.001 and it is skipped. The first of an iteration has ratio 1: it steps."""
    steps = []
    step = torch.optim.AdamW.step
    monkeypatch.setattr(torch.optim.AdamW, "step", lambda self, *a, **kw: steps.append(1) or step(self, *a, **kw))
    out = run_ppo(_cfg(tiny_model_dir, prompts, tmp_path / "guard", iterations=2, batch_size=4, ppo_epochs=2,
                       minibatches=2, learning_rate=0.05, ratio_threshold=1.001))
    skipped = sum(x["policy/skipped_minibatches"] for x in read_metrics(out))
    assert 1 <= skipped <= 6 and len(steps) + skipped == 2 * 2 * 2


def _checkpoint(out):
    folder = out / "checkpoint"
    return torch.load(folder / "trainable.pt"), json.loads((folder / "state.json").read_text())


@pytest.mark.parametrize("nan_call", [5, 6])
def test_a_nan_stops_with_the_state_before_its_iteration(tiny_model_dir, prompts, tmp_path, monkeypatch, nan_call):
    """Two minibatches per iteration, so policy_loss call 5 is iteration 3's first (nothing of it
    applied yet) and call 6 its second, after one optimizer step: then the state before iteration
    3 is rebuilt by replaying. Either way the checkpoint is bit-identical to a run stopped after 2."""
    kw = dict(iterations=4, batch_size=8, ppo_epochs=1, minibatches=2, adaptive_kl=True)
    before = _checkpoint(run_ppo(_cfg(tiny_model_dir, prompts, tmp_path / "two", stop_at_iteration=2, **kw)))
    monkeypatch.setattr(ppo, "policy_loss", nan_on_call(ppo.policy_loss, nan_call))
    with pytest.raises(FloatingPointError, match="not finite at iteration 3"):
        run_ppo(_cfg(tiny_model_dir, prompts, tmp_path / "nan", **kw))
    weights, state = _checkpoint(tmp_path / "nan")
    assert state == before[1] and state["iteration"] == 2  # the KL controller's state too
    assert weights.keys() == before[0].keys() and all(torch.equal(weights[k], before[0][k]) for k in weights)
    assert [x["step"] for x in read_metrics(tmp_path / "nan")] == [1, 2]
    assert read_metrics(tmp_path / "nan")[1]["kl/beta"] == read_metrics(tmp_path / "two")[1]["kl/beta"]


def _final(out):
    return loading.load_causal_lm(str(out)).state_dict()


def _max_diff(a, b):
    return max((a[k] - b[k]).abs().max().item() for k in a)


@pytest.fixture(scope="module")
def demonstrations(tmp_path_factory):
    """PPO-ptx data: one fixed answer, far from what the count_e reward asks for."""
    path = tmp_path_factory.mktemp("ptx") / "demos.jsonl"
    path.write_text("".join(json.dumps({"prompt": f"Answer number {i}.", "response": "No, not now. Go on."}) + "\n"
                            for i in range(12)))
    return path


def _demo_nll(out, demonstrations) -> float:
    """The token-mean NLL of the demonstrations under a saved policy (what --ptx-data keeps low)."""
    from alignloop.models.policy import PolicyWithValue
    from alignloop.train.ppo import load_demonstrations, ptx_loss

    tokenizer = loading.load_tokenizer(str(out))
    demos = load_demonstrations(PPOConfig(reward=RULE, prompts=out, out=out, ptx_data=demonstrations), tokenizer)
    with torch.no_grad():
        return ptx_loss(PolicyWithValue(loading.load_causal_lm(str(out))), demos, list(range(12)), "cpu").item()


def test_ptx_draws_are_a_function_of_their_coordinates():
    from alignloop.train.ppo import ptx_draw

    a = ptx_draw(20, 8, seed=0, iteration=3, epoch=1, minibatch=2, rank=0)
    assert a == ptx_draw(20, 8, seed=0, iteration=3, epoch=1, minibatch=2, rank=0)
    assert len(set(a)) == 8 and all(0 <= i < 20 for i in a)
    others = [ptx_draw(20, 8, 1, 3, 1, 2, 0), ptx_draw(20, 8, 0, 4, 1, 2, 0), ptx_draw(20, 8, 0, 3, 0, 2, 0),
              ptx_draw(20, 8, 0, 3, 1, 1, 0), ptx_draw(20, 8, 0, 3, 1, 2, 1)]
    assert all(o != a for o in others)
    assert sorted(ptx_draw(5, 8, 0, 0, 0, 0, 0)) == [0, 1, 2, 3, 4]  # fewer than a batch: all of them


def test_ptx_keeps_the_demonstrations_likely_and_at_weight_0_changes_nothing(tiny_model_dir, prompts, demonstrations,
                                                                              tmp_path):
    kw = dict(iterations=8, batch_size=8)
    plain = run_ppo(_cfg(tiny_model_dir, prompts, tmp_path / "plain", **kw))
    ptx = run_ppo(_cfg(tiny_model_dir, prompts, tmp_path / "ptx", ptx_data=demonstrations, ptx_coef=2.0, **kw))
    zero = run_ppo(_cfg(tiny_model_dir, prompts, tmp_path / "zero", ptx_data=demonstrations, ptx_coef=0.0, **kw))
    start = _demo_nll(tiny_model_dir, demonstrations)
    assert _demo_nll(ptx, demonstrations) < min(start, _demo_nll(plain, demonstrations)) - 0.5
    losses = [m["loss/ptx"] for m in read_metrics(ptx)]
    assert len(losses) == 8 and losses[-1] < losses[0]
    a, b = _final(plain), _final(zero)  # a zero-weighted term adds exact zeros and draws from its own generator
    assert all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.numerics
@pytest.mark.parametrize("ptx", [False, True])
def test_resume_equals_uninterrupted_run(tiny_model_dir, prompts, demonstrations, tmp_path, ptx):
    kw = dict(iterations=6, batch_size=8, adaptive_kl=True, **(dict(ptx_data=demonstrations) if ptx else {}))
    whole = run_ppo(_cfg(tiny_model_dir, prompts, tmp_path / "whole", **kw))
    run_ppo(_cfg(tiny_model_dir, prompts, tmp_path / "part", stop_at_iteration=3, **kw))
    part = run_ppo(_cfg(tiny_model_dir, prompts, tmp_path / "part", resume=True, **kw))
    a, b = _final(whole), _final(part)
    assert max((a[k] - b[k]).abs().max().item() for k in a) < 1e-6
    assert [x["kl/beta"] for x in read_metrics(whole)] == [x["kl/beta"] for x in read_metrics(part)]


@pytest.mark.numerics
def test_two_processes_match_one(two_process_runs, tmp_path):
    """Greedy sampling (tiny top-p) makes the rollouts independent of each rank's seed; the loss is
    token-averaged over both processes and the advantages whitened with statistics of both, so the
    update equals one process with the same global batch. Plain SGD: the weights differ by lr x
    the gradients' rounding (gloo sums in another order); Adam would amplify it, differently on
    every CPU."""
    run = two_process_runs
    assert [r["ppo"] for r in run["results"]] == ["ok", "ok"]
    one = _final(run_ppo(job_config("ppo", run["files"], tmp_path / "one", processes=1)))
    assert _max_diff(one, _final(run["files"]["model"])) > 1e-3  # the steps were not negligible
    assert _max_diff(one, _final(run["root"] / "ppo")) < 1e-6


@pytest.mark.numerics
def test_a_nan_on_one_process_stops_every_process_with_the_state_before_its_iteration(two_process_runs, tmp_path):
    """Rank 1 alone gets a NaN loss in iteration 2 (rank 0's is finite): both stop there, and the
    checkpoint is the state after iteration 1, what one process stopped after 1 holds."""
    run = two_process_runs
    assert all("not finite at iteration 2" in r["ppo_nan"] for r in run["results"]), run["results"]
    weights, state = _checkpoint(run["root"] / "ppo_nan")
    assert state["iteration"] == 1 and [x["step"] for x in read_metrics(run["root"] / "ppo_nan")] == [1]
    cfg = job_config("ppo_nan", run["files"], tmp_path / "one", processes=1).model_copy(update={"stop_at_iteration": 1})
    one, _ = _checkpoint(run_ppo(cfg))
    fresh = _final(run["files"]["model"])
    assert max((one[f"lm.{k}"] - v).abs().max().item() for k, v in fresh.items() if f"lm.{k}" in one) > 1e-3  # it stepped
    assert _max_diff(one, weights) < 1e-6


@pytest.mark.numerics
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


@pytest.mark.numerics
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


@pytest.mark.parametrize("lora", [False, True])
def test_a_released_sampling_copy_holds_no_rewritten_weight_and_refreshes_whole(tiny_model_dir, lora):
    """PPO frees the copy's weights while the policy trains; the next refresh gives back the
    copy a fresh one would be, bit for bit, the weights it does not rewrite kept meanwhile."""
    from alignloop.config import LoraOptions
    from alignloop.models.loading import apply_lora
    from alignloop.models.policy import SamplingCopy

    torch.manual_seed(0)
    lm = loading.load_causal_lm(str(tiny_model_dir))
    if lora:
        lm = apply_lora(lm, LoraOptions(lora_rank=4, lora_alpha=8.0, lora_targets=["q_proj", "up_proj"]))
    else:
        lm.requires_grad_(True)
    copy = SamplingCopy(lm, torch.bfloat16)
    whole = sum(p.numel() for p in copy.model.parameters())
    kept = {n: p.clone() for n, p in copy.model.named_parameters() if "q_proj" not in n and "up_proj" not in n}
    copy.release()
    left = sum(p.numel() for p in copy.model.parameters())
    assert left == (sum(p.numel() for p in kept.values()) if lora else 0)
    with torch.no_grad():  # an optimizer step
        for p in lm.parameters():
            if p.requires_grad:
                p.add_(torch.randn_like(p) * 0.05)
    refreshed = dict(copy.refresh().named_parameters())
    want = dict(SamplingCopy(lm, torch.bfloat16).model.named_parameters())
    assert sum(p.numel() for p in refreshed.values()) == whole
    assert all(torch.equal(refreshed[n], want[n]) for n in want)
    if lora:
        assert all(torch.equal(refreshed[n], p) for n, p in kept.items())
    assert copy.model.lm_head.weight is copy.model.model.embed_tokens.weight


def test_bf16_full_finetuning_keeps_a_half_reference_whose_first_kl_is_zero(tiny_model_dir, prompts, tmp_path,
                                                                             monkeypatch):
    """Under --mixed-precision bf16 the frozen reference stores its linear weights in bf16; at
    the first rollout the policy IS the reference, so the KL is exactly 0 (the same bits)."""
    if torch.cuda.is_available():
        pytest.skip("a CPU run")
    monkeypatch.setattr(loading, "cpu_has_fast_half", lambda dtype: True)  # bf16 kept on any CPU
    loaded = _recording_loader(monkeypatch)
    out = run_ppo(_cfg(tiny_model_dir, prompts, tmp_path / "bf16", iterations=2, batch_size=4, max_new_tokens=8,
                       learning_rate=1e-2, mixed_precision="bf16"))
    policy_base, reference = loaded[0], loaded[1]
    assert reference.model.layers[0].self_attn.q_proj.weight.dtype == torch.bfloat16
    assert policy_base.model.layers[0].self_attn.q_proj.weight.dtype == torch.float32
    m = read_metrics(out)
    assert m[0]["kl/mean"] == 0.0
    assert m[1]["kl/mean"] != 0.0  # the policy has moved


def test_logprobs_without_the_entropy_are_the_same_and_the_entropy_is_the_softmaxs(tiny_model_dir):
    from alignloop.models.policy import PolicyWithValue, rollout_tensors

    torch.manual_seed(0)
    policy = PolicyWithValue(loading.load_causal_lm(str(tiny_model_dir))).eval()
    vocab = policy.lm.config.vocab_size
    prompts = [torch.randint(3, vocab, (n,)).tolist() for n in (5, 3)]
    responses = [torch.randint(3, vocab, (n,)).tolist() for n in (4, 2)]
    batch = rollout_tensors(prompts, responses, pad_id=0)
    with torch.no_grad():
        full = policy(**batch, temperature=0.7)
        lean = policy(**batch, temperature=0.7, with_entropy=False)
        logits = policy.lm(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                           position_ids=(batch["attention_mask"].cumsum(-1) - 1).clamp_min(0)).logits / 0.7
    assert "entropy" not in lean and torch.equal(lean["logprobs"], full["logprobs"])
    assert torch.equal(lean["values"], full["values"])
    p = batch["prompt_width"]
    for row, r in enumerate(responses):  # H = -sum p log p of the tempered softmax, at each response position
        logp = torch.log_softmax(logits[row, p - 1: p - 1 + len(r)].float(), dim=-1)
        expected = -(logp.exp() * logp).sum(-1)
        assert torch.allclose(full["entropy"][row, : len(r)], expected, atol=1e-4)
        assert torch.all(full["entropy"][row, len(r):] == 0)
