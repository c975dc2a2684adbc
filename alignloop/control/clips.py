"""Clips: fragments of T consecutive steps cut from recorded trajectories, and where they are kept.

A `Clips` batch holds N clips as arrays (observations, actions, true rewards: `(N, T, ...)`)
plus, for each, what renders it again as video: its episode's seed, the step it starts at and
the episode's actions up to its end (`replay_actions`): `env.reset(seed=seed)`, then those
actions, the clip being the last T of them. Saved as one `.npz` (`save` / `load`), ids
`c{round}-{n}`: the comparison records name clips by these ids (`responses`).
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from pathlib import Path

import numpy as np

from alignloop.control.envs import Trajectory


@dataclass
class Clips:
    """N clips of T steps (D: the flat observation size, A: the action's)."""

    ids: np.ndarray  # (N,) str, "c{round}-{n}"
    obs: np.ndarray  # (N, T, D) float32, the observation each action was taken in
    actions: np.ndarray  # (N, T, A) float32 (Discrete: (N, T, 1) indices)
    true_rewards: np.ndarray  # (N, T) float64
    seed: np.ndarray  # (N,) int64, the episode's reset seed
    start: np.ndarray  # (N,) int64, the step of the episode the clip starts at
    replay_actions: np.ndarray  # (N,) object: each (start + T, A) actions from the episode's reset

    def __len__(self) -> int:
        return len(self.ids)

    @property
    def true_returns(self) -> np.ndarray:
        return self.true_rewards.sum(axis=1)

    def take(self, index: np.ndarray) -> "Clips":
        return Clips(**{f.name: getattr(self, f.name)[index] for f in fields(self)})

    def index_of(self) -> dict[str, int]:
        return {str(c): i for i, c in enumerate(self.ids)}

    @staticmethod
    def concat(parts: list["Clips"]) -> "Clips":
        parts = [p for p in parts if p is not None and len(p)]
        if not parts:
            return empty_clips()
        out = {f.name: np.concatenate([getattr(p, f.name) for p in parts]) for f in fields(Clips)}
        return Clips(**out)

    def save(self, path: Path) -> None:
        arrays = {f.name: getattr(self, f.name) for f in fields(self) if f.name != "replay_actions"}
        arrays["replay_lengths"] = np.array([len(a) for a in self.replay_actions], dtype=np.int64)
        flat = [np.asarray(a, dtype=np.float32).reshape(len(a), -1) for a in self.replay_actions]
        arrays["replay_flat"] = np.concatenate(flat) if flat else np.zeros((0, 1), np.float32)
        tmp = Path(path).with_name(Path(path).name + ".tmp.npz")
        np.savez(tmp, **{k: (v.astype(str) if k == "ids" else v) for k, v in arrays.items()})
        tmp.replace(path)

    @staticmethod
    def load(path: Path) -> "Clips":
        with np.load(path) as z:
            data = {k: z[k] for k in z.files}
        lengths = data.pop("replay_lengths")
        flat = data.pop("replay_flat")
        bounds = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
        replay = np.empty(len(lengths), dtype=object)
        for i in range(len(lengths)):
            replay[i] = flat[bounds[i]:bounds[i + 1]]
        return Clips(replay_actions=replay, **data)


def empty_clips() -> Clips:
    z = np.zeros(0)
    return Clips(ids=np.zeros(0, dtype=str), obs=z.reshape(0, 0, 0).astype(np.float32),
                 actions=z.reshape(0, 0, 0).astype(np.float32), true_rewards=z.reshape(0, 0),
                 seed=z.astype(np.int64), start=z.astype(np.int64), replay_actions=np.empty(0, dtype=object))


def cut_clips(trajectories: list[Trajectory], length: int, count: int, rng: np.random.Generator,
              round_: int, first: int = 0) -> Clips:
    """`count` clips of `length` steps, each from a uniformly random step of the recorded steps
    (an episode with more steps gives more clips), ids c{round}-{first}, c{round}-{first + 1}, ...

    Raises ValueError when no trajectory has `length` steps (episodes that end early).
    """
    usable = [t for t in trajectories if len(t) >= length]
    if not usable:
        longest = max((len(t) for t in trajectories), default=0)
        raise ValueError(f"no recorded episode has {length} steps (the longest has {longest}): "
                         f"choose a shorter --fragment-length")
    starts_per = np.array([len(t) - length + 1 for t in usable])
    which = rng.choice(len(usable), size=count, p=starts_per / starts_per.sum())
    starts = rng.integers(0, starts_per[which])
    obs, acts, rews, replay = [], [], [], np.empty(count, dtype=object)
    for k, (i, s) in enumerate(zip(which, starts)):
        t = usable[i]
        obs.append(np.stack(t.obs[s:s + length]).reshape(length, -1))
        acts.append(np.asarray(t.actions[s:s + length], dtype=np.float32).reshape(length, -1))
        rews.append(np.asarray(t.true_rewards[s:s + length], dtype=np.float64))
        replay[k] = np.asarray(t.actions[:s + length], dtype=np.float32).reshape(s + length, -1)
    return Clips(ids=np.array([f"c{round_}-{first + k}" for k in range(count)]),
                 obs=np.stack(obs).astype(np.float32), actions=np.stack(acts), true_rewards=np.stack(rews),
                 seed=np.array([usable[i].seed for i in which], dtype=np.int64),
                 start=starts.astype(np.int64), replay_actions=replay)
