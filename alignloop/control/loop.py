"""The online loop of `alignloop control` (Christiano et al. 2017): an agent learns a Gymnasium
task from preferences between short clips of its own behaviour.

Before round 1, the initial (random) policy's rollouts give the first pool of clips, and its
true return is the "before" figure. Each round r = 1..R:
  1) choose n_r pairs of clips from the pool (random, or where the ensemble disagrees most) and
     label them (the synthetic labeller; comparison records appended to OUT/comparisons.jsonl);
     n_r follows the decaying label schedule (`label_schedule`). With `--feedback human | mixed`
     the people's pairs become a clips campaign (human.py) -> checkpoint (phase "asked"), and
     the run waits (`Paused`, exit status 3) until it is complete; the same command again goes
     on from that checkpoint                                         -> checkpoint (mid-round)
  2) retrain the reward ensemble on every label so far (reward_model.py)
  3) train the agent (stable-baselines3 PPO or SAC) for the round's env steps on the ensemble's
     normalised reward, through the `LearnedReward` wrapper, which records its rollouts;
  4) cut the next round's pool of clips from those rollouts;
  5) evaluate on fresh episodes (deterministic policy, the same seeds every round): true return,
     learned return, correlation of learned and true per-step reward; the ensemble's held-out
     accuracy; labels used -> one row of OUT/metrics.jsonl;
  6) every `video_every` rounds and after the last: an mp4 of the first evaluation episode
     (OUT/videos/round_NNN.mp4, video.py)                              -> checkpoint (round done)
Every phase reseeds python / numpy / torch from (seed, round, phase) and resets the environments
with seeds from the same, so a run resumed from either checkpoint makes the same labels and
the same weights as an uninterrupted one (a video takes no random draws; a resumed run deletes
the videos of rounds after its checkpoint and makes them again). `--reward true` is the
baseline: the same agent on the environment's own reward, same rounds and steps, no labels;
`--baseline` runs it after the loop into OUT/baseline and prints both true returns at the same
env steps.
"""

from __future__ import annotations

import json
import math
import random
import shutil
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from alignloop import metric_names as M
from alignloop.algorithms.fragment_losses import pearson
from alignloop.config import ConfigError, save_config
from alignloop.configs import ControlConfig
from alignloop.control import human
from alignloop.control.clips import Clips, cut_clips, empty_clips
from alignloop.control.envs import LearnedReward, clip_length, episode_limit, features, image_shape, make_env
from alignloop.control.labeller import SyntheticLabeller
from alignloop.control.queries import select_pairs
from alignloop.control.reward_model import Pairs, RewardEnsemble, train_ensemble
from alignloop.control.video import VIDEOS, fps, headless, make_render_env, policy_frames, video_path, write_mp4
from alignloop.data.io import append_lines, read_lines
from alignloop.progress import console, progress_bar
from alignloop.train.checkpoint import CHECKPOINT, has_checkpoint, refuse_to_overwrite
from alignloop.train.tracking import Tracker

# phases of a round, for the seeds derived from (seed, round, phase)
LABEL, REWARD, AGENT, POOL, COLLECT = 1, 2, 3, 4, 5
EVAL_SEED = 10_000  # evaluation episode k starts from reset(seed=EVAL_SEED + k), every round


def label_schedule(total: int, rounds: int, initial_share: float, decay: float) -> list[int]:
    """Labels asked in each round: round 1 gets round(total x initial_share) (clips of the initial
    policy), rounds 2..R the rest in proportion to 1 / (1 + decay x (r - 2)), rounded so the sum is
    `total` (largest remainders). One round gets everything."""
    if rounds == 1:
        return [total]
    first = round(total * initial_share)
    weights = np.array([1.0 / (1.0 + decay * k) for k in range(rounds - 1)])
    exact = (total - first) * weights / weights.sum()
    rest = np.floor(exact).astype(int)
    for i in np.argsort(-(exact - rest), kind="stable")[: total - first - rest.sum()]:
        rest[i] += 1
    return [first, *rest.tolist()]


def steps_per_round(cfg: ControlConfig) -> int:
    """Agent steps per round: total / rounds, for PPO rounded up to whole rollouts (n_steps x n_envs)."""
    per = math.ceil(cfg.total_steps / cfg.rounds)
    if cfg.algo == "ppo":
        rollout = cfg.n_steps * cfg.n_envs
        per = max(1, math.ceil(per / rollout)) * rollout
    return per


def _seed(cfg: ControlConfig, round_: int, phase: int) -> int:
    return (cfg.seed * 1_000_003 + round_ * 101 + phase) % (2**31 - 1)


def _reseed(cfg: ControlConfig, round_: int, phase: int) -> None:
    s = _seed(cfg, round_, phase)
    random.seed(s)
    np.random.seed(s)
    torch.manual_seed(s)


def _rng(cfg: ControlConfig, round_: int, phase: int) -> np.random.Generator:
    return np.random.default_rng([cfg.seed, round_, phase])


# ---------------------------------------------------------------- the agent


def _agent_class(cfg: ControlConfig):
    from stable_baselines3 import PPO, SAC

    return PPO if cfg.algo == "ppo" else SAC


def _policy(env) -> str:
    """stable-baselines3's policy: its CNN for images it can take (NatureCNN: 36 x 36 at least), else the MLP."""
    shape = image_shape(env.observation_space)
    return "CnnPolicy" if shape is not None and min(sorted(shape)[1:]) >= 36 else "MlpPolicy"


def make_agent(cfg: ControlConfig, env):
    """A fresh stable-baselines3 agent on the vectorised `env` (CPU, seeded)."""
    common = dict(learning_rate=cfg.agent_learning_rate, gamma=cfg.gamma, batch_size=cfg.batch_size,
                  use_sde=cfg.use_sde, seed=cfg.seed, device="cpu", verbose=0)
    if cfg.algo == "ppo":
        return _agent_class(cfg)(_policy(env), env, n_steps=cfg.n_steps, n_epochs=cfg.n_epochs,
                                 gae_lambda=cfg.gae_lambda, ent_coef=cfg.ent_coef,
                                 **({"sde_sample_freq": 4} if cfg.use_sde else {}), **common)
    return _agent_class(cfg)(_policy(env), env, learning_starts=cfg.learning_starts,
                             buffer_size=max(cfg.total_steps, 1), **common)


def make_vec_env(cfg: ControlConfig, reward_fn):
    from stable_baselines3.common.vec_env import DummyVecEnv

    def one(i: int):
        return lambda: LearnedReward(make_env(cfg.env, cfg.env_options), seed=cfg.seed * 1000 + i, reward_fn=reward_fn)

    return DummyVecEnv([one(i) for i in range(cfg.n_envs)])


def _wrappers(vec) -> list[LearnedReward]:
    return list(vec.envs)


def _start_phase(agent, vec, cfg: ControlConfig, round_: int, phase: int) -> None:
    """Reseed every generator and every environment for (round, phase); the next learn() resets."""
    s = _seed(cfg, round_, phase)
    _reseed(cfg, round_, phase)
    agent.action_space.seed(s)  # SAC's warm-up samples it
    vec.seed(s)  # the first reset of the phase (a fresh agent's own seeding would otherwise take it)
    for i, w in enumerate(_wrappers(vec)):
        w.reseed(s * 7 + i)
        w.recording = True
    agent._last_obs = None  # learn() then resets the environments (as after a load)


def _take(vec) -> list:
    return [t for w in _wrappers(vec) for t in w.take_trajectories()]


def collect(agent, vec, cfg: ControlConfig, steps: int) -> list:
    """Run the agent's stochastic policy for `steps` env steps (per env: steps / n_envs), recording."""
    obs = vec.reset()
    for _ in range(math.ceil(steps / vec.num_envs)):
        action, _ = agent.predict(obs, deterministic=False)
        obs, _, _, _ = vec.step(action)
    return _take(vec)


def relabel_replay_buffer(agent, ensemble: RewardEnsemble, env) -> None:
    """SAC: the stored rewards were the previous ensemble's; recompute them with the new one."""
    buf = agent.replay_buffer
    n = buf.buffer_size if buf.full else buf.pos
    if n == 0:
        return
    obs = buf.observations[:n].reshape(n * buf.n_envs, -1)
    acts = buf.actions[:n].reshape(n * buf.n_envs, -1)
    buf.rewards[:n] = ensemble.predict(features(env, obs, acts)).reshape(n, buf.n_envs)


def wants_video(cfg: ControlConfig, round_: int) -> bool:
    """Step 6: a video after rounds video_every, 2 x video_every, ... and after the last."""
    return cfg.video_every > 0 and (round_ % cfg.video_every == 0 or round_ == cfg.rounds)


def write_policy_video(cfg: ControlConfig, agent, out: Path, round_: int) -> Path:
    """OUT/videos/round_NNN.mp4: the deterministic policy's episode from the first evaluation seed."""
    env = make_render_env(cfg.env, cfg.env_options)
    try:
        frames, _ = policy_frames(env, agent, EVAL_SEED)
        return write_mp4(frames, video_path(out, round_), fps(env))
    finally:
        env.close()


def _drop_videos_from(out: Path, round_: int) -> None:
    """Delete the videos of rounds >= round_ (made after the checkpoint a run resumes from) and
    any half-written one."""
    for path in sorted((out / VIDEOS).glob("*round_*.mp4")):
        if path.name.startswith(".") or int(path.stem.split("_")[1]) >= round_:
            path.unlink()


# ---------------------------------------------------------------- state and checkpoints


@dataclass
class LoopState:
    """Everything the loop carries from one phase to the next (besides the agent and the ensemble)."""

    round: int = 1  # the round to run next
    phase: str = "start"  # start | labelled (round `round` has its labels, not yet its reward model)
    labels_used: int = 0
    weight_decay: float = 0.0
    env_steps: int = 0  # agent training steps so far
    collect_steps: int = 0  # steps of the initial policy run for the first pool
    fragment_length: int = 0
    before: float | None = None  # true return of the initial policy
    seconds: float = 0.0
    pool: Clips = field(default_factory=empty_clips)  # candidates for the next labels
    clips: Clips = field(default_factory=empty_clips)  # every labelled clip
    pairs: dict = field(default_factory=lambda: {"a": [], "b": [], "p": [], "heldout": []})
    asked: dict | None = None  # phase "asked": the round's human.Plan, waiting for its campaign
    records: int = 0  # lines of OUT/comparisons.jsonl (people's rounds may write other than one per label)
    synthetic_answers: int = 0  # lines of OUT/synthetic_answers.jsonl
    human_labels: int = 0
    campaigns: list = field(default_factory=list)  # the people's campaigns, one per round asked

    def pair_arrays(self) -> Pairs:
        return Pairs(a=np.asarray(self.pairs["a"], dtype=np.int64), b=np.asarray(self.pairs["b"], dtype=np.int64),
                     p=np.asarray(self.pairs["p"], dtype=np.float32), heldout=np.asarray(self.pairs["heldout"], dtype=bool))


_SCALARS = ("round", "phase", "labels_used", "weight_decay", "env_steps", "collect_steps", "fragment_length", "before",
            "seconds", "pairs", "asked", "records", "synthetic_answers", "human_labels", "campaigns")


def save_checkpoint(out: Path, state: LoopState, agent, ensemble: RewardEnsemble | None, algo: str) -> None:
    """OUT/checkpoint, written to a temporary folder and renamed into place."""
    final, tmp, old = out / CHECKPOINT, out / f".{CHECKPOINT}.tmp", out / f".{CHECKPOINT}.old"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    agent.save(tmp / "agent.zip")
    if algo == "sac":
        agent.save_replay_buffer(tmp / "replay_buffer.pkl")
    if ensemble is not None:
        torch.save(ensemble.state_dict(), tmp / "reward.pt")
    state.pool.save(tmp / "pool.npz")
    state.clips.save(tmp / "clips.npz")
    (tmp / "state.json").write_text(json.dumps({k: getattr(state, k) for k in _SCALARS}, indent=1))
    shutil.rmtree(old, ignore_errors=True)
    if final.exists():
        final.replace(old)
    tmp.replace(final)
    shutil.rmtree(old, ignore_errors=True)


def load_checkpoint(out: Path, cfg: ControlConfig, vec, ensemble: RewardEnsemble | None):
    folder = out / CHECKPOINT
    saved = json.loads((folder / "state.json").read_text())
    if saved.get("records") is None:  # a checkpoint from before people: one record per label
        saved["records"] = saved["labels_used"]
    state = LoopState(**saved, pool=Clips.load(folder / "pool.npz"), clips=Clips.load(folder / "clips.npz"))
    agent = _agent_class(cfg).load(folder / "agent.zip", env=vec, device="cpu")
    if cfg.algo == "sac":
        agent.load_replay_buffer(folder / "replay_buffer.pkl")
    if ensemble is not None:
        ensemble.load_state_dict(torch.load(folder / "reward.pt", weights_only=True))
    return state, agent


def _truncate_lines(path: Path, keep: int) -> None:
    if path.exists():
        lines = path.read_text(encoding="utf-8").splitlines(keepends=True)[:keep]
        path.write_text("".join(lines), encoding="utf-8")


# ---------------------------------------------------------------- the phases


def choose_pairs(cfg: ControlConfig, state: LoopState, ensemble: RewardEnsemble | None, env, count: int,
                 rng: np.random.Generator) -> np.ndarray | None:
    """Step 1: `(count, 2)` pool pairs to ask about, most disagreed first (None: nothing to ask)."""
    pool = state.pool
    if count == 0 or len(pool) < 2:
        return None
    member_returns = None
    if cfg.queries == "disagreement" and state.labels_used > 0:  # an untrained ensemble's spread means nothing
        member_returns = ensemble.member_returns(_clip_features(env, pool))
    return select_pairs(cfg.queries, member_returns, len(pool), count, cfg.candidates, rng)


def keep_labels(state: LoopState, labels: list[tuple[int, int, float, bool]]) -> None:
    """Labelled pool pairs (a, b, p, heldout) into the state: their clips (each once) and pairs."""
    pool = state.pool
    used = np.unique(np.asarray([(a, b) for a, b, _, _ in labels], dtype=np.int64).reshape(-1, 2))
    offset = len(state.clips)
    where = {int(c): offset + k for k, c in enumerate(used)}
    state.clips = Clips.concat([state.clips, pool.take(used)])
    for a, b, p, heldout in labels:
        for key, value in (("a", where[int(a)]), ("b", where[int(b)]), ("p", p), ("heldout", heldout)):
            state.pairs[key].append(value)
    state.labels_used += len(labels)


def label_round(cfg: ControlConfig, state: LoopState, ensemble: RewardEnsemble | None, env, count: int,
                labeller: SyntheticLabeller, out: Path, round_: int) -> None:
    """Step 1: choose `count` pairs of the pool, label them, keep their clips and append the records."""
    rng = _rng(cfg, round_, LABEL)
    chosen = choose_pairs(cfg, state, ensemble, env, count, rng)
    if chosen is None:
        return
    pool, returns = state.pool, state.pool.true_returns
    records, labels = [], []
    for i, j in chosen:
        heldout = bool(rng.random() < cfg.heldout_fraction)
        rec = labeller.label(cfg.env, str(pool.ids[i]), str(pool.ids[j]), returns[i], returns[j], rng,
                             meta={"round": round_, "heldout": heldout})
        labels.append((int(i), int(j), 0.5 if len(rec.ranking) == 1 else float(rec.ranking[0] == 0), heldout))
        records.append(rec.model_dump(mode="json", exclude_none=True))
    keep_labels(state, labels)
    state.records += append_lines(out / "comparisons.jsonl", records)


def ask_round(cfg: ControlConfig, state: LoopState, ensemble: RewardEnsemble | None, env, count: int,
              labeller: SyntheticLabeller, round_: int) -> bool:
    """Step 1 with people (human.py): plan the round's pairs and, if people get any, create their
    campaign; True when there is a campaign to wait for (the plan is in `state.asked`)."""
    rng = _rng(cfg, round_, LABEL)
    chosen = choose_pairs(cfg, state, ensemble, env, count, rng)
    if chosen is None:
        return False
    plan = human.plan_queries(cfg, state.pool, chosen, labeller, rng, round_)
    if any(plan.human):
        plan.campaign = human.ask_people(cfg, state.pool, plan, round_)
        state.campaigns.append(plan.campaign)
    state.asked = plan.to_json()
    return plan.campaign is not None


def collect_round(cfg: ControlConfig, state: LoopState, out: Path, round_: int) -> None:
    """Step 1 with people, once their campaign is complete (else `Paused`): the round's labels
    (people's vote shares, synthetic ones for the rest) into the state, their records appended."""
    plan = human.Plan(**state.asked)
    answers = human.collect_answers(cfg, plan.campaign) if plan.campaign else []
    got = human.labels_of(cfg, plan, answers, round_)
    if got.pairs:
        keep_labels(state, got.pairs)
    state.records += append_lines(out / "comparisons.jsonl", got.records)
    state.synthetic_answers += append_lines(out / human.SYNTHETIC_ANSWERS, got.synthetic_on_human)
    state.human_labels += got.human_labels
    state.asked = None


def _clip_features(env, clips: Clips) -> np.ndarray:
    n, t = clips.obs.shape[:2]
    return features(env, clips.obs.reshape(n * t, -1), clips.actions.reshape(n * t, -1)).reshape(n, t, -1)


def fit_reward(cfg: ControlConfig, state: LoopState, ensemble: RewardEnsemble, env, round_: int):
    """Step 2: retrain the ensemble on every label so far, each member on a fresh bootstrap resample."""
    _reseed(cfg, round_, REWARD)
    pairs = state.pair_arrays()
    n_train = int((~pairs.heldout).sum())
    if n_train == 0:
        return None
    rng = _rng(cfg, round_, REWARD)
    counts = np.stack([np.bincount(rng.integers(0, n_train, size=n_train), minlength=n_train)
                       for _ in range(cfg.ensemble)])
    gen = torch.Generator().manual_seed(_seed(cfg, round_, REWARD))
    stats = train_ensemble(ensemble, _clip_features(env, state.clips), pairs, counts, state.weight_decay,
                           cfg.rm_epochs, cfg.rm_batch_size, cfg.rm_learning_rate, cfg.assumed_random_share, gen)
    state.weight_decay = stats.weight_decay
    return stats


def standard_error(xs: list[float]) -> float:
    """Standard error of the mean of n values: sample std (n - 1) / sqrt(n); 0 for n = 1."""
    return float(np.std(xs, ddof=1) / math.sqrt(len(xs))) if len(xs) > 1 else 0.0


def evaluate(cfg: ControlConfig, agent, ensemble: RewardEnsemble | None, env) -> dict:
    """Step 5: deterministic episodes from fixed seeds: true return, learned return, per-step correlation."""
    true_returns, learned_returns, true_all, learned_all = [], [], [], []
    for k in range(cfg.eval_episodes):
        obs, _ = env.reset(seed=EVAL_SEED + k)
        o, a, r, done = [], [], [], False
        while not done:
            action, _ = agent.predict(obs, deterministic=True)
            o.append(obs)
            a.append(action)
            obs, reward, terminated, truncated, _ = env.step(action)
            r.append(float(reward))
            done = terminated or truncated
        true_returns.append(sum(r))
        true_all += r
        if ensemble is not None:
            learned = ensemble.predict(features(env, np.stack(o), np.stack(a)))
            learned_returns.append(float(learned.sum()))
            learned_all.append(learned)
    row = {M.TRUE_RETURN: float(np.mean(true_returns)), M.TRUE_RETURN_SE: standard_error(true_returns)}
    if ensemble is not None:
        row[M.LEARNED_RETURN] = float(np.mean(learned_returns))
        row[M.REWARD_CORRELATION] = float(pearson(torch.as_tensor(np.concatenate(learned_all), dtype=torch.float64),
                                                  torch.as_tensor(true_all, dtype=torch.float64)))
    return row


# ---------------------------------------------------------------- the loop


def run_loop(cfg: ControlConfig) -> dict | None:
    """The rounds of the module docstring into cfg.out; the result (None when stopped early)."""
    out = Path(cfg.out)
    if human.waits_for_people(cfg):  # the same command again: go on where the run waits for its campaign
        cfg = cfg.model_copy(update={"resume": True})
    refuse_to_overwrite(out, cfg.resume)
    torch.set_num_threads(cfg.threads)
    learned = cfg.reward == "learned"
    if cfg.video_every or cfg.feedback != "synthetic":
        headless()  # before the first environment: mujoco picks its OpenGL backend when it is imported
    probe = make_env(cfg.env, cfg.env_options)
    length = clip_length(probe, cfg.env, cfg.fragment_length, cfg.fragment_seconds)
    dim = features(probe, np.zeros((1, *probe.observation_space.shape)),
                   np.asarray([probe.action_space.sample()])).shape[1]
    schedule = label_schedule(cfg.labels, cfg.rounds, cfg.initial_label_share, cfg.label_decay) if learned else []
    per_round = steps_per_round(cfg)
    labeller = SyntheticLabeller(cfg.labeller_noise, cfg.labeller_temperature, cfg.equal_tolerance)

    torch.manual_seed(cfg.seed)
    image = image_shape(probe.observation_space)  # a CNN reward model for image observations
    ensemble = RewardEnsemble(dim, cfg.ensemble, cfg.hidden, image) if learned else None
    vec = make_vec_env(cfg, ensemble.predict if learned else None)
    out.mkdir(parents=True, exist_ok=True)
    tracker = Tracker(out, tensorboard=False)
    if cfg.resume and has_checkpoint(out):
        state, agent = load_checkpoint(out, cfg, vec, ensemble)
        tracker.resume_from(state.round - 1)
        _truncate_lines(out / "comparisons.jsonl", state.records)
        _truncate_lines(out / human.SYNTHETIC_ANSWERS, state.synthetic_answers)
        _drop_videos_from(out, state.round)
        console.print(f"resuming {out} at round {state.round}/{cfg.rounds} ({state.phase})")
    else:
        for stale in ("metrics.jsonl", "comparisons.jsonl", human.SYNTHETIC_ANSWERS, "result.json", "summary.json"):
            (out / stale).unlink(missing_ok=True)
        shutil.rmtree(out / VIDEOS, ignore_errors=True)
        state = LoopState(weight_decay=cfg.weight_decay, fragment_length=length)
        _reseed(cfg, 0, COLLECT)
        agent = make_agent(cfg, vec)
        state.before = evaluate(cfg, agent, None, probe)[M.TRUE_RETURN]
        tracker.log(0, {M.TRUE_RETURN: state.before, M.ENV_STEPS: 0, M.LABELS: 0})
        if learned and schedule[0] > 0:  # the first pool: the initial policy's rollouts
            _start_phase(agent, vec, cfg, 0, COLLECT)
            steps = min(per_round, 20 * (episode_limit(probe) or 50 * length))
            state.pool = _cut(cfg, collect(agent, vec, cfg, steps), length, schedule[0], 1)
            state.collect_steps = steps
    save_config(cfg, out / "config.yaml")

    t0 = time.time() - state.seconds
    with progress_bar(f"control {cfg.env} ({cfg.reward} reward)", cfg.rounds) as advance:
        advance(state.round - 1)
        for r in range(state.round, cfg.rounds + 1):
            state.round = r
            # 1) labels (mid-round checkpoint): the synthetic labeller's, or people's (human.py): their
            #    campaign (checkpoint, phase "asked"), waited for (Paused: exit status 3), their answers
            if learned and state.phase in ("start", "asked"):
                if state.phase == "start" and cfg.feedback == "synthetic":
                    label_round(cfg, state, ensemble, probe, schedule[r - 1], labeller, out, r)
                elif state.phase == "start" and ask_round(cfg, state, ensemble, probe, schedule[r - 1], labeller, r):
                    state.phase = "asked"
                    state.seconds = time.time() - t0
                    save_checkpoint(out, state, agent, ensemble, cfg.algo)
                if state.asked is not None:  # (a plan without people's pairs is labelled at once)
                    if cfg.feedback == "synthetic":
                        raise ConfigError(f"{out} waits for people's labels (campaign {state.asked['campaign']!r}): "
                                          "run it with the --feedback it was started with")
                    collect_round(cfg, state, out, r)  # Paused until the campaign is complete
                state.phase = "labelled"
                state.seconds = time.time() - t0
                save_checkpoint(out, state, agent, ensemble, cfg.algo)
                if cfg.stop_at_round == r:
                    console.print(f"stopped in round {r} after its labels ({state.labels_used} so far); "
                                  "--resume continues")
                    return None
            # 2) the reward ensemble
            stats = fit_reward(cfg, state, ensemble, probe, r) if learned and schedule[r - 1] > 0 else None
            if stats is not None and cfg.algo == "sac":
                relabel_replay_buffer(agent, ensemble, probe)
            # 3) the agent on the learned (or true) reward, its rollouts recorded
            _start_phase(agent, vec, cfg, r, AGENT)
            with warnings.catch_warnings():
                # sb3 2.9 warns (UserWarning) that a recurring learn() call with a fresh reset is unusual; it is intended
                warnings.simplefilter("ignore", UserWarning)
                agent.learn(per_round, reset_num_timesteps=False)
            state.env_steps += per_round
            trajectories = _take(vec)
            # 4) the next pool
            if learned and r < cfg.rounds and schedule[r] > 0:
                state.pool = _cut(cfg, trajectories, length, schedule[r], r + 1)
            # 5) evaluation: one row of metrics.jsonl
            row = {**evaluate(cfg, agent, ensemble, probe), M.ENV_STEPS: state.env_steps, M.LABELS: state.labels_used}
            if stats is not None:
                row.update({M.TRAIN_LOSS: stats.train_loss, M.EVAL_LOSS: stats.val_loss,
                            M.EVAL_ACCURACY: stats.val_accuracy, M.WEIGHT_DECAY: stats.weight_decay})
            if learned and cfg.feedback != "synthetic":
                agree = human.feedback_agreement(out)
                row.update({M.HUMAN_LABELS: state.human_labels,
                            M.HUMAN_SYNTHETIC_AGREEMENT: agree["synthetic"]["alignment"],
                            M.HUMAN_TRUE_AGREEMENT: agree["true_order"]["alignment"]})
            state.seconds = time.time() - t0
            row[M.ELAPSED_S] = round(state.seconds, 2)
            tracker.log(r, row)
            # 6) the policy's video
            if wants_video(cfg, r):
                write_policy_video(cfg, agent, out, r)
            state.round, state.phase = r + 1, "start"
            save_checkpoint(out, state, agent, ensemble, cfg.algo)
            advance(1, true_return=row[M.TRUE_RETURN], labels=state.labels_used)

    # the finished run: agent, reward ensemble, labelled clips, result
    agent.save(out / "agent.zip")
    if learned:
        (out / "reward").mkdir(exist_ok=True)
        torch.save(ensemble.state_dict(), out / "reward" / "ensemble.pt")
        (out / "reward" / "ensemble.json").write_text(json.dumps({"dim": dim, "members": cfg.ensemble,
                                                                   "hidden": cfg.hidden, "image": image}))
        state.clips.save(out / "clips.npz")
    rows = read_lines(out / "metrics.jsonl")
    result = {"env": cfg.env, "reward": cfg.reward, "algo": cfg.algo, "seed": cfg.seed, "fragment_length": length,
              "rounds": cfg.rounds, "env_steps": state.env_steps, "collect_steps": state.collect_steps,
              "labels": state.labels_used, "true_return_before": state.before,
              "true_return_after": rows[-1][M.TRUE_RETURN], "true_return_after_se": rows[-1].get(M.TRUE_RETURN_SE),
              "seconds": round(state.seconds, 1),
              "curve": [{"env_steps": m[M.ENV_STEPS], "labels": m[M.LABELS], "true_return": m[M.TRUE_RETURN]}
                        for m in rows],
              "videos": [str(p.relative_to(out)) for p in sorted((out / VIDEOS).glob("round_*.mp4"))]}
    if learned and cfg.feedback != "synthetic":
        report = human.write_quality_report(out)
        result["feedback"] = {"mode": cfg.feedback, "db": human.feedback_db(cfg), "campaigns": state.campaigns,
                              "human_labels": state.human_labels, "synthetic_labels": state.labels_used - state.human_labels,
                              "agreement": human.feedback_agreement(out), "quality_report": str(report)}
    (out / "result.json").write_text(json.dumps(result, indent=1))
    if not cfg.keep_checkpoint:
        shutil.rmtree(out / CHECKPOINT, ignore_errors=True)
    vec.close()
    return result


def _cut(cfg: ControlConfig, trajectories: list, length: int, count: int, round_: int) -> Clips:
    """A pool for `count` labels: 2 clips per candidate pair (`candidates` pairs per label when
    choosing by disagreement), at least 2 clips."""
    size = max(2, 2 * count * (cfg.candidates if cfg.queries == "disagreement" else 1))
    try:
        return cut_clips(trajectories, length, size, _rng(cfg, round_, POOL), round_)
    except ValueError as err:
        raise ConfigError(f"--env {cfg.env}: {err}") from None


def run_control(cfg: ControlConfig) -> dict | None:
    """`alignloop control`: the loop, then (with --baseline) the same agent on the true reward into
    OUT/baseline; prints the true return before / after and the baseline's at the same env steps.
    The loop's checkpoint is kept until the baseline has finished, so --resume continues either."""
    out = Path(cfg.out)
    with_baseline = cfg.baseline and cfg.reward == "learned"
    if with_baseline and not (cfg.resume and has_checkpoint(out)):
        shutil.rmtree(out / "baseline", ignore_errors=True)  # a fresh loop, a fresh baseline
    result = run_loop(cfg.model_copy(update={"keep_checkpoint": True}) if with_baseline else cfg)
    if result is None:
        return None
    summary = {**result}
    if with_baseline:
        summary["baseline"] = run_loop(cfg.model_copy(update={"reward": "true", "baseline": False,
                                                              "out": out / "baseline", "stop_at_round": None}))
        if not cfg.keep_checkpoint:
            shutil.rmtree(out / CHECKPOINT, ignore_errors=True)
    (out / "summary.json").write_text(json.dumps(summary, indent=1))
    print_summary(summary)
    return summary


def print_summary(s: dict) -> None:
    what = f"{s['labels']} labels" if s["reward"] == "learned" else "true reward"
    fb = s.get("feedback")
    if fb:
        what += f" ({fb['human_labels']} from people, {fb['synthetic_labels']} synthetic)"
    console.print(f"{s['env']}: true return before {s['true_return_before']:.1f} -> after {s['true_return_after']:.1f} "
                  f"({s['algo'].upper()} on the {s['reward']} reward, {what}, {s['env_steps']:,} env steps, "
                  f"{s['seconds']:.0f} s)", highlight=False, soft_wrap=True)
    if fb:
        human.print_feedback(fb)
    base = s.get("baseline")
    if base:
        console.print(f"{base['algo'].upper()} on the true reward at the same {base['env_steps']:,} env steps: "
                      f"{base['true_return_after']:.1f} ({base['seconds']:.0f} s)", highlight=False, soft_wrap=True)
        console.print("env steps | labels | true return, learned reward | true return, true reward", highlight=False)
        for a, b in zip(s["curve"], base["curve"]):
            console.print(f"{a['env_steps']:>9,} | {a['labels']:>6} | {a['true_return']:>27.1f} | "
                          f"{b['true_return']:>25.1f}", highlight=False)
