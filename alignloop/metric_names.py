"""Every metric name the training stages write to metrics.jsonl, defined once.

Writers: train/sft.py, train/reward.py, train/ppo.py, train/dpo.py, train/kto.py. Readers: evaluate/report.py (plots and
tables), pipeline.py (the summary), benchmarks/. A name is GROUP/WHAT; the groups:

    train/          on the training batches (sft, reward)
    eval/           on held-out data (sft, reward, dpo, kto: eval/rewards/..., eval/logps/...)
    normalization/  the reward model's stored normalisation (reward)
    reward/         what PPO maximises: the combined score, and score - beta * KL
    score/NAME      one reward source's mean raw score (PPO), NAME from `source_name`
    kl/             KL to the reference and its coefficient beta (PPO); KTO's reference point z0
    rewards/        DPO / KTO implicit rewards beta x (log pi - log pi_ref): chosen, rejected, margin, accuracy
    logps/          DPO / KTO sequence log-probs of the chosen and rejected responses
    loss/           PPO's loss terms
    policy/         the policy update: clipping, ratios, entropy, skipped minibatches (PPO)
    value/          the value head (PPO with GAE)
    response/       what the sampled responses look like (PPO)
    optim/          the optimizer: learning rate, gradient norm (every stage)
    time/           seconds per phase (`_s`) and throughput (`_per_s`)

No torch here: the report and the pipeline summary read these without loading a model.
"""

from __future__ import annotations

# every stage
LR = "optim/lr"  # learning rate after the step's schedule update
GRAD_NORM = "optim/grad_norm"  # gradient norm before clipping

# sft and reward
TRAIN_LOSS = "train/loss"  # sft: nats per response token; reward: ranking loss, mean over heads
TRAIN_ACCURACY = "train/accuracy"  # reward: `algorithms.reward_metrics.pairwise_accuracy` on the batch
EPOCH = "train/epoch"  # fractional epochs done
EVAL_LOSS = "eval/loss"
EVAL_ACCURACY = "eval/accuracy"  # reward: the same accuracy as train/accuracy, held out
EVAL_SOFT_AGREEMENT = "eval/soft_agreement"  # that accuracy on the soft-labelled pairs alone
EVAL_SOFT_MAE = "eval/soft_mae"  # mean |s(r_w - r_l) - p| on the soft-labelled pairs
EVAL_ECE = "eval/ece"  # expected calibration error of s(r_w - r_l)
EVAL_PAIRS = "eval/pairs"
NORMALIZATION_MEAN = "normalization/mean"
NORMALIZATION_STD = "normalization/std"
NORMALIZATION_SAMPLE = "normalization/sample"  # distinct rated training responses the normalisation scored
NORMALIZATION_RESPONSES = "normalization/responses"  # distinct rated training responses it sampled them from
NORMALIZATION_MEAN_SE = "normalization/mean_se"  # standard error of normalization/mean (sampling), mean over heads
NORMALIZATION_STD_SE = "normalization/std_se"  # standard error of normalization/std (sampling), mean over heads
EVAL_S = "time/eval_s"  # seconds of one held-out evaluation (forward-only)
EVAL_SEQUENCES_PER_S = "time/eval_sequences_per_s"  # its distinct responses scored per second
NORMALIZATION_S = "time/normalization_s"  # seconds of the normalisation pass (forward-only)
NORMALIZATION_SEQUENCES_PER_S = "time/normalization_sequences_per_s"
STEP_S = "time/step_s"
PAIRS_PER_S = "time/pairs_per_s"

# dpo and kto: the implicit reward beta x (log pi(y|x) - log pi_ref(y|x)); DPO: chosen / rejected are the
# winner / loser of the decided pairs (p > 0.5), KTO: the desirable / undesirable examples
REWARDS_CHOSEN = "rewards/chosen"  # mean implicit reward of the chosen (desirable) responses
REWARDS_REJECTED = "rewards/rejected"
REWARDS_MARGIN = "rewards/margin"  # chosen - rejected
REWARDS_ACCURACY = "rewards/accuracy"  # dpo: share of decided pairs whose winner has the larger implicit reward
LOGPS_CHOSEN = "logps/chosen"  # mean sequence log-prob under the policy, nats
LOGPS_REJECTED = "logps/rejected"
EVAL_REWARDS_CHOSEN = "eval/rewards/chosen"  # the same on the held-out records
EVAL_REWARDS_REJECTED = "eval/rewards/rejected"
EVAL_REWARDS_MARGIN = "eval/rewards/margin"
EVAL_REWARDS_ACCURACY = "eval/rewards/accuracy"
EVAL_LOGPS_CHOSEN = "eval/logps/chosen"
EVAL_LOGPS_REJECTED = "eval/logps/rejected"
KTO_Z0 = "kl/z0"  # kto: the reference point, mean log-ratio of mismatched prompt / completion pairs, clamped at 0

# ppo
SCORE = "reward/score"  # weighted sum of the sources, after the missing-EOS penalty and the clip
RLHF_REWARD = "reward/rlhf"  # score - beta * KL: what PPO maximises
KL = "kl/mean"  # KL(policy || reference) estimate, nats per response, mean over the batch
BETA = "kl/beta"  # the KL coefficient used this iteration
NEXT_BETA = "kl/next_beta"  # after the controller's update
POLICY_LOSS = "loss/policy"
VALUE_LOSS = "loss/value"
PTX_LOSS = "loss/ptx"  # token-mean NLL of the --ptx-data demonstrations, nats per token
CLIPFRAC = "policy/clipfrac"
APPROX_KL = "policy/approx_kl"  # KL(old policy || new) over the update
RATIO_MAX = "policy/ratio_max"
ENTROPY = "policy/entropy"  # nats per token
SKIPPED_MINIBATCHES = "policy/skipped_minibatches"  # ratio guard: minibatches not stepped
VALUE_CLIPFRAC = "value/clipfrac"
EXPLAINED_VARIANCE = "value/explained_variance"
LENGTH = "response/length"  # tokens
NO_EOS_SHARE = "response/no_eos_share"
REPEATED_3GRAM_SHARE = "response/repeated_3gram_share"
GENERATE_S = "time/generate_s"
SCORE_S = "time/score_s"
FORWARD_S = "time/forward_s"
TRAIN_S = "time/train_s"
ITERATION_S = "time/iteration_s"
TOKENS_PER_S = "time/tokens_per_s"

# control (the preference loop on a Gymnasium task; also TRAIN_LOSS, EVAL_LOSS, EVAL_ACCURACY of its reward ensemble)
TRUE_RETURN = "eval/true_return"  # the environment's own return of the deterministic policy, mean over episodes
TRUE_RETURN_SE = "eval/true_return_se"  # its standard error over those episodes (std / sqrt(n); 0 for one episode)
LEARNED_RETURN = "eval/learned_return"  # the same episodes' return under the learned (normalised) reward
REWARD_CORRELATION = "eval/reward_correlation"  # Pearson correlation of learned and true per-step reward on them
ENV_STEPS = "train/env_steps"  # agent training steps so far
LABELS = "train/labels"  # comparisons labelled so far
HUMAN_LABELS = "train/human_labels"  # of those, labelled by people (--feedback human | mixed)
HUMAN_SYNTHETIC_AGREEMENT = "eval/human_synthetic_agreement"  # people's majority vs the synthetic labeller, pairs so far
HUMAN_TRUE_AGREEMENT = "eval/human_true_order_agreement"  # people's majority vs the higher true return, pairs so far
WEIGHT_DECAY = "train/weight_decay"  # the reward ensemble's adapted L2 coefficient
ELAPSED_S = "time/elapsed_s"  # seconds since the loop started

SCORE_PREFIX = "score/"


def source_name(source: str) -> str:
    """A reward source's stable name: a reward-model folder by its base name (`runs/x/reward`
    -> `reward`), anything else (`rule:module:function`, `judge`) as it was given."""
    if source.startswith(("rule:", "judge:")) or "/" not in source:
        return source
    return source.rstrip("/").rsplit("/", 1)[-1]


def score(source: str) -> str:
    """The metric of one reward source's mean score: `score/<source_name>`."""
    return SCORE_PREFIX + source_name(source)
