"""Pure tensor math of alignloop: imports only torch, does no I/O.

- `masked`: sums, means, variances and whitening over the real tokens of a padded batch.
- `reward_losses`: Bradley-Terry, K-way ranking (InstructGPT), ties and soft labels, ensembles.
- `preference_losses`: DPO (soft labels, K-way rankings, weights), cDPO / robust, IPO, hinge; KTO.
- `reward_metrics`: the one accuracy definition, calibration, normalisation, ensemble mean / spread.
- `kl`: per-token KL estimators k1/k2/k3 and the fixed / adaptive KL coefficient controllers.
- `advantages`: per-token PPO rewards, GAE, RLOO and GRPO baselines.
- `ppo_losses`: clipped policy and value losses, log-probs and entropy from logits.
"""
