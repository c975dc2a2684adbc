"""The config classes of the stages that run models, in one torch-free module.

Importing a config (to plan a recipe, to build `--help`) never imports torch: the stage
modules import their config from here and torch only when they run. config.py holds the
machinery (StageConfig, YAML files, the options built from the fields and their sections
in `--help`); quality/ and feedback/ keep the configs of their own commands beside them
(those packages never import torch). Every field's description is its `--help` text.

    OptimOptions, StepRunOptions      shared by the training stages (with config.py's LoraOptions)
    GenerationServerOptions           sampling through a server: generate, evaluate, ppo
    SFTConfig, RewardConfig, PPOConfig                 alignloop sft | reward | ppo   (train/)
    DPOConfig, KTOConfig (PreferenceOptions)           alignloop dpo | kto   (train/)
    GenerateConfig, ScoreConfig                        alignloop generate | score
    CAIReviseConfig, CAILabelConfig, CAIScoreConfig, CAIImportConfig   alignloop cai ... (cai/cli.py)
    EvaluateConfig, ReportConfig                       alignloop evaluate | report   (evaluate/)
    ControlConfig                                      alignloop control   (control/)

The trained model's input is `model` everywhere; `cai label/score --judge` and `evaluate
--policy/--baseline` name models that are judged or compared, not trained.
"""

from __future__ import annotations

from pathlib import Path
from typing import ClassVar, Literal

from pydantic import BaseModel, Field, field_validator

from alignloop.assets import asset
from alignloop.config import DEFAULT_MODEL, LoraOptions, ModelOptions, StageConfig

SCORING_TOKEN_BUDGET = 4096  # padded tokens per forward-only batch: 8192 was 0.44 GB more RSS for 5% more seq/s on CPU

# ---------------------------------------------------------------- sampling through a generation server


class GenerationServerOptions(BaseModel):
    """Sampling through an OpenAI-compatible server instead of in-process (serving/client.py)."""

    heading: ClassVar[str] = "Generation-server options (generate, evaluate, ppo)"

    generation_url: str | None = Field(
        None, description="An OpenAI-compatible server that samples the responses (vLLM, SGLang, alignloop "
                          "serve-model), e.g. http://127.0.0.1:8000/v1: prompts templated here go to /v1/completions "
                          "as token ids and the sampled token ids come back; every log-probability is still computed "
                          "here [default: sample in-process].")
    generation_model: str | None = Field(
        None, description="The model's name on that server (requests' `model`) [default: the server's first model]; "
                          "evaluate: ROLE=NAME,... for each model sampled there (policy, baseline or the --policies "
                          "names; the others are sampled in-process), a plain NAME being the policy's; ppo asks for its pushed "
                          "adapter by its own name.")
    generation_concurrency: int = Field(8, ge=1, description="Requests in flight at once (one per prompt, its n "
                                                             "samples together).")
    generation_timeout_s: float = Field(600.0, gt=0, description="Seconds a request may take before it is an error.")


# ---------------------------------------------------------------- shared by the training stages


class OptimOptions(BaseModel):
    """Optimiser and schedule options shared by the training stages."""

    heading: ClassVar[str] = 'Optimiser options'

    optimizer: Literal["adamw", "sgd"] = Field(
        "adamw", description="adamw, or sgd (plain: each step is -lr x gradient; what tests of exact invariants use).")
    learning_rate: float = Field(2e-4, gt=0, description="Peak learning rate.")
    weight_decay: float = Field(0.0, ge=0, description="Weight decay (decoupled for AdamW).")
    warmup_ratio: float = Field(0.1, ge=0, le=1, description="Share of the steps spent warming the LR up linearly from 0.")
    schedule: Literal["cosine", "linear", "constant"] = Field(
        "cosine", description="LR decay after warm-up: cosine (to 10% of the peak), linear (to 0) or constant.")
    max_grad_norm: float = Field(1.0, gt=0, description="Clip the gradient norm to this value.")
    mixed_precision: Literal["no", "bf16", "fp16"] = Field(
        "no", description="Autocast precision (fp32 master weights): no | bf16 | fp16. On a CPU without fast kernels "
                    "for the half type (no AVX-512) it runs in float32, with a notice: there they are ~60x slower.")


class StepRunOptions(BaseModel):
    """Evaluation, checkpoints and resuming of a loop counted in optimizer steps (sft, reward)."""

    heading: ClassVar[str] = 'Evaluation, checkpoints and resuming'

    eval_every: int = Field(20, ge=0, description="Evaluate on the held-out split every N steps (0: only at the end).")
    save_every: int = Field(20, ge=0, description="Checkpoint every N steps (0: only when stopping).")
    seed: int = Field(0, description="Random seed (data order, initialisation).")
    resume: bool = Field(False, description="Continue from out/checkpoint.")
    stop_at_step: int | None = Field(None, ge=1, description="Stop (with a checkpoint) at this step; --resume continues.")
    keep_checkpoint: bool = Field(False, description="Keep out/checkpoint after training finishes.")


# ---------------------------------------------------------------- alignloop sft | reward | ppo


class SFTConfig(StageConfig, ModelOptions, OptimOptions, StepRunOptions):
    """`alignloop sft`: fine-tune a causal LM on demonstrations."""

    data: Path = Field(..., description="Demonstrations (.jsonl / .parquet / datasets folder): prompt + response.")
    out: Path = Field(..., description="Output folder: the model (adapter or full), config.yaml, metrics.jsonl.")
    heldout: Path | None = Field(None, description="Held-out demonstrations; default: a split of --data.")
    heldout_fraction: float = Field(0.1, ge=0, lt=1, description="Share of --data held out when --heldout is not given.")
    epochs: int = Field(1, ge=1, description="Passes over the training data.")
    batch_size: int = Field(4, ge=1, description="Examples per micro-batch per process.")
    grad_accum: int = Field(1, ge=1, description="Micro-batches accumulated per optimizer step.")
    max_length: int = Field(512, ge=8, description="Longest tokenised example (prompt cut from the left, then response).")


class RewardConfig(StageConfig, ModelOptions, OptimOptions, StepRunOptions):
    """`alignloop reward`: a scalar reward model from comparisons."""

    data: Path = Field(..., description="Comparisons (.jsonl / .parquet / datasets folder): K-way rankings, pairs, soft labels.")
    out: Path = Field(..., description="Output folder: backbone (adapter or full), heads, normalisation, metrics.")
    heldout: Path | None = Field(None, description="Held-out comparisons; default: a split of --data.")
    heldout_fraction: float = Field(0.1, ge=0, lt=1, description="Share of --data's prompts held out, with all their comparisons, when --heldout is not given.")
    epochs: int = Field(1, ge=1, description="Passes over the training comparisons.")
    batch_size: int = Field(4, ge=1, description="Comparison records per micro-batch per process.")
    grad_accum: int = Field(1, ge=1, description="Micro-batches accumulated per optimizer step.")
    max_length: int = Field(384, ge=8, description="Longest tokenised prompt + response.")
    tie_mode: Literal["skip", "soft"] = Field("skip", description="Ties: skip them, or train tied pairs toward p = 0.5.")
    margin: float = Field(0.0, ge=0, description="Margin on hard pairs: -log s(r_w - r_l - margin).")
    group_by_length: bool = Field(True, description="Batch comparisons of similar length together (less padding).")
    group_by_prompt: bool = Field(
        True, description="Batch the comparisons of one prompt together; a batch encodes each prompt and each distinct "
                          "response once, so the C(K,2) pair records of one K-way item cost about one forward.")
    ensemble: int = Field(1, ge=1, description="Ensemble members: heads on one shared backbone.")
    ensemble_mode: Literal["bootstrap", "init"] = Field(
        "bootstrap", description="How members differ: bootstrap resamples of the records, or only their random init.")
    mismatched_pairs: int = Field(
        0, ge=0, description="Per training prompt, this many extra pairs that prefer one of its responses over a "
                             "response written for another prompt (off-topic by construction), each weighing "
                             "--mismatched-weight rated pairs of that prompt: teaches relevance, which the rankings of a few "
                             "similar samples per prompt barely show. Not added to the held-out set. 0 = none.")
    mismatched_weight: float = Field(
        1.0, gt=0, description="Weight of each mismatched pair, in rated pairs of its prompt (see --mismatched-pairs).")
    normalization_prompts: int | None = Field(
        None, ge=2, description="Normalise the rewards on the rated responses of at most this many training prompts, "
                                "a random subset (none: all of them).")
    normalization_sample: int | None = Field(
        1024, ge=2, description="Normalise the rewards on at most this many distinct rated training responses, a "
                                "random sample (seeded by --seed; none: all of them); the sample size and the standard "
                                "errors of the mean and std it gives are written to metrics.jsonl (normalization/...).")
    training_token_budget: int = Field(
        384, ge=0, description="Most tokens (each distinct prompt once, each distinct response once: the pair records of one "
                               "K-way item cost about one pass of it) of one forward and backward: a "
                               "micro-batch's records past it go into another chunk and their gradients are added "
                               "up (the same loss; activation memory bounded by the budget, about 2.6 MB a token for "
                               "SmolLM2-135M in fp32, whatever --batch-size and the lengths; a record over it is a "
                               "chunk alone). 0: the whole micro-batch at once (faster on short records, ~10%).")
    scoring_token_budget: int = Field(
        SCORING_TOKEN_BUDGET, ge=64, description="Padded tokens per batch of the forward-only passes (held-out "
                                                 "evaluation, normalisation): responses sorted by length, as many "
                                                 "per batch as fit.")


class PPOConfig(StageConfig, LoraOptions, OptimOptions, GenerationServerOptions):
    """`alignloop ppo`: PPO against reward sources with a KL penalty to the initial policy."""

    reward: str = Field(..., description="Reward sources, comma-separated, each optionally WEIGHT*: a reward-model folder, rule:module:function, judge:MODEL.")
    prompts: Path = Field(..., description="Training prompts (.jsonl / .parquet / datasets folder); several joined with "
                                          "commas are read in order.")
    out: Path = Field(..., description="Output folder: the policy (adapter or full), config, metrics, samples.")
    model: str = Field(DEFAULT_MODEL, description="The model to train, also the frozen reference of the KL penalty: "
                       "an SFT output folder, a registry name or a Hugging Face id.")
    iterations: int = Field(20, ge=1, description="PPO iterations (rollout + update).")
    batch_size: int = Field(8, ge=1, description="Prompts per iteration per process.")
    num_samples: int = Field(1, ge=1, description="Responses per prompt (the group size for rloo / grpo).")
    max_new_tokens: int = Field(32, ge=1, description="Most tokens per response.")
    temperature: float = Field(0.7, gt=0, description="Sampling temperature (logits are divided by it for log-probs too).")
    top_p: float = Field(1.0, gt=0, le=1, description="Nucleus sampling mass (1.0 keeps the policy's distribution exact).")
    sampling_copy: bool = Field(
        True, description="Sample from a copy of the policy refreshed every iteration, LoRA folded into its weights, "
                          "in the --mixed-precision dtype: about 1.4x faster sampling on CPU for one more copy of the "
                          "weights. Where weights are sharded (DeepSpeed ZeRO-3, FSDP) it is refreshed once per "
                          "iteration from the gathered shards, and sampling runs through it instead of the sharded "
                          "modules.")
    ppo_epochs: int = Field(4, ge=1, description="Passes over each rollout batch.")
    minibatches: int = Field(1, ge=1, description="Minibatches per PPO epoch (one optimizer step each).")
    micro_batch_size: int = Field(8, ge=1, description="Sequences per forward/backward (gradient accumulation within a minibatch).")
    advantage: Literal["gae", "rloo", "grpo"] = Field("gae", description="gae (value head), rloo (leave-one-out) or grpo (group normalisation).")
    gamma: float = Field(1.0, ge=0, le=1, description="GAE discount.")
    lam: float = Field(0.95, ge=0, le=1, description="GAE lambda.")
    clip_eps: float = Field(0.2, gt=0, description="Policy ratio clip.")
    vf_clip: float = Field(0.2, gt=0, description="Value clip around the rollout's values.")
    vf_coef: float = Field(0.1, ge=0, description="Weight of the value loss.")
    kl_coef: float = Field(0.05, ge=0, description="Initial KL coefficient beta.")
    kl_estimator: Literal["k1", "k2", "k3"] = Field("k1", description="Per-token KL estimator in the reward.")
    kl_in_loss: bool = Field(False, description="Add beta * k3 KL to the loss instead of -beta * KL to the reward.")
    adaptive_kl: bool = Field(False, description="Adapt beta toward --kl-target (Ziegler et al.).")
    kl_target: float = Field(6.0, gt=0, description="Target KL (nats per response) of the adaptive controller.")
    kl_horizon: float = Field(10000, gt=0, description="Horizon of the adaptive controller.")
    whiten_rewards: bool = Field(False, description="Whiten per-token rewards (keeping their mean).")
    score_clip: float | None = Field(10.0, description="Clip scores to [-c, c] (none: no clip).")
    missing_eos_penalty: float | None = Field(1.0, description="Subtracted from the score of a response without EOS.")
    ensemble_k: float = Field(0.0, ge=0, description="Reward-model ensembles score mean - k * spread.")
    ratio_threshold: float = Field(10.0, gt=1, description="Skip a minibatch whose mean ratio exceeds this.")
    ptx_data: Path | None = Field(
        None, description="PPO-ptx (Ouyang et al. 2022): demonstrations (the sft data format) whose token-mean NLL, "
                          "x --ptx-coef, joins every minibatch's loss, so that RL keeps what they teach (the "
                          "quickstart's: refusing harmful requests, which PPO otherwise unlearns). Not given: off.")
    ptx_coef: float = Field(1.0, ge=0, description="Weight gamma of the --ptx-data NLL in the loss.")
    ptx_batch_size: int = Field(
        8, ge=1, description="--ptx-data demonstrations per minibatch per process, drawn at random (a function of "
                             "--seed, the iteration, the PPO epoch, the minibatch and the process: --resume draws alike).")
    ptx_max_length: int = Field(256, ge=8, description="Longest tokenised --ptx-data prompt + response (cut as sft cuts).")
    log_samples_every: int = Field(5, ge=0, description="Write sample completions every N iterations (0: never).")
    save_every: int = Field(10, ge=0, description="Checkpoint every N iterations (0: only when stopping).")
    seed: int = Field(0, description="Random seed (prompt order, sampling; each process adds its rank).")
    resume: bool = Field(False, description="Continue from out/checkpoint.")
    stop_at_iteration: int | None = Field(
        None, ge=1, description="Stop (with a checkpoint) after this iteration; --resume continues. (An iteration, not a "
                                "step as in sft / reward: one iteration takes ppo_epochs x minibatches optimizer steps.)")
    keep_checkpoint: bool = Field(False, description="Keep out/checkpoint after training finishes.")
    generation_adapter_dir: Path | None = Field(
        None, description="With --generation-url (LoRA): where each iteration's adapter is saved for the server to "
                          "load (/v1/load_lora_adapter), a path the server reads as it is (this machine or a shared "
                          "file system) [default: OUT/served_adapter].")


# ---------------------------------------------------------------- alignloop dpo | kto


class PreferenceOptions(BaseModel):
    """What DPO and KTO share: the data split, batching, beta and the reference."""

    heading: ClassVar[str] = "Preference-optimisation options (dpo, kto)"

    heldout: Path | None = Field(None, description="Held-out records; default: a split of --data.")
    heldout_fraction: float = Field(0.1, ge=0, lt=1, description="Share of --data's prompts held out, with all their "
                                    "records, when --heldout is not given.")
    epochs: int = Field(1, ge=1, description="Passes over the training records.")
    batch_size: int = Field(4, ge=1, description="Records per micro-batch per process.")
    grad_accum: int = Field(1, ge=1, description="Micro-batches accumulated per optimizer step.")
    max_length: int = Field(384, ge=8, description="Longest tokenised prompt + response (the prompt keeps its end).")
    beta: float = Field(0.1, gt=0, description="beta: the implicit reward is beta x (log pi - log pi_ref); "
                        "larger keeps the policy closer to the reference.")
    group_by_length: bool = Field(True, description="Batch records of similar length together (less padding).")
    precompute_reference: bool = Field(
        False, description="Compute the reference log-probs once, in a first pass stored in OUT (resumable), instead of "
                           "with the adapter off at every step (LoRA). Full fine-tuning always does.")


class DPOConfig(StageConfig, ModelOptions, PreferenceOptions, OptimOptions, StepRunOptions):
    """`alignloop dpo`: direct preference optimisation on comparisons (no reward model)."""

    data: Path = Field(..., description="Comparisons (.jsonl / .parquet / datasets folder, TRL preference formats): "
                       "K-way rankings, pairs, soft labels p, weights.")
    out: Path = Field(..., description="Output folder: the policy (adapter or full), config.yaml, metrics.jsonl.")
    loss: Literal["sigmoid", "cdpo", "robust", "ipo", "hinge"] = Field(
        "sigmoid", description="sigmoid: DPO -log s(beta h); cdpo / robust: DPO under labels flipped with probability "
                               "--label-smoothing (Mitchell 2023 / Chowdhury et al. 2024); ipo: (h - 1/(2 beta))^2; "
                               "hinge: max(0, 1 - beta h). A soft label p trains every one on p l(h) + (1 - p) l(-h).")
    label_smoothing: float = Field(0.0, ge=0, lt=0.5, description="cdpo / robust: the assumed label-flip probability.")
    tie_mode: Literal["skip", "soft"] = Field("skip", description="Ties: skip them, or train tied pairs toward p = 0.5.")
    group_by_prompt: bool = Field(
        True, description="Batch the records of one prompt together; a batch encodes each prompt and each distinct "
                          "response once.")


class KTOConfig(StageConfig, ModelOptions, PreferenceOptions, OptimOptions, StepRunOptions):
    """`alignloop kto`: Kahneman-Tversky optimisation on binary feedback (thumbs up / down)."""

    data: Path = Field(..., description="Binary feedback (label 1 / 0; TRL's unpaired prompt/completion/label) or "
                       "comparisons, converted: the best response desirable, the worst undesirable.")
    out: Path = Field(..., description="Output folder: the policy (adapter or full), config.yaml, metrics.jsonl.")
    desirable_weight: float = Field(1.0, gt=0, description="lambda_D, the weight of desirable examples.")
    undesirable_weight: float = Field(
        1.0, gt=0, description="lambda_U, the weight of undesirable examples; the paper keeps lambda_D n_D / "
                               "(lambda_U n_U) in [1, 4/3] (a warning says when it is not).")


# ---------------------------------------------------------------- alignloop generate | score


class GenerateConfig(StageConfig, GenerationServerOptions):
    """`alignloop generate`: K responses per prompt, written as samples records."""

    model: str = Field(DEFAULT_MODEL, description="Model: registry name, local folder (full model or adapter) or HF id.")
    prompts: Path = Field(..., description="Prompts file (.jsonl / .parquet / datasets folder) with 'prompt' or 'messages'; "
                                          "several joined with commas are read in order.")
    out: Path = Field(..., description="Output samples file (.jsonl or .parquet).")
    num_samples: int = Field(4, ge=1, description="Responses sampled per prompt (K).")
    temperature: float = Field(0.7, ge=0, description="Sampling temperature; 0 means greedy.")
    top_p: float = Field(1.0, gt=0, le=1, description="Nucleus sampling: keep the smallest token set with this mass.")
    max_new_tokens: int = Field(128, ge=1, description="Most tokens generated per response.")
    seed: int = Field(0, description="Random seed; the same seed and settings give the same samples.")
    batch_size: int = Field(16, ge=1, description="Sequences generated together.")
    limit: int | None = Field(None, ge=1, description="Use only the first N prompts.")
    dtype: str = Field("auto", description="auto | float32 | bfloat16 | float16 (auto: float32 on CPU).")
    device: str = Field("auto", description="auto | cpu | cuda | cuda:N.")


class ScoreConfig(StageConfig):
    """`alignloop score`: add reward-model scores to a samples file."""

    reward: Path = Field(..., description="Reward model folder (from `alignloop reward`).")
    data: Path = Field(..., description="Samples file (prompt + responses), e.g. from `alignloop generate`.")
    out: Path = Field(..., description="Output samples file with `rewards` added.")
    name: str = Field("reward", description="Key under `rewards` for the scores (ensembles add NAME_spread).")
    scoring_token_budget: int = Field(
        SCORING_TOKEN_BUDGET, ge=64, description="Padded tokens per forward-only batch: responses sorted by length "
                                                 "(a window of 1,024 at a time, so memory stays bounded), as many "
                                                 "per batch as fit.")
    device: str = Field("auto", description="auto | cpu | cuda | cuda:N.")


# ---------------------------------------------------------------- alignloop cai ...


class CAIOptions(StageConfig):
    """Options every `alignloop cai` command takes."""

    heading: ClassVar[str] = "Options of every cai command"

    constitution: Path | None = Field(None, description="Constitution YAML (default: the shipped alignloop/assets/constitution.yaml).")
    seed: int = Field(0, description="Random seed: principle draws and sampling.")
    batch_size: int = Field(8, ge=1, description="Sequences per forward / generate batch.")
    limit: int | None = Field(None, ge=1, description="Use only the first N records.")
    dtype: str = Field("auto", description="auto | float32 | bfloat16 | float16 (auto: float32 on CPU).")
    device: str = Field("auto", description="auto | cpu | cuda | cuda:N.")


class CAIReviseConfig(CAIOptions):
    """`alignloop cai revise`: SL-CAI critique-and-revision of red-team prompts."""

    model: str = Field(DEFAULT_MODEL, description="The model that answers, critiques and revises.")
    prompts: Path = Field(..., description="Prompts to answer and revise (e.g. red-team prompts), .jsonl.")
    out: Path = Field(..., description="Output .jsonl (every step per prompt); also OUT.demos.jsonl and "
                                       "OUT.comparisons.jsonl.")
    revisions: int = Field(4, ge=1, description="Critique-revision steps per prompt (a fresh principle each step).")
    few_shot: int = Field(2, ge=0, description="Worked critique-revision examples from the constitution put first.")
    helpful: Path | None = Field(None, description="Helpfulness prompts whose samples join the demonstrations.")
    helpful_samples: int = Field(2, ge=1, description="Samples per helpfulness prompt.")
    temperature: float = Field(0.7, ge=0, description="Sampling temperature (0: greedy).")
    top_p: float = Field(1.0, gt=0, le=1, description="Nucleus sampling mass.")
    max_new_tokens: int = Field(128, ge=1, description="Most tokens per response, critique and revision.")


class CAILabelConfig(CAIOptions):
    """`alignloop cai label`: RL-CAI soft preference labels from a judge model."""

    judge: str = Field(DEFAULT_MODEL, description="The judge (feedback) model: it labels the pairs and is not trained "
                       "here, hence --judge rather than --model.")
    data: Path = Field(..., description="Pairs: samples records (K >= 2 responses) or comparisons "
                                        "(their labels are ignored), .jsonl.")
    out: Path = Field(..., description="Output comparisons .jsonl (source: ai, soft label p).")
    principles_per_pair: int = Field(1, ge=1, description="Ensemble: principles sampled per pair, p averaged.")
    all_pairs: bool = Field(True, description="K > 2 responses: label every pair (weight 1/C(K,2) each); "
                                              "--no-all-pairs labels only the first two.")
    few_shot: bool = Field(True, description="Put the constitution's labeled examples first (not with --cot).")
    cot: bool = Field(False, description="Chain of thought: the judge reasons first; p clamped to the range below.")
    cot_clamp_low: float = Field(0.4, ge=0, le=0.5, description="CoT labels: lower clamp of p.")
    cot_clamp_high: float = Field(0.6, ge=0.5, le=1, description="CoT labels: upper clamp of p.")
    cot_max_new_tokens: int = Field(96, ge=1, description="CoT: most tokens of reasoning.")
    temperature: float = Field(0.0, ge=0, description="CoT reasoning temperature (0: greedy).")


class CAIScoreConfig(CAIOptions):
    """`alignloop cai score`: d-RLAIF rewards of a samples file."""

    judge: str = Field(DEFAULT_MODEL, description="The judge model that rates 1..10 (it is not trained here, hence "
                       "--judge rather than --model).")
    data: Path = Field(..., description="Samples file (.jsonl): prompt + responses.")
    out: Path = Field(..., description="Output samples file with rewards[NAME] added.")
    name: str = Field("judge", description="Key of the reward source in `rewards`.")


class CAIImportConfig(StageConfig):
    """`alignloop cai import`: the CAI paper's JSON prompt files as a constitution YAML."""

    critiques: Path | None = Field(None, description="{name: {prompt: [critique request], edit_request}} JSON.")
    choices: Path | None = Field(None, description="JSON list of multiple-choice principles ('... Options:').")
    few_shot: Path | None = Field(None, description="JSON list of critique-revision few-shot transcripts.")
    label_few_shot: Path | None = Field(None, description="JSON list of {prompt, corrects, incorrects}.")
    name: str = Field("paper-layout", description="Name of the constitution.")
    out: Path = Field(..., description="Output constitution .yaml.")


# ---------------------------------------------------------------- alignloop evaluate | report


class EvaluateConfig(StageConfig, GenerationServerOptions):
    """`alignloop evaluate`: reward, KL, length, win rates and harmlessness on held-out prompts."""

    policy: str | None = Field(None, description="The model to evaluate (e.g. the PPO output folder); --policy and --baseline "
                               "name the two models compared (neither is trained here). Required unless --policies.")
    policies: dict[str, str] | None = Field(
        None, description="Several policies side by side instead of --policy, NAME=MODEL,... (e.g. ppo=runs/x/ppo,"
                          "dpo=runs/x/dpo): each sampled once and compared with --baseline (gold gain with paired standard "
                          "errors, win rates, KL, length, harmlessness, and each one's training time and peak memory "
                          "as the recipe runner recorded them).")

    @field_validator("policies", mode="before")
    @classmethod
    def _name_model_pairs(cls, value):
        if isinstance(value, str):  # the command line: NAME=MODEL,NAME=MODEL
            pairs = [part.split("=", 1) for part in value.split(",") if part.strip()]
            if any(len(p) != 2 or not p[0].strip() or not p[1].strip() for p in pairs):
                raise ValueError(f"expected NAME=MODEL,NAME=MODEL, got {value!r}")
            value = {name.strip(): model.strip() for name, model in pairs}
        if isinstance(value, dict) and "baseline" in value:
            raise ValueError("'baseline' names the --baseline model; give the policies other names")
        return value
    baseline: str | None = Field(None, description="The model to compare with (e.g. the SFT folder); none: no win rates.")
    prompts: Path = Field(asset("prompts_heldout.jsonl"), description="Held-out prompts (.jsonl / .parquet / datasets folder).")
    redteam: Path | None = Field(asset("redteam_heldout.jsonl"), description="Red-team prompts for the harmlessness rate ('none': skip).")
    reward: str | None = Field(None, description="Reward sources (as in `alignloop ppo --reward`); default: the PPO run's own, read from POLICY/config.yaml.")
    gold: str | None = Field(None, description="Gold scorer module:function (simulated feedback), e.g. alignloop.quality.gold:helpful_harmless.")
    judge: str | None = Field(None, description="AI judge model (pairwise, constitution, both orders) for win rate and harmlessness.")
    constitution: Path | None = Field(None, description="Constitution YAML of the AI judge (default: the shipped one).")
    judge_principles: int = Field(1, ge=1, description="Principles sampled per pair by the AI judge (an ensemble).")
    human: Path | None = Field(None, description="People's judgments of OUT/pairs.jsonl (exported comparisons of a feedback campaign).")
    reference: str | None = Field(None, description="Reference model for the KL (default: the PPO run's initial policy, or an SFT folder's base).")
    num_samples: int = Field(1, ge=1, description="Responses per prompt and model.")
    max_new_tokens: int = Field(64, ge=1, description="Most tokens per response.")
    temperature: float = Field(0.7, gt=0, description="Sampling temperature (log-probs for the KL use the same temperature).")
    seed: int = Field(0, description="Random seed (sampling, judge principles).")
    batch_size: int = Field(16, ge=1, description="Sequences generated / scored together.")
    limit: int | None = Field(None, ge=1, description="Use only the first N prompts (and N red-team prompts).")
    out: Path = Field(..., description="Output folder: eval.json, samples of each model, pairs.jsonl, config.yaml.")
    dtype: str = Field("auto", description="auto | float32 | bfloat16 | float16: the models' weights (log-probs for the KL).")
    sampling_dtype: Literal["auto", "float32", "bfloat16", "float16"] = Field(
        "auto", description="auto (as --dtype) | float32 | bfloat16 | float16: a copy in this dtype samples the "
                            "responses (bfloat16 is about 2x faster on a CPU with AVX-512; without it, float32 is used, with a notice); "
                            "the KL log-probs still use --dtype.")
    device: str = Field("auto", description="auto | cpu | cuda | cuda:N.")


class ReportConfig(StageConfig):
    """`alignloop report`: the HTML report of a run folder."""

    run: Path | None = Field(None, description="Run folder (holds sft/, quality/, reward/, ppo/, eval/, control/).")
    out: Path | None = Field(None, description="Output HTML file (default: RUN/report.html).")
    sft: Path | None = Field(None, description="SFT output folder (default: RUN/sft).")
    quality: Path | None = Field(None, description="Feedback-quality folder or report.json (default: RUN/quality).")
    reward: Path | None = Field(None, description="Reward-model output folder (default: RUN/reward).")
    ppo: Path | None = Field(None, description="PPO output folder (default: RUN/ppo).")
    eval: Path | None = Field(None, description="Evaluation folder of `alignloop evaluate` (default: RUN/eval).")
    control: Path | None = Field(None, description="Output folder of `alignloop control` (default: RUN/control; its "
                                                   "section appears when the folder exists).")
    samples: int = Field(6, ge=0, description="Sample completions shown before/after.")
    title: str | None = Field(None, description="Report title (default: the run folder's name).")


# ---------------------------------------------------------------- alignloop control


class ControlConfig(StageConfig):
    """`alignloop control`: a Gymnasium control task learned from preferences between clips (Christiano et al. 2017)."""

    env: str = Field("Pendulum-v1", description="Gymnasium environment id (classic control, or MuJoCo through the "
                                                "mujoco wheel: InvertedDoublePendulum-v5, HalfCheetah-v5, ...).")
    out: Path = Field(..., description="Output folder: agent.zip, reward/ (the ensemble), clips.npz, comparisons.jsonl, "
                                       "metrics.jsonl, summary.json, config.yaml, videos/.")
    env_options: list[str] = Field(default_factory=list, description="Keyword arguments of gym.make as KEY=VALUE "
                                                                     "(YAML values), e.g. terminate_when_unhealthy=false.")
    reward: Literal["learned", "true"] = Field(
        "learned", description="learned: the agent sees the reward ensemble's prediction (the preference loop); "
                               "true: the baseline, the same agent on the environment's own reward (no labels).")
    algo: Literal["ppo", "sac"] = Field("ppo", description="The stable-baselines3 agent: ppo or sac.")
    baseline: bool = Field(False, description="Also train the same agent on the true reward for the same steps "
                                              "(OUT/baseline/) and print both true returns at the same env steps.")
    total_steps: int = Field(98_304, ge=1, description="Agent environment steps in all (split evenly over the rounds; "
                                                       "PPO rounds each a whole number of rollouts).")
    rounds: int = Field(12, ge=1, description="Rounds of (labels -> reward ensemble -> agent training).")
    labels: int = Field(700, ge=0, description="Comparisons asked for in all (the label budget).")
    initial_label_share: float = Field(
        0.25, ge=0, le=1, description="Share of the labels asked before any training, about clips of the initial "
                                      "(random) policy, as in the paper.")
    label_decay: float = Field(
        1.0, ge=0, description="The rest of the labels go to rounds 2..R in proportion to 1 / (1 + label_decay x (r - 2)): "
                               "the label rate decays over training (0: evenly).")
    fragment_length: int | None = Field(None, ge=2, description="Steps per clip (default: --fragment-seconds of "
                                                                "simulated time at the env's time step, at most half an episode).")
    fragment_seconds: float = Field(1.5, gt=0, description="Default clip length in seconds of simulated time (the paper's 1.5 s).")
    queries: Literal["disagreement", "random"] = Field(
        "disagreement", description="Which pairs to ask about: those the ensemble members disagree on most, or random ones.")
    candidates: int = Field(10, ge=1, description="disagreement: draw this many times more candidate pairs than are asked.")
    labeller_noise: float = Field(0.1, ge=0, le=1, description="Share of the synthetic labeller's answers that are random.")
    labeller_temperature: float = Field(
        0.0, ge=0, description="Bradley-Terry temperature of the synthetic labeller, in units of true return: "
                               "P(a) = s((R_a - R_b) / T); 0 always prefers the higher return.")
    equal_tolerance: float = Field(0.0, ge=0, description="The labeller says 'equal' when the true returns differ by at "
                                                          "most this much (trained toward p = 0.5).")
    ensemble: int = Field(3, ge=1, description="Reward-model members (networks r(o, a): MLPs, or small CNNs for "
                                               "image observations; each on a bootstrap resample).")
    hidden: int = Field(64, ge=1, description="Width of the reward networks' hidden layers (MLPs; for image "
                                              "observations, CNNs: the conv trunk's embedding and the layer after it).")
    rm_epochs: int = Field(20, ge=1, description="Passes over the labels each time the ensemble is retrained (each round).")
    rm_batch_size: int = Field(32, ge=1, description="Comparisons per reward-model step.")
    rm_learning_rate: float = Field(1e-3, gt=0, description="Adam learning rate of the reward ensemble.")
    heldout_fraction: float = Field(0.2, ge=0, lt=1, description="Share of comparisons held out (validation loss and accuracy).")
    weight_decay: float = Field(1e-3, ge=0, description="Initial L2 coefficient; adapted after each epoch to keep the "
                                                        "validation loss at 1.1-1.5x the training loss (the paper's rule).")
    assumed_random_share: float = Field(0.1, ge=0, lt=1, description="The reward model assumes this share of answers "
                                                                     "is random: P = (1 - e) s(d) + e / 2.")
    n_envs: int = Field(4, ge=1, description="Parallel environments of the agent.")
    n_steps: int = Field(1024, ge=1, description="PPO: steps per environment per rollout.")
    batch_size: int = Field(64, ge=1, description="Agent minibatch size.")
    n_epochs: int = Field(10, ge=1, description="PPO: epochs per rollout.")
    agent_learning_rate: float = Field(1e-3, gt=0, description="Agent learning rate.")
    gamma: float = Field(0.9, ge=0, le=1, description="Agent discount.")
    gae_lambda: float = Field(0.95, ge=0, le=1, description="PPO: GAE lambda.")
    ent_coef: float = Field(0.0, ge=0, description="PPO: entropy bonus.")
    use_sde: bool = Field(True, description="State-dependent exploration (gSDE), as the RL Zoo's Pendulum settings.")
    learning_starts: int = Field(1000, ge=0, description="SAC: random steps before learning.")
    eval_episodes: int = Field(5, ge=1, description="Episodes of the deterministic policy per round (true return, "
                                                    "learned return, learned-vs-true reward correlation).")
    video_every: int = Field(
        0, ge=0, description="Write an mp4 of one episode of the deterministic policy (from the first evaluation "
                             "episode's seed) to out/videos/round_NNN.mp4 every this many rounds and after the last "
                             "(0: none). Needs imageio-ffmpeg (the control extra); MuJoCo renders headless with "
                             "MUJOCO_GL=egl unless it is set.")
    feedback: Literal["synthetic", "human", "mixed"] = Field(
        "synthetic", description="Who labels the clips: the synthetic labeller; people (each round's queries become a "
                                 "clips campaign in --feedback-db: the run prints where raters go, exits with status 3 "
                                 "and goes on when the same command is run again after the campaign is complete); "
                                 "or mixed: people get --human-share of each round's queries, the synthetic labeller "
                                 "the rest (and any pair everybody answered can't tell). Each label records its source.")
    feedback_db: str | None = Field(None, description="The feedback database of the people's campaigns: a SQLite path or "
                                                      "a database URL (default: out/feedback.db).")
    feedback_media: Path | None = Field(None, description="Folder of the clips' videos, served by `alignloop serve` "
                                                          "(default: beside a SQLite --feedback-db, out/feedback-media/).")
    human_share: float = Field(0.5, gt=0, le=1, description="mixed: share of each round's queries asked of people (the "
                                                            "ones the ensemble disagrees on most).")
    raters_per_item: int = Field(1, ge=1, le=100, description="human / mixed: raters per clip pair; a pair's label is "
                                                              "their vote share (equal counts half, can't tell not at all).")
    gold_pairs: int = Field(2, ge=0, description="human / mixed: gold pairs per round's campaign, for calibration: clips of "
                                                 "the pool with a large true-return gap, the higher one the known answer.")
    gold_rate: float = Field(0.2, ge=0, le=1, description="human / mixed: probability that a rater's next item is a "
                                                          "gold pair (each rater sees each gold pair at most once).")
    human_instructions: str = Field("", description="human / mixed: instructions shown to raters above the clips (say what "
                                                    "the task is, e.g. 'swing the pendulum up and keep it upright').")
    clip_video_size: int = Field(320, ge=16, le=1920, description="human / mixed: longest side of the clip videos in "
                                                                  "pixels (larger frames are scaled down).")
    seed: int = Field(0, description="Random seed (environments, agent, clips, labels, reward models).")
    threads: int = Field(1, ge=1, description="torch threads (small MLPs: 1 is fastest).")
    resume: bool = Field(False, description="Continue from out/checkpoint (a run waiting for people goes on without it).")
    stop_at_round: int | None = Field(
        None, ge=1, description="Stop (with a checkpoint) in this round after its labels, before its reward model and "
                                "agent training; --resume continues.")
    keep_checkpoint: bool = Field(False, description="Keep out/checkpoint after the loop finishes.")
