"""Gymnasium environments for the control loop: making them (one-line errors), the clip length,
and the wrapper through which the agent acts.

`LearnedReward` is the one wrapper the agent's environments get. It
  1) seeds every episode from its own stream, so that an episode is replayed exactly by
     `reset(seed=episode_seed)` and its actions (what a clip needs to be rendered later);
  2) records each step (observation the action was taken in, action, true reward) while
     `recording` is on: the agent's recent rollouts, which clips are cut from;
  3) replaces the reward with the reward model's normalised prediction r(o, a) when it has a
     `reward_fn`; the true reward goes to `info["true_reward"]` only, for evaluation.
The agent (stable-baselines3) never sees the true reward: it only sees what `step` returns.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import gymnasium as gym
import numpy as np
import yaml

from alignloop.config import ConfigError

RewardFn = Callable[[np.ndarray, np.ndarray], np.ndarray]  # (N, obs) (N, act) features -> (N,) rewards


def env_kwargs(options: list[str]) -> dict[str, Any]:
    """`--env-options KEY=VALUE,...` (VALUE is YAML) as keyword arguments of `gym.make`."""
    out = {}
    for item in options:
        key, eq, value = item.partition("=")
        if not eq or not key.strip():
            raise ConfigError(f"--env-options {item}: expected KEY=VALUE")
        out[key.strip()] = yaml.safe_load(value)
    return out


def make_env(env_id: str, options: list[str] = (), render_mode: str | None = None) -> gym.Env:
    """`gym.make(env_id)` (with `render_mode`, e.g. "rgb_array" for videos), or a one-line
    ConfigError for an unknown id, a missing renderer or an unsupported space."""
    kwargs = env_kwargs(list(options)) | ({"render_mode": render_mode} if render_mode else {})
    try:
        env = gym.make(env_id, **kwargs)
    except gym.error.DependencyNotInstalled as err:
        raise ConfigError(f"--env {env_id}: {str(err).splitlines()[0]}") from None
    except gym.error.Error as err:  # NameNotFound, VersionNotFound, NamespaceNotFound, ...
        raise ConfigError(f"--env {env_id}: not a Gymnasium environment ({str(err).splitlines()[0]})") from None
    except TypeError as err:  # an env option the environment does not take
        raise ConfigError(f"--env-options: {err}") from None
    except (AttributeError, ImportError, RuntimeError) as err:  # mujoco's import of the MUJOCO_GL backend
        if opengl_error(err) is err:
            raise
        raise opengl_error(err) from None
    if not isinstance(env.observation_space, gym.spaces.Box):
        env.close()
        raise ConfigError(f"--env {env_id}: observations are {env.observation_space}; the reward model needs a Box "
                          "(state vectors, or uint8 images H x W x C)")
    if not isinstance(env.action_space, (gym.spaces.Box, gym.spaces.Discrete)):
        env.close()
        raise ConfigError(f"--env {env_id}: actions are {env.action_space}; supported: Box, Discrete")
    return env


OPENGL_PACKAGES = "libegl1 libegl-mesa0 libopengl0 libgl1-mesa-dri"  # Debian: MuJoCo's off-screen rendering by EGL


def opengl_error(err: Exception) -> Exception:
    """A ConfigError (one line) for an error of MuJoCo's OpenGL backend; other errors unchanged."""
    if "gl" not in str(err).lower():
        return err
    return ConfigError(f"MuJoCo found no usable OpenGL for MUJOCO_GL={os.environ.get('MUJOCO_GL', '')!r} "
                       f"({type(err).__name__}: {str(err).splitlines()[0][:120]}): rendering headless needs "
                       f"MUJOCO_GL=egl and the system libraries {OPENGL_PACKAGES} (or MUJOCO_GL=osmesa and libosmesa6)")


def image_shape(space: gym.Space) -> tuple[int, int, int] | None:
    """The shape of image observations (a uint8 Box of 3 dimensions: H x W x C as Gymnasium's
    pixel wrappers give them, or C x H x W), None for anything else (state vectors)."""
    if isinstance(space, gym.spaces.Box) and len(space.shape) == 3 and space.dtype == np.uint8:
        return tuple(int(n) for n in space.shape)
    return None


def episode_limit(env: gym.Env) -> int | None:
    """Steps after which an episode is truncated (the TimeLimit), None if it has none."""
    return env.spec.max_episode_steps if env.spec is not None else None


def clip_length(env: gym.Env, env_id: str, fragment_length: int | None, fragment_seconds: float) -> int:
    """Steps per clip: `fragment_length`, else `fragment_seconds` of simulated time at the env's
    time step (`dt`, or `tau` for classic control; 25 steps when it has neither), at most half an
    episode. An explicit length longer than an episode is a ConfigError."""
    limit = episode_limit(env)
    if fragment_length is not None:
        if limit is not None and fragment_length > limit:
            raise ConfigError(f"--fragment-length {fragment_length}: longer than an episode of {env_id} "
                              f"({limit} steps)")
        return fragment_length
    dt = getattr(env.unwrapped, "dt", None) or getattr(env.unwrapped, "tau", None)
    steps = max(2, round(fragment_seconds / dt)) if dt else 25
    return min(steps, limit // 2) if limit is not None and limit >= 4 else steps


def features(env: gym.Env, obs: np.ndarray, actions: np.ndarray) -> np.ndarray:
    """The reward model's input for each step: the flat observation and the flat (or one-hot) action, `(N, D)`."""
    obs = np.asarray(obs, dtype=np.float32).reshape(len(obs), -1)
    space = env.action_space
    if isinstance(space, gym.spaces.Discrete):
        acts = np.eye(int(space.n), dtype=np.float32)[np.asarray(actions, dtype=np.int64).reshape(-1)]
    else:
        acts = np.asarray(actions, dtype=np.float32).reshape(len(obs), -1)
    return np.concatenate([obs, acts], axis=1)


@dataclass
class Trajectory:
    """One episode (or the unfinished part of one) as the wrapper recorded it; T steps."""

    seed: int  # reset(seed=seed) then `actions` replays it
    obs: list = field(default_factory=list)  # T observations, each the one its action was taken in
    actions: list = field(default_factory=list)  # T actions
    true_rewards: list = field(default_factory=list)  # T true rewards

    def __len__(self) -> int:
        return len(self.actions)


class LearnedReward(gym.Wrapper):
    """Seeds each episode, records steps while `recording`, replaces the reward by `reward_fn`'s.

    `reward_fn` (features of one step -> its reward) is set and replaced by the loop after each
    reward-model update; None leaves the true reward (the baseline agent, the random policy's
    rollouts before any label).
    """

    def __init__(self, env: gym.Env, seed: int, reward_fn: RewardFn | None = None):
        super().__init__(env)
        self.reward_fn = reward_fn
        self.recording = False
        self.trajectories: list[Trajectory] = []  # finished while recording
        self._seeds = np.random.default_rng(seed)
        self._current: Trajectory | None = None
        self._obs: np.ndarray | None = None

    def reseed(self, seed: int) -> None:
        """Start a new stream of episode seeds (the next reset draws from it)."""
        self._seeds = np.random.default_rng(seed)

    def reset(self, *, seed: int | None = None, options: dict | None = None):
        if seed is None:
            seed = int(self._seeds.integers(2**31 - 1))
        obs, info = self.env.reset(seed=seed, options=options)
        self._keep_current()
        self._current = Trajectory(seed=seed)
        self._obs = obs
        info["episode_seed"] = seed
        return obs, info

    def step(self, action):
        obs, true_reward, terminated, truncated, info = self.env.step(action)
        info["true_reward"] = float(true_reward)
        reward = float(true_reward)
        if self.reward_fn is not None:
            reward = float(self.reward_fn(features(self.env, self._obs[None], np.asarray(action)[None]))[0])
        if self.recording and self._current is not None:
            self._current.obs.append(np.asarray(self._obs).copy())
            self._current.actions.append(np.asarray(action).copy())
            self._current.true_rewards.append(float(true_reward))
        self._obs = obs
        return obs, reward, terminated, truncated, info

    def _keep_current(self) -> None:
        if self.recording and self._current is not None and len(self._current):
            self.trajectories.append(self._current)
        self._current = None

    def take_trajectories(self) -> list[Trajectory]:
        """Stop recording; the recorded trajectories, the unfinished episode's steps last."""
        self._keep_current()
        self.recording = False
        out, self.trajectories = self.trajectories, []
        return out
