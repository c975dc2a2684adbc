"""One run of `imitation` 1.0.1's PreferenceComparisons, for benchmarks/control_pbrl.py.

Runs INSIDE the separate virtual environment the benchmark makes (imitation installed there,
never in .venv): same gymnasium environment id and version, stable-baselines3 PPO with the
hyperparameters given as JSON, the same env steps, label budget, fragment length and rounds,
imitation's documented defaults otherwise (RandomFragmenter, SyntheticGatherer, a BasicRewardNet
with a RunningNorm input layer, hyperbolic query schedule). imitation trains the agent once
after its initial comparisons and once per iteration, so it gets rounds - 1 iterations: the
same number of agent trainings, of the same steps each, as alignloop's rounds. Afterwards the policy's true return
over the same evaluation episodes as alignloop's (deterministic actions, reset seeds 10000 + k).
Prints one JSON line: true return, wall seconds, peak RSS.

    python control_pbrl_imitation.py '{"env": "Reacher-v5", "steps": 50000, "labels": 700, ...}'
"""

from __future__ import annotations

import json
import resource
import sys
import time

import numpy as np
import torch


def main(spec: dict) -> dict:
    import gymnasium as gym
    from imitation.algorithms import preference_comparisons as pc
    from imitation.data.wrappers import RolloutInfoWrapper
    from imitation.rewards.reward_nets import BasicRewardNet
    from imitation.util.networks import RunningNorm
    from imitation.util.util import make_vec_env
    from stable_baselines3 import PPO

    torch.set_num_threads(1)
    t0 = time.time()
    rng = np.random.default_rng(spec["seed"])
    agent_kw = spec["agent"]
    venv = make_vec_env(spec["env"], rng=rng, n_envs=agent_kw.pop("n_envs"),
                        post_wrappers=[lambda env, _: RolloutInfoWrapper(env)])  # imitation needs whole episodes
    reward_net = BasicRewardNet(venv.observation_space, venv.action_space, normalize_input_layer=RunningNorm)
    agent = PPO("MlpPolicy", venv, seed=spec["seed"], device="cpu", verbose=0, **agent_kw)
    trainer = pc.AgentTrainer(algorithm=agent, reward_fn=reward_net, venv=venv, rng=rng)
    model = pc.PreferenceComparisons(
        trainer, reward_net, num_iterations=spec["rounds"] - 1,  # + its initial round = `rounds` agent trainings
        fragmenter=pc.RandomFragmenter(warning_threshold=0, rng=rng),
        preference_gatherer=pc.SyntheticGatherer(rng=rng),
        reward_trainer=pc.BasicRewardTrainer(preference_model=pc.PreferenceModel(reward_net),
                                             loss=pc.CrossEntropyRewardLoss(), epochs=3, rng=rng),
        fragment_length=spec["fragment_length"], transition_oversampling=1,
        initial_comparison_frac=spec["initial_share"], query_schedule="hyperbolic")
    # imitation trains the agent after the initial comparisons too: num_iterations + 1 times, each
    # total_timesteps // num_iterations steps; so `rounds` trainings of steps / rounds each, as alignloop's
    rounds = spec["rounds"]
    model.train(total_timesteps=spec["steps"] * (rounds - 1) // rounds, total_comparisons=spec["labels"])
    env = gym.make(spec["env"])
    returns = []
    for k in range(spec["eval_episodes"]):
        obs, _ = env.reset(seed=10_000 + k)
        done, total = False, 0.0
        while not done:
            action, _ = agent.predict(obs, deterministic=True)
            obs, r, terminated, truncated, _ = env.step(action)
            total += float(r)
            done = terminated or truncated
        returns.append(total)
    # alignloop.control.loop.standard_error, written again: this runs in .venv-imitation, where alignloop is not installed
    se = float(np.std(returns, ddof=1) / np.sqrt(len(returns))) if len(returns) > 1 else 0.0
    return {"true_return": float(np.mean(returns)), "true_return_se": se, "seconds": round(time.time() - t0, 1),
            "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
            "env_steps": int(agent.num_timesteps)}


if __name__ == "__main__":
    print(json.dumps(main(json.loads(sys.argv[1]))))
