"""The control loop (alignloop/control): labeller, queries, the wrapper, clips, the reward
ensemble on a planted reward, resume equality, bad input. Small and fast: Pendulum-v1 and toy envs."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import gymnasium as gym
import numpy as np
import pytest
import torch
from stable_baselines3 import PPO

from alignloop.config import ConfigError
from alignloop.configs import ControlConfig
from alignloop.control.clips import Clips, cut_clips
from alignloop.control.envs import LearnedReward, Trajectory, clip_length, features, make_env
from alignloop.control.labeller import SyntheticLabeller
from alignloop.control.loop import label_schedule, run_control, standard_error, steps_per_round
from alignloop.control.queries import most_disagreed, select_pairs
from alignloop.control.reward_model import RewardEnsemble, train_ensemble
from tests.control.planted import labelled_random_clips
from alignloop.data.records import Comparison

ROOT = Path(__file__).resolve().parents[2]


# ---------------------------------------------------------------- the labeller


def test_the_labellers_random_answers_come_at_its_noise_rate():
    rng = np.random.default_rng(0)
    lab = SyntheticLabeller(noise=0.1)
    answers = [lab.answer(1.0, 0.0, rng) for _ in range(20_000)]  # a is truly better every time
    random_share = np.mean([r for _, r in answers])
    wrong = np.mean([p == 0.0 for p, _ in answers])
    assert random_share == pytest.approx(0.1, abs=0.01)  # 10% random answers
    assert wrong == pytest.approx(0.05, abs=0.006)  # half of them happen to pick the worse clip
    assert all(p == 1.0 for p, r in answers if not r)  # the rest are always right (temperature 0)


def test_the_labeller_says_equal_within_its_tolerance_and_follows_bradley_terry():
    rng = np.random.default_rng(1)
    lab = SyntheticLabeller(noise=0.0, tolerance=0.5)
    assert lab.answer(1.0, 0.6, rng) == (0.5, False)
    assert lab.answer(1.0, 0.4, rng) == (1.0, False)
    bt = SyntheticLabeller(noise=0.0, temperature=2.0)
    wins = np.mean([bt.answer(2.0, 0.0, rng)[0] for _ in range(20_000)])  # s(2 / 2) = 0.731
    assert wins == pytest.approx(1 / (1 + np.exp(-1)), abs=0.01)


def test_labels_are_comparison_records_of_clip_ids():
    rec = SyntheticLabeller(noise=0.0).label("Pendulum-v1", "c1-0", "c1-1", -3.0, -1.0, np.random.default_rng(0))
    assert isinstance(rec, Comparison)
    assert rec.responses == ["c1-0", "c1-1"] and rec.ranking == [1, 0] and rec.source == "simulated"
    again = Comparison.model_validate(json.loads(json.dumps(rec.model_dump(mode="json"))))
    assert again.tiers() == [[1], [0]]
    tie = SyntheticLabeller(noise=0.0, tolerance=1.0).label("x", "a", "b", 0.0, 0.5, np.random.default_rng(0))
    assert tie.ranking == [[0, 1]]


# ---------------------------------------------------------------- queries and the label schedule


def test_disagreement_picks_the_pair_with_the_highest_variance():
    # member returns (N clips, E = 3): clips 0 and 1 are judged alike by all members (variance 0);
    # clips 2 and 3 are ordered differently by each member (variance of s(+4), s(-4), s(0) = 0.19)
    returns = torch.tensor([[1.0, 1.0, 1.0], [0.0, 0.0, 0.0], [4.0, -4.0, 0.0], [0.0, 0.0, 0.0], [0.5, 0.4, 0.6]])
    candidates = np.array([[0, 1], [2, 3], [1, 4], [0, 4]])
    assert most_disagreed(returns, candidates, 1).tolist() == [[2, 3]]
    assert most_disagreed(returns, candidates, 2)[0].tolist() == [2, 3]
    chosen = select_pairs("random", None, 5, 50, 10, np.random.default_rng(0))
    assert chosen.shape == (50, 2) and (chosen[:, 0] != chosen[:, 1]).all()


def test_the_label_rate_decays_and_the_budget_is_spent_exactly():
    n = label_schedule(700, 12, 0.25, 1.0)
    assert sum(n) == 700 and n[0] == 175 and len(n) == 12
    assert all(a >= b for a, b in zip(n[1:], n[2:]))  # decaying after the initial batch
    assert label_schedule(10, 1, 0.25, 1.0) == [10]
    assert steps_per_round(ControlConfig(out="x", total_steps=10_000, rounds=3, n_steps=512, n_envs=2)) == 4096


# ---------------------------------------------------------------- the wrapper and clips


def test_the_wrapper_hides_the_true_reward_from_the_agent():
    plain, wrapped = make_env("Pendulum-v1"), LearnedReward(make_env("Pendulum-v1"), seed=0,
                                                            reward_fn=lambda f: np.full(len(f), 42.0))
    plain.reset(seed=5)
    wrapped.reset(seed=5)
    for _ in range(10):
        a = plain.action_space.sample()
        _, true_r, *_ = plain.step(a)
        _, r, _, _, info = wrapped.step(a)
        assert r == 42.0 and info["true_reward"] == pytest.approx(true_r)
        assert true_r != 42.0


def test_the_agent_trains_on_the_learned_reward_only():
    from stable_baselines3 import PPO
    from stable_baselines3.common.vec_env import DummyVecEnv

    vec = DummyVecEnv([lambda: LearnedReward(make_env("Pendulum-v1"), seed=0, reward_fn=lambda f: np.full(len(f), 0.25))])
    agent = PPO("MlpPolicy", vec, n_steps=32, batch_size=32, n_epochs=1, seed=0, device="cpu")
    agent.learn(32)
    assert np.all(agent.rollout_buffer.rewards == 0.25)  # what PPO learned from: the learned reward, not Pendulum's


def test_a_clip_replays_from_its_seed_and_actions(tmp_path):
    w = LearnedReward(make_env("Pendulum-v1"), seed=3)
    w.recording = True
    w.reset()
    for _ in range(60):
        w.step(w.action_space.sample())
    clips = cut_clips(w.take_trajectories(), 10, 4, np.random.default_rng(0), round_=1)
    clips.save(tmp_path / "clips.npz")
    back = Clips.load(tmp_path / "clips.npz")
    assert back.ids.tolist() == ["c1-0", "c1-1", "c1-2", "c1-3"]
    env = make_env("Pendulum-v1")
    for k in range(4):  # reset(seed) + the stored actions renders the same clip again
        obs, _ = env.reset(seed=int(back.seed[k]))
        seen = []
        for t, a in enumerate(back.replay_actions[k]):
            if t >= back.start[k]:
                seen.append(obs)
            obs, *_ = env.step(a)
        np.testing.assert_allclose(np.stack(seen), back.obs[k], rtol=1e-6)
        np.testing.assert_allclose(back.true_rewards[k], clips.true_rewards[k])


def test_the_default_clip_length_is_a_second_and_a_half_of_simulated_time():
    assert clip_length(make_env("Pendulum-v1"), "Pendulum-v1", None, 1.5) == 30  # dt 0.05 s
    assert clip_length(make_env("Pendulum-v1"), "Pendulum-v1", 25, 1.5) == 25
    assert clip_length(make_env("CartPole-v1"), "CartPole-v1", None, 1.5) == 75  # tau 0.02 s


# ---------------------------------------------------------------- the reward ensemble on a planted reward


class Planted(gym.Env):
    """A toy task: the state is a random point in [-1, 1]^3 every step; the planted reward is
    r(o, a) = o_0 - 0.5 o_1^2 + o_2 a (nobody tells the ensemble)."""

    observation_space = gym.spaces.Box(-1, 1, (3,), np.float32)
    action_space = gym.spaces.Box(-1, 1, (1,), np.float32)

    @staticmethod
    def reward(o, a):
        return o[..., 0] - 0.5 * o[..., 1] ** 2 + o[..., 2] * a[..., 0]

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        self.o = self.np_random.uniform(-1, 1, 3).astype(np.float32)
        return self.o, {}

    def step(self, action):
        r = float(self.reward(self.o, np.asarray(action)))
        self.o = self.np_random.uniform(-1, 1, 3).astype(np.float32)
        return self.o, r, False, False, {}


def test_the_ensemble_learns_a_planted_reward():
    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    env = LearnedReward(Planted(), seed=0)
    labelled, feats, counts = labelled_random_clips(env, 3000, rng)
    model = RewardEnsemble(feats.shape[-1], members=3, hidden=32)
    stats = train_ensemble(model, feats, labelled, counts, 1e-3, epochs=40, batch_size=32, lr=3e-3,
                           random_share=0.1, generator=torch.Generator().manual_seed(0))
    o = rng.uniform(-1, 1, (2000, 3)).astype(np.float32)
    a = rng.uniform(-1, 1, (2000, 1)).astype(np.float32)
    corr = np.corrcoef(model.predict(features(env, o, a)), Planted.reward(o, a))[0, 1]
    assert corr > 0.9, corr
    assert stats.val_accuracy > 0.75 and stats.weight_decay > 0
    r = model.predict(feats.reshape(-1, feats.shape[-1]))
    assert abs(r.mean()) < 1e-4 and r.std() == pytest.approx(1.0, abs=0.1)  # normalised on the labelled steps


# ---------------------------------------------------------------- the loop: resume equals uninterrupted


def tiny(out: Path, **kw) -> ControlConfig:
    return ControlConfig(**{"out": out, "env": "Pendulum-v1", "total_steps": 768, "rounds": 3, "labels": 24,
                            "n_envs": 2, "n_steps": 128, "batch_size": 64, "n_epochs": 2, "rm_epochs": 3,
                            "eval_episodes": 1, "fragment_length": 10, "candidates": 3, **kw})


def _weights(out: Path) -> dict:
    from stable_baselines3 import PPO

    agent = PPO.load(out / "agent.zip", device="cpu")
    return {"agent": {k: v.clone() for k, v in agent.policy.state_dict().items()},
            "reward": torch.load(out / "reward" / "ensemble.pt", weights_only=True)}


def test_a_loop_stopped_mid_round_and_resumed_equals_an_uninterrupted_one(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    full = run_control(tiny(a))
    assert full["labels"] == 24 and full["env_steps"] == 768
    assert run_control(tiny(b, stop_at_round=2)) is None  # after round 2's labels, before its reward model
    assert (b / "checkpoint" / "state.json").exists()
    with pytest.raises(ConfigError, match="--resume"):
        run_control(tiny(b))
    run_control(tiny(b, resume=True))
    assert (a / "comparisons.jsonl").read_text() == (b / "comparisons.jsonl").read_text()  # same labels
    wa, wb = _weights(a), _weights(b)
    for part in ("agent", "reward"):
        assert wa[part].keys() == wb[part].keys()
        for k in wa[part]:
            assert torch.equal(wa[part][k], wb[part][k]), (part, k)
    rows = [[{k: v for k, v in json.loads(line).items() if not k.startswith("time")}
             for line in (d / "metrics.jsonl").read_text().splitlines()] for d in (a, b)]
    assert rows[0] == rows[1] and [r["step"] for r in rows[0]] == [0, 1, 2, 3]
    assert {"eval/true_return", "eval/learned_return", "eval/reward_correlation", "eval/accuracy",
            "train/labels"} <= rows[0][-1].keys()
    assert not (a / "checkpoint").exists() and (a / "clips.npz").exists()
    records = [Comparison.model_validate_json(line) for line in (a / "comparisons.jsonl").read_text().splitlines()]
    ids = set(Clips.load(a / "clips.npz").ids.tolist())
    assert len(records) == 24 and all(set(r.responses) <= ids and r.source == "simulated" for r in records)


def test_the_true_reward_baseline_needs_no_labels(tmp_path):
    s = run_control(tiny(tmp_path / "t", reward="true"))
    assert s["labels"] == 0 and s["env_steps"] == 768 and not (tmp_path / "t" / "comparisons.jsonl").exists()


def test_the_standard_error_of_a_mean_return():
    assert standard_error([1.0, 2.0, 3.0]) == pytest.approx(1.0 / math.sqrt(3))  # sample std 1
    assert standard_error([-4.0]) == 0.0


def test_more_evaluation_episodes_change_the_measurement_not_the_training(tmp_path):
    one = run_control(tiny(tmp_path / "one", reward="true"))
    three = run_control(tiny(tmp_path / "three", reward="true", eval_episodes=3))
    assert one["true_return_after_se"] == 0.0 and three["true_return_after_se"] > 0
    wa = PPO.load(tmp_path / "one" / "agent.zip", device="cpu").policy.state_dict()
    wb = PPO.load(tmp_path / "three" / "agent.zip", device="cpu").policy.state_dict()
    assert all(torch.equal(wa[k], wb[k]) for k in wa)  # the evaluation draws from no RNG the agent uses


# ---------------------------------------------------------------- bad input


@pytest.mark.parametrize("args, message", [
    (["--env", "NoSuchEnv-v0"], "error: --env NoSuchEnv-v0: not a Gymnasium environment"),
    (["--env", "Pendulum-v1", "--fragment-length", "201"],
     "error: --fragment-length 201: longer than an episode of Pendulum-v1 (200 steps)"),
])
def test_bad_input_gets_a_one_line_error(tmp_path, args, message):
    r = subprocess.run([sys.executable, "-m", "alignloop.cli", "control", "--out", str(tmp_path / "o"), *args],
                       capture_output=True, text=True, cwd=ROOT)
    assert r.returncode == 2
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(message), r.stderr


def test_the_control_recipe_plans_without_torch(tmp_path):
    code = "\n".join([
        "import sys",
        "from pathlib import Path",
        "from alignloop.recipe import load_recipe, plan",
        "recipe, path = load_recipe('control')",
        "step, report = plan(recipe, Path(sys.argv[1]), str(path))",
        "cfg = step.configs['control']",
        "assert cfg.baseline and cfg.labels == 700 and cfg.video_every == 4 and str(cfg.out).endswith('control'), cfg",
        "assert report.kind == 'report' and report.configs['report'].out.name == 'report.html'",
        "assert 'torch' not in sys.modules and 'gymnasium' not in sys.modules",
        "print('ok')"])
    r = subprocess.run([sys.executable, "-c", code, str(tmp_path / "run")], capture_output=True, text=True, cwd=ROOT)
    assert r.returncode == 0 and r.stdout.strip() == "ok", r.stderr
