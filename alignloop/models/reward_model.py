"""The reward model: a transformer backbone with scalar heads, and its scoring API.

    r(x, y) = head(h_last(x, y))       h_last: the hidden state at the last non-padding token
                                       (the EOS that closes the response)

`RewardNet` is the trainable module: any causal LM's decoder stack (LoRA or full) plus E
linear heads, one per ensemble member, initialised N(0, 1/sqrt(d+1)) (Stiennon et al. 2020)
with zero bias. `RewardModel` is what other stages use:

    rm = RewardModel.load("runs/x/reward")
    rm.score(prompts, responses)            # normalised mean over the ensemble, one float each
    rm.score(prompts, responses, k=1.0)     # conservative: mean - k * spread
    rm.score_ensemble(prompts, responses)   # (mean, spread, members) tensors

It scores TEXT: it tokenises with its own tokenizer and chat template, so it need not share
the policy's tokenizer. Rewards are normalised with the mean / std of the training responses,
stored in the folder (`reward_config.json`) and applied at scoring time.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from alignloop.models.forward import backbone_and_head

REWARD_CONFIG = "reward_config.json"
HEAD_FILE = "reward_head.safetensors"


def last_token_index(attention_mask: torch.Tensor) -> torch.Tensor:
    """(B,) index of the last non-padding token of each right-padded row."""
    return attention_mask.sum(dim=1) - 1


class RewardNet(nn.Module):
    """forward(input_ids (B,T), attention_mask (B,T)) -> rewards (B, E), unnormalised."""

    def __init__(self, lm: nn.Module, num_heads: int = 1):
        super().__init__()
        self.lm = lm
        hidden = lm.config.hidden_size
        self.head = nn.Linear(hidden, num_heads)
        nn.init.normal_(self.head.weight, std=1.0 / math.sqrt(hidden + 1))
        nn.init.zeros_(self.head.bias)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        backbone, _ = backbone_and_head(self.lm)
        hidden = backbone(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state  # (B, T, H)
        rows = torch.arange(input_ids.shape[0], device=input_ids.device)
        last = hidden[rows, last_token_index(attention_mask)]  # (B, H)
        return self.head(last.to(self.head.weight.dtype))  # (B, E)


def encode_texts(tokenizer, prompts: list, responses: list[str], max_length: int) -> list[list[int]]:
    """Token ids of (prompt, response) pairs: chat-templated prompt + response + EOS."""
    from alignloop.data.chat import tokenize_example

    out = []
    for prompt, response in zip(prompts, responses, strict=True):
        messages = [{"role": "user", "content": prompt}] if isinstance(prompt, str) else prompt
        out.append(tokenize_example(tokenizer, messages, response, max_length)["input_ids"])
    return out


def right_padded(seqs: list[list[int]], pad_id: int, device) -> tuple[torch.Tensor, torch.Tensor]:
    from alignloop.train.common import right_pad

    ids = right_pad(seqs, pad_id).to(device)
    mask = right_pad([[1] * len(s) for s in seqs], 0).to(device)
    return ids, mask


@torch.no_grad()
def raw_rewards(net: RewardNet, seqs: list[list[int]], pad_id: int, batch_size: int = 16) -> torch.Tensor:
    """(N, E) unnormalised rewards of tokenised sequences, batched by length (little padding)."""
    device = net.head.weight.device
    order = sorted(range(len(seqs)), key=lambda i: len(seqs[i]))
    out = torch.empty(len(seqs), net.head.out_features)
    was_training = net.training
    net.eval()
    for i in range(0, len(order), batch_size):
        idx = order[i: i + batch_size]
        ids, mask = right_padded([seqs[j] for j in idx], pad_id, device)
        out[idx] = net(ids, mask).float().cpu()
    net.train(was_training)
    return out


def save_reward_model(net: RewardNet, tokenizer, out: Path, base: str, mean: list[float], std: list[float],
                      max_length: int, extra: dict | None = None) -> None:
    """The backbone (adapter or full model, via save_model), the heads and the normalisation."""
    from alignloop.models.loading import save_model

    out = Path(out)
    save_model(net.lm, tokenizer, out, base=base)
    save_file({k: v.detach().cpu().contiguous() for k, v in net.head.state_dict().items()}, out / HEAD_FILE)
    config = {"num_heads": net.head.out_features, "mean": mean, "std": std, "max_length": max_length,
              "base": base, **(extra or {})}
    (out / REWARD_CONFIG).write_text(json.dumps(config, indent=2))


class RewardModel:
    """A trained reward model folder, ready to score (prompt, response) texts."""

    def __init__(self, net: RewardNet, tokenizer, config: dict, name: str):
        self.net, self.tokenizer, self.config, self.name = net, tokenizer, config, name
        self.mean = torch.tensor(config["mean"])
        self.std = torch.tensor(config["std"]).clamp_min(1e-8)

    @classmethod
    def load(cls, folder: str | Path, device: str | torch.device = "cpu", dtype: str = "auto") -> "RewardModel":
        from alignloop.models.loading import load_causal_lm, load_tokenizer

        folder = Path(folder)
        if not (folder / REWARD_CONFIG).exists():
            raise FileNotFoundError(f"{folder}: not a reward model folder ({REWARD_CONFIG} missing)")
        config = json.loads((folder / REWARD_CONFIG).read_text())
        lm = load_causal_lm(str(folder), dtype, device)
        net = RewardNet(lm, config["num_heads"])
        net.head.load_state_dict(load_file(folder / HEAD_FILE))
        net.to(device).eval()
        return cls(net, load_tokenizer(str(folder)), config, name=str(folder))

    def score_ensemble(self, prompts: list, responses: list[str], batch_size: int = 16):
        """(mean, spread, members) over the ensemble heads, normalised: (N,), (N,), (N, E)."""
        seqs = encode_texts(self.tokenizer, prompts, responses, self.config["max_length"])
        members = (raw_rewards(self.net, seqs, self.tokenizer.pad_token_id, batch_size) - self.mean) / self.std
        spread = members.std(dim=1) if members.shape[1] > 1 else torch.zeros(members.shape[0])
        return members.mean(dim=1), spread, members

    def score(self, prompts: list, responses: list[str], k: float = 0.0, batch_size: int = 16) -> list[float]:
        """Normalised reward per (prompt, response); with k > 0, mean - k * spread (ensembles)."""
        mean, spread, _ = self.score_ensemble(prompts, responses, batch_size)
        return (mean - k * spread).tolist()


# ---------------------------------------------------------------- alignloop score

from pydantic import Field  # noqa: E402

from alignloop.config import StageConfig, config_command  # noqa: E402


class ScoreConfig(StageConfig):
    """`alignloop score`: add reward-model scores to a samples file."""

    reward: Path = Field(..., description="Reward model folder (from `alignloop reward`).")
    data: Path = Field(..., description="Samples file (prompt + responses), e.g. from `alignloop generate`.")
    out: Path = Field(..., description="Output samples file with `rewards` added.")
    name: str = Field("reward", description="Key under `rewards` for the scores (ensembles add NAME_spread).")
    batch_size: int = Field(16, ge=1, description="Responses scored together.")
    device: str = Field("auto", description="auto | cpu | cuda | cuda:N.")


def run_score(cfg: ScoreConfig) -> Path:
    from alignloop.data.io import read_records, write_records
    from alignloop.data.records import Samples
    from alignloop.models.generation import pick_device

    records = read_records(cfg.data, Samples)
    rm = RewardModel.load(cfg.reward, pick_device(cfg.device))
    prompts = [r.chat() for r in records for _ in r.responses]
    responses = [x for r in records for x in r.responses]
    mean, spread, _ = rm.score_ensemble(prompts, responses, cfg.batch_size)
    offset, out = 0, []
    for r in records:
        k = len(r.responses)
        rewards = dict(r.rewards or {})
        rewards[cfg.name] = [round(x, 6) for x in mean[offset: offset + k].tolist()]
        if rm.config["num_heads"] > 1:
            rewards[f"{cfg.name}_spread"] = [round(x, 6) for x in spread[offset: offset + k].tolist()]
        out.append(r.model_copy(update={"rewards": rewards}))
        offset += k
    write_records(cfg.out, out)
    print(f"scored {len(responses)} responses of {len(records)} prompts: mean {mean.mean():.3f}, "
          f"std {mean.std():.3f}; wrote {cfg.out}")
    return Path(cfg.out)


command = config_command(ScoreConfig, run_score, "score",
                         help="Score the responses of a samples file with a reward model (adds `rewards`).")
