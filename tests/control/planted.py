"""Labelled clips of random behaviour in a planted-reward environment: the data of the tests that
check the reward ensemble recovers a reward it was never shown."""

from __future__ import annotations

import numpy as np

from alignloop.control.clips import cut_clips
from alignloop.control.envs import LearnedReward, features
from alignloop.control.labeller import SyntheticLabeller
from alignloop.control.reward_model import Pairs


def labelled_random_clips(env: LearnedReward, steps: int, rng: np.random.Generator, n_clips: int = 600,
                          length: int = 10) -> tuple[Pairs, np.ndarray, np.ndarray]:
    """`steps` seeded random actions in `env`, cut into `n_clips` clips of `length` steps, paired
    off (clip 2k against 2k+1) and labelled by the synthetic labeller (10% random answers), a
    fifth of the pairs held out. Returns (pairs, features (n_clips, length, F), bootstrap counts
    (3, training pairs): one resample per ensemble member)."""
    env.action_space.seed(0)  # the random actions too: the same clips every run
    env.recording = True
    env.reset()
    for _ in range(steps):
        env.step(env.action_space.sample())
    clips = cut_clips(env.take_trajectories(), length, n_clips, rng, round_=1)
    labeller = SyntheticLabeller(noise=0.1)
    pairs = np.arange(n_clips).reshape(-1, 2)
    p = np.array([labeller.answer(clips.true_returns[i], clips.true_returns[j], rng)[0] for i, j in pairs])
    labelled = Pairs(a=pairs[:, 0], b=pairs[:, 1], p=p.astype(np.float32), heldout=rng.random(len(pairs)) < 0.2)
    d = clips.obs.shape[-1]
    feats = features(env, clips.obs.reshape(-1, d), clips.actions.reshape(-1, 1)).reshape(n_clips, length, -1)
    n_train = int((~labelled.heldout).sum())
    counts = np.stack([np.bincount(rng.integers(0, n_train, n_train), minlength=n_train) for _ in range(3)])
    return labelled, feats, counts
