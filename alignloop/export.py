"""`alignloop export`: plain Hugging Face folders that load with neither alignloop nor peft.

    alignloop export policy runs/q/ppo --out exported/policy      # AutoModelForCausalLM
    alignloop export reward runs/q/reward --out exported/reward   # AutoModelForSequenceClassification

A policy: the LoRA adapters folded into the weights (W + scale * B A), the tokenizer with its
chat template beside them, `generation_config.json` stopping at the same EOS ids as
`alignloop generate`; greedy decoding of a chat-templated prompt gives alignloop's tokens.

A reward model: the backbone (adapters folded in) under a `score` head, num_labels 1 and
`config.pad_token_id` set to a token that is not EOS (the head reads the last token that is
not padding, and alignloop's last token is the EOS closing the response). The normalisation is
folded into the head:

    alignloop:  r = (w . h + b - mean) / std
    exported:   logit = (w / std) . h            config.reward_offset = (b - mean) / std

transformers' `score` layer has no bias (`nn.Linear(hidden, num_labels, bias=False)` for every
decoder architecture), so the constant (b - mean) / std cannot live in the weights: it is
`config.reward_offset`, and `logit + reward_offset` is `RewardModel.score` (within 1e-4 in
float32). Differences between responses, all that a Bradley-Terry loss or a PPO with reward
whitening uses, are equal without it. The text to score is alignloop's layout: the prompt
rendered with the chat template and the generation prompt, the response, then EOS (ChatML's
template would add a newline after the EOS; the head must read the EOS itself), right-padded.

An ensemble of E members exports ONE folder with num_labels E (one backbone, as trained):
`logits.mean(-1) + mean(reward_offset)` is alignloop's score, `(logits + offset).std(-1)` its
spread; `--member I` exports member I alone with num_labels 1, the shape TRL, OpenRLHF and
verl load.
"""

from __future__ import annotations

import json
from contextlib import contextmanager
from pathlib import Path
from typing import Literal

import click
from pydantic import Field

from alignloop.config import ConfigError, StageConfig, config_command

EXPORT_INFO = "alignloop_export.json"
PAD_CANDIDATES = ("<|endoftext|>", "<pad>", "<|pad|>", "[PAD]")
POLICY_README = """# {name}

Exported by `alignloop export policy` from `{source}`: a plain causal LM (LoRA folded in).

```python
from transformers import AutoModelForCausalLM, AutoTokenizer
model, tok = AutoModelForCausalLM.from_pretrained("{out}"), AutoTokenizer.from_pretrained("{out}")
ids = tok.apply_chat_template([{{"role": "user", "content": "Hello!"}}], add_generation_prompt=True, return_tensors="pt", return_dict=True)
print(tok.decode(model.generate(**ids, do_sample=False, max_new_tokens=64)[0, ids["input_ids"].shape[1]:], skip_special_tokens=True))
```
"""
REWARD_README = """# {name}

Exported by `alignloop export reward` from `{source}`: `AutoModelForSequenceClassification`,
num_labels {labels}. The text is the chat-templated prompt (with the generation prompt), the
response, then the EOS token; `logit + config.reward_offset` is alignloop's normalised reward.

```python
from transformers import AutoModelForSequenceClassification, AutoTokenizer
model, tok = AutoModelForSequenceClassification.from_pretrained("{out}"), AutoTokenizer.from_pretrained("{out}")
text = tok.apply_chat_template([{{"role": "user", "content": "Hello!"}}], tokenize=False, add_generation_prompt=True) + "Hi there." + tok.eos_token
print(model(**tok(text, add_special_tokens=False, return_tensors="pt")).logits[0] + model.config.reward_offset)
```
"""


@contextmanager
def export_folder(out: Path):
    """A temporary folder beside `out`, renamed onto it when the block succeeds. An existing
    `out` is replaced only when it is empty or an earlier export."""
    from alignloop.data.io import atomic_folder

    out = Path(out)
    if out.exists() and any(out.iterdir()) and not (out / EXPORT_INFO).exists():
        raise ConfigError(f"--out {out}: exists and is not an alignloop export; give a new folder")
    with atomic_folder(out) as tmp:
        yield tmp


def pad_distinct_from_eos(tokenizer) -> int:
    """A padding id that is not EOS: the tokenizer's own, else a known padding token, else the
    first id that is not EOS (only the last real token must differ from it)."""
    eos = tokenizer.eos_token_id
    if tokenizer.pad_token_id is not None and tokenizer.pad_token_id != eos:
        return tokenizer.pad_token_id
    vocab = tokenizer.get_vocab()
    for token in (*PAD_CANDIDATES, tokenizer.unk_token, tokenizer.bos_token):
        if token is not None and token in vocab and vocab[token] != eos:
            return vocab[token]
    return 0 if eos != 0 else 1


class ExportPolicyConfig(StageConfig):
    """`alignloop export policy`."""

    model: str = Field(..., description="Policy: an alignloop model folder (LoRA adapter or full), e.g. from sft or ppo.")
    out: Path = Field(..., description="Output folder: a plain Hugging Face causal LM with its tokenizer.")
    dtype: Literal["float32", "bfloat16", "float16"] = Field("float32", description="Weight dtype of the export.")


class ExportRewardConfig(StageConfig):
    """`alignloop export reward`."""

    reward: str = Field(..., description="Reward model folder (from `alignloop reward`).")
    out: Path = Field(..., description="Output folder: AutoModelForSequenceClassification with its tokenizer.")
    member: int | None = Field(None, ge=0, description="Of an ensemble, export only this member (num_labels 1); "
                                                       "default: all E members as one head with E outputs.")
    dtype: Literal["float32", "bfloat16", "float16"] = Field("float32", description="Weight dtype of the export.")


def _info(tmp: Path, **info) -> None:
    (tmp / EXPORT_INFO).write_text(json.dumps(info, indent=2))


def run_export_policy(cfg: ExportPolicyConfig) -> Path:
    from alignloop.models.generation import eos_ids
    from alignloop.models.loading import load_causal_lm, load_tokenizer, model_info

    with export_folder(cfg.out) as tmp:
        model = load_causal_lm(cfg.model, cfg.dtype)  # adapters merged into the weights
        tokenizer = load_tokenizer(cfg.model)
        model.generation_config.eos_token_id = eos_ids(model, tokenizer)
        model.generation_config.pad_token_id = tokenizer.pad_token_id
        model.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
        _info(tmp, kind="policy", source=str(cfg.model), base=model_info(cfg.model).get("base"), dtype=cfg.dtype)
        (tmp / "README.md").write_text(POLICY_README.format(name=Path(cfg.out).name, source=cfg.model, out=cfg.out))
    click.echo(f"exported policy {cfg.model} -> {cfg.out} (AutoModelForCausalLM, {cfg.dtype}, adapters folded in)")
    return Path(cfg.out)


def reward_classifier(rm, member: int | None, dtype: str):
    """(AutoModelForSequenceClassification with the normalisation folded into `score`, offsets)."""
    import copy

    import torch
    from transformers import AutoModelForSequenceClassification

    from alignloop.models.loading import resolve_dtype

    lm, head = rm.net.lm, rm.net.head
    members = list(range(head.out_features)) if member is None else [member]
    if members[-1] >= head.out_features:
        raise ConfigError(f"--member {member}: the ensemble has {head.out_features} members (0..{head.out_features - 1})")
    config = copy.deepcopy(lm.config)
    config.num_labels, config.problem_type = len(members), "regression"
    config.pad_token_id = pad_distinct_from_eos(rm.tokenizer)
    config.architectures = None
    seq = AutoModelForSequenceClassification.from_config(config, dtype=torch.float32)
    if not isinstance(getattr(seq, "score", None), torch.nn.Linear):
        raise ConfigError(f"{type(seq).__name__}: no linear `score` head to hold the reward head")
    getattr(seq, seq.base_model_prefix).load_state_dict(getattr(lm, lm.base_model_prefix).state_dict())
    std, mean = rm.std[members].double(), rm.mean[members].double()
    with torch.no_grad():
        seq.score.weight.copy_((head.weight[members].double() / std[:, None]).float())  # (E, H)
    offsets = ((head.bias[members].double() - mean) / std).tolist()
    seq.config.reward_offset = offsets[0] if len(offsets) == 1 else offsets
    seq.config.reward_normalization = {"mean": mean.tolist(), "std": std.tolist(),
                                       "head_bias": head.bias[members].tolist(), "members": members}
    seq.config.reward_max_length = rm.config["max_length"]
    return seq.to(resolve_dtype(dtype)).eval(), offsets


def run_export_reward(cfg: ExportRewardConfig) -> Path:
    from alignloop.models.reward_model import RewardModel

    with export_folder(cfg.out) as tmp:
        rm = RewardModel.load(cfg.reward, "cpu", "float32")
        seq, offsets = reward_classifier(rm, cfg.member, cfg.dtype)
        tokenizer = rm.tokenizer
        tokenizer.pad_token = tokenizer.convert_ids_to_tokens(seq.config.pad_token_id)
        tokenizer.padding_side = "right"
        seq.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
        _info(tmp, kind="reward", source=str(cfg.reward), member=cfg.member, reward_offset=offsets, dtype=cfg.dtype)
        (tmp / "README.md").write_text(REWARD_README.format(name=Path(cfg.out).name, source=cfg.reward, out=cfg.out,
                                                            labels=len(offsets)))
    click.echo(f"exported reward model {cfg.reward} -> {cfg.out} (AutoModelForSequenceClassification, num_labels "
               f"{len(offsets)}, pad token {tokenizer.pad_token!r}; add config.reward_offset "
               f"{', '.join(f'{o:.4f}' for o in offsets)} for alignloop's normalised reward)")
    return Path(cfg.out)


policy_command = config_command(ExportPolicyConfig, run_export_policy, "policy", positional=("model",),
                                help="A plain causal-LM folder of a policy (LoRA folded in), tokenizer and chat template beside it.")
reward_command = config_command(ExportRewardConfig, run_export_reward, "reward", positional=("reward",),
                                help="An AutoModelForSequenceClassification folder of a reward model (normalisation folded in).")
group = click.Group("export", help="Plain Hugging Face folders that load without alignloop or peft.",
                    commands={"policy": policy_command, "reward": reward_command},
                    context_settings={"max_content_width": 110})
