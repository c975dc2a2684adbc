"""Control tasks from preferences between clips (Christiano et al. 2017): `alignloop control`.

- `envs`: making Gymnasium environments (one-line errors), the clip length, and `LearnedReward`,
  the wrapper that records the agent's rollouts and gives it the learned reward instead of the true one.
- `clips`: fragments of recorded episodes, with what replays them (episode seed + actions).
- `queries`: which pairs to ask about: random, or the ensemble's highest disagreement.
- `labeller`: the synthetic labeller (true return, Bradley-Terry temperature, random answers, "equal").
- `reward_model`: the ensemble r(o, a): MLPs, or small CNNs for image observations (Bradley-Terry on
  fragment sums, adaptive L2).
- `video`: mp4 files of the policy's episodes (`--video-every`) and of stored clips, rendered headless.
- `loop`: the online loop (rounds, checkpoints, metrics) with a stable-baselines3 agent.
- `cli`: the command (imports none of the above until it runs).
"""
