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

from alignloop.algorithms.reward_metrics import conservative_score, ensemble_stats
from alignloop.configs import SCORING_TOKEN_BUDGET
from alignloop.models.forward import after_shared_prompts, backbone_and_head

REWARD_CONFIG = "reward_config.json"
HEAD_FILE = "reward_head.safetensors"


def last_token_index(attention_mask: torch.Tensor) -> torch.Tensor:
    """(B,) index of the last non-padding token of each right-padded row."""
    return attention_mask.sum(dim=1) - 1


class RewardNet(nn.Module):
    """forward(...) -> rewards (B, E), unnormalised. Two layouts:

    - full sequences: input_ids / attention_mask (B, T), right-padded (prompt + response + EOS);
    - shared prompts: the G distinct prompts once (prompt_ids / prompt_mask (G, P), left-padded)
      and the B responses (input_ids / attention_mask (B, R), right-padded) with `group` (B,)
      saying whose prompt each response continues. The prompts' keys and values are computed
      once and reused by their K responses (gradients flow through them): the K responses of a
      ranking cost one prompt encoding instead of K.

    Not sharded per decoder layer under FSDP (no `_no_split_modules`, unlike the policy's
    wrappers): with one unit per layer, torch 2.13's FSDP2 fails in the backward of the
    shared-prompt pass on CPU ("setStorage: sizes [32, 16] ... out of bounds for storage of
    size 0": by its shape a LoRA B of k_proj, freed before the backward reached it), so the whole
    net is one FSDP unit: sharded at rest, gathered whole for each forward.
    """

    def __init__(self, lm: nn.Module, num_heads: int = 1):
        super().__init__()
        self.lm = lm
        hidden = lm.config.hidden_size
        self.head = nn.Linear(hidden, num_heads)
        nn.init.normal_(self.head.weight, std=1.0 / math.sqrt(hidden + 1))
        nn.init.zeros_(self.head.bias)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, prompt_ids: torch.Tensor | None = None,
                prompt_mask: torch.Tensor | None = None, group: torch.Tensor | None = None) -> torch.Tensor:
        backbone, _ = backbone_and_head(self.lm)
        if prompt_ids is None:
            hidden = backbone(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state  # (B, T, H)
        else:
            _, hidden = after_shared_prompts(backbone, prompt_ids, prompt_mask, input_ids, attention_mask,
                                             group)  # (B, R, H)
        rows = torch.arange(input_ids.shape[0], device=input_ids.device)
        last = hidden[rows, last_token_index(attention_mask)]  # (B, H)
        return self.head(last.to(self.head.weight.dtype))  # (B, E)


def encode_group(tokenizer, chat: list[dict[str, str]], responses: list[str], max_length: int):
    """(prompt ids, [response ids + EOS]) of one prompt's responses, at most `max_length` each.

    A prompt longer than max_length // 2 keeps its last max_length // 2 tokens (its end, next
    to the answer, matters most); responses are then cut to what is left. The rule depends on
    the prompt alone, so a response gets the same tokens whichever responses it is scored with."""
    from alignloop.data.chat import encode_prompt, encode_response

    prompt = encode_prompt(tokenizer, chat)[-(max_length // 2):]
    return prompt, [encode_response(tokenizer, r)[: max_length - len(prompt)] for r in responses]


def grouped_batch(prompts: list[list[int]], responses: list[list[int]], group: list[int], pad_id: int,
                  device) -> dict[str, torch.Tensor]:
    """The shared-prompt inputs of `RewardNet.forward`: prompts left-padded, responses right-padded."""
    from alignloop.data.padding import left_pad, right_pad

    prompt_ids, prompt_mask = left_pad(prompts, pad_id)
    ids = right_pad(responses, pad_id)
    mask = right_pad([[1] * len(r) for r in responses], 0)
    return {"input_ids": ids.to(device), "attention_mask": mask.to(device), "prompt_ids": prompt_ids.to(device),
            "prompt_mask": prompt_mask.to(device), "group": torch.tensor(group, device=device)}


SCORING_WINDOW = 1024  # responses read (and sorted by length) at a time: what bounds the memory of a long stream


def group_length(group: tuple[list[int], list[list[int]]]) -> int:
    """The padded width one (prompt, responses) group needs: its prompt + its longest response."""
    prompt, responses = group
    return len(prompt) + max(len(r) for r in responses)


def iter_raw_rewards(net: RewardNet, groups, pad_id: int, token_budget: int = SCORING_TOKEN_BUDGET,
                     window: int | None = None, autocast_dtype: torch.dtype | None = None,
                     advance=None, device=None):
    """(K, E) unnormalised rewards of each (prompt, K responses) group of the iterable `groups`,
    yielded in input order: forward-only (`torch.inference_mode`, no autograd state).

    The stream is read `window` responses (default SCORING_WINDOW) at a time (`data.batching.windows`); a window's groups
    are sorted by length and cut into batches of at most `token_budget` padded tokens
    (`data.batching.token_budget_batches`, a group's K responses kept together so that its
    prompt is encoded once), so memory stays that of one window whatever the stream's length.
    `autocast_dtype` (bf16 / fp16) runs the batches under autocast, as the model was trained;
    `advance(n_sequences, n_tokens)` is called after each batch (a progress bar). `net` may be
    wrapped (DDP, Accelerate): then give its `device`."""
    from alignloop.data.batching import token_budget_batches, windows

    device = torch.device(device) if device is not None else net.head.weight.device
    was_training = net.training
    net.eval()
    autocast = (torch.autocast(device.type, dtype=autocast_dtype) if autocast_dtype is not None
                else torch.autocast(device.type, enabled=False))
    try:
        for chunk in windows(groups, window or SCORING_WINDOW, rows=lambda g: len(g[1])):
            out: list[torch.Tensor | None] = [None] * len(chunk)
            lengths = [group_length(g) for g in chunk]
            for batch in token_budget_batches(lengths, token_budget, rows=[len(g[1]) for g in chunk]):
                prompts = [chunk[i][0] for i in batch]
                responses = [r for i in batch for r in chunk[i][1]]
                group = [j for j, i in enumerate(batch) for _ in chunk[i][1]]
                with torch.inference_mode(), autocast:
                    rewards = net(**grouped_batch(prompts, responses, group, pad_id, device)).float().cpu()  # (B, E)
                offset = 0
                for i in batch:
                    k = len(chunk[i][1])
                    out[i] = rewards[offset: offset + k].clone()  # a plain tensor (not an inference one), its own storage
                    offset += k
                if advance is not None:
                    advance(len(responses), sum(len(chunk[i][0]) + sum(len(r) for r in chunk[i][1]) for i in batch))
            yield from out
    finally:
        net.train(was_training)


def raw_rewards(net: RewardNet, groups, pad_id: int, token_budget: int = SCORING_TOKEN_BUDGET,
                autocast_dtype: torch.dtype | None = None, advance=None, device=None) -> torch.Tensor:
    """(N, E) unnormalised rewards of the responses of (prompt, responses) groups, in order
    (`iter_raw_rewards` concatenated)."""
    out = list(iter_raw_rewards(net, groups, pad_id, token_budget, autocast_dtype=autocast_dtype, advance=advance,
                                device=device))
    return torch.cat(out) if out else torch.empty(0, getattr(net, "module", net).head.out_features)


def save_reward_model(net: RewardNet, tokenizer, out: Path, base: str, mean: list[float], std: list[float],
                      max_length: int, extra: dict | None = None, state_dict: dict | None = None) -> None:
    """The backbone (adapter or full model, via save_model), the heads and the normalisation;
    `state_dict`: the net's whole state when its own is sharded (FSDP / ZeRO-3), else None."""
    from alignloop.models.loading import recorded_base, save_model

    out = Path(out)
    state = net.state_dict() if state_dict is None else state_dict
    save_model(net.lm, tokenizer, out, base=base,
               state_dict=None if state_dict is None else {k[3:]: v for k, v in state.items() if k.startswith("lm.")})
    save_file({k[5:]: v.detach().cpu().contiguous() for k, v in state.items() if k.startswith("head.")}, out / HEAD_FILE)
    config = {"num_heads": net.head.out_features, "mean": mean, "std": std, "max_length": max_length,
              **recorded_base(base, out), **(extra or {})}
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

    def encode(self, chat, responses: list[str]) -> tuple[list[int], list[list[int]]]:
        """(prompt ids, response ids) of one prompt's responses, as they are scored."""
        chat = [{"role": "user", "content": chat}] if isinstance(chat, str) else chat
        return encode_group(self.tokenizer, chat, responses, self.config["max_length"])

    def iter_score_groups(self, items, token_budget: int = SCORING_TOKEN_BUDGET, advance=None):
        """For each (prompt, [responses]) of the iterable `items`, in order: (mean, spread,
        members), normalised, (K,), (K,), (K, E). Streams (`iter_raw_rewards`): memory bounded
        by one window, whatever the number of items."""
        raw = iter_raw_rewards(self.net, (self.encode(chat, rs) for chat, rs in items), self.tokenizer.pad_token_id,
                               token_budget, advance=advance)
        for r in raw:
            members = (r - self.mean) / self.std
            yield (*ensemble_stats(members, dim=1), members)

    def score_ensemble(self, prompts: list, responses: list[str], token_budget: int = SCORING_TOKEN_BUDGET,
                       advance=None):
        """(mean, spread, members) over the ensemble heads, normalised: (N,), (N,), (N, E).
        Responses to the same prompt share one encoding of it; length-bucketed, forward-only."""
        chats = [[{"role": "user", "content": p}] if isinstance(p, str) else p for p in prompts]
        by_prompt: dict[str, list[int]] = {}
        for i, chat in enumerate(chats):
            by_prompt.setdefault(json.dumps(chat, sort_keys=True), []).append(i)
        order = [i for idx in by_prompt.values() for i in idx]
        items = ((chats[idx[0]], [responses[i] for i in idx]) for idx in by_prompt.values())
        members = torch.empty(len(responses), self.net.head.out_features)
        scored = [m for _, _, m in self.iter_score_groups(items, token_budget, advance)]
        if scored:
            members[order] = torch.cat(scored)
        return (*ensemble_stats(members, dim=1), members)

    def score(self, prompts: list, responses: list[str], k: float = 0.0,
              token_budget: int = SCORING_TOKEN_BUDGET) -> list[float]:
        """Normalised reward per (prompt, response); with k > 0, mean - k * spread (ensembles)."""
        mean, spread, _ = self.score_ensemble(prompts, responses, token_budget)
        return conservative_score(mean, spread, k).tolist()

