"""The PPO actor-critic on one copy of the weights.

`PolicyWithValue` wraps a causal LM (LoRA-wrapped or fully trainable) and adds a value head
on its last hidden states, zero-initialised (so the first values are 0). One forward gives,
for every response token, the policy log-prob (logits divided by the sampling temperature),
the entropy and the value. In LoRA mode the frozen reference is the same module with the
adapter switched off (`reference_logprobs`): no second copy of the base weights.

Rollout layout (B sequences): the prompt region is left-padded to width P, the response
region right-padded to width R, so the token at response position j is predicted from
position P - 1 + j. Position ids come from the attention mask, exactly as in generation.
"""

from __future__ import annotations

from contextlib import nullcontext

import torch
from torch import nn

from alignloop.algorithms.ppo_losses import entropy_from_logits, logprobs_from_logits
from alignloop.models.forward import WrapsLM, backbone_and_head, unwrap_peft


def rollout_tensors(prompt_ids: list[list[int]], response_ids: list[list[int]], pad_id: int,
                    device=None) -> dict[str, torch.Tensor]:
    """input_ids / attention_mask (B, P+R), response_mask (B, R), on `device` (default: the CPU),
    and the prompt width P."""
    width_p = max(len(p) for p in prompt_ids)
    width_r = max(1, max(len(r) for r in response_ids))
    b = len(prompt_ids)
    ids = torch.full((b, width_p + width_r), pad_id, dtype=torch.long)
    attn = torch.zeros((b, width_p + width_r), dtype=torch.long)
    resp = torch.zeros((b, width_r), dtype=torch.long)
    for i, (p, r) in enumerate(zip(prompt_ids, response_ids)):
        ids[i, width_p - len(p): width_p] = torch.tensor(p)
        attn[i, width_p - len(p): width_p] = 1
        if r:
            ids[i, width_p: width_p + len(r)] = torch.tensor(r)
            attn[i, width_p: width_p + len(r)] = 1
            resp[i, : len(r)] = 1
    return {"input_ids": ids.to(device), "attention_mask": attn.to(device), "response_mask": resp.to(device),
            "prompt_width": width_p}


class PolicyWithValue(WrapsLM):
    def __init__(self, lm: nn.Module):
        super().__init__()
        self.lm = lm
        self.value_head = nn.Linear(lm.config.hidden_size, 1)
        nn.init.zeros_(self.value_head.weight)
        nn.init.zeros_(self.value_head.bias)

    def forward(self, input_ids, attention_mask, response_mask, prompt_width: int, temperature: float = 1.0,
                with_values: bool = True, adapter: bool = True, with_entropy: bool = True) -> dict[str, torch.Tensor]:
        """logprobs (and entropy, values): each (B, R), 0 on response padding. The rollout's and the
        reference's passes need the log-probs only: `with_entropy=False` skips the entropy's
        softmax over the vocabulary for every response token."""
        backbone, head = backbone_and_head(self.lm)
        position_ids = (attention_mask.cumsum(-1) - 1).clamp_min(0)
        switch = self.lm.disable_adapter() if not adapter else nullcontext()
        with switch:
            hidden = backbone(input_ids=input_ids, attention_mask=attention_mask,
                              position_ids=position_ids).last_hidden_state  # (B, P+R, H)
            width_r = response_mask.shape[1]
            h = hidden[:, prompt_width - 1: prompt_width - 1 + width_r]  # (B, R, H) predicts response tokens
            select = response_mask.bool()
            logits = head(h[select]).unsqueeze(0)  # (1, N, V): the LM head only on real tokens
        tokens = input_ids[:, prompt_width: prompt_width + width_r][select].unsqueeze(0)  # (1, N)
        out = {}
        parts = [("logprobs", logprobs_from_logits(logits, tokens, temperature)[0])]
        if with_entropy:
            parts.append(("entropy", entropy_from_logits(logits.detach(), temperature)[0]))
        for key, value in parts:
            full = torch.zeros(response_mask.shape, dtype=value.dtype, device=value.device)
            full[select] = value
            out[key] = full
        if with_values:
            out["values"] = self.value_head(h.to(self.value_head.weight.dtype)).squeeze(-1) * response_mask
        return out


@torch.no_grad()
def reference_logprobs(policy: PolicyWithValue, reference: nn.Module | None, batch: dict, temperature: float):
    """log pi_ref of the response tokens: the policy with its adapter off (LoRA), or the separate
    frozen reference model (full fine-tuning)."""
    if reference is None:
        return policy(**batch, temperature=temperature, with_values=False, adapter=False, with_entropy=False)["logprobs"]
    return reference(**batch, temperature=temperature, with_values=False, with_entropy=False)["logprobs"]


def lora_layers(lm: nn.Module) -> dict[str, nn.Module]:
    """{qualified name in the plain model: peft LoRA layer} of a LoRA-wrapped LM ({} otherwise)."""
    return {name: m for name, m in unwrap_peft(lm).named_modules() if hasattr(m, "get_delta_weight") and hasattr(m, "base_layer")}


class SamplingCopy:
    """A plain copy of the policy's LM, in `dtype`, that samples for it.

    `refresh()` writes the policy's current weights into the copy: each LoRA-adapted weight as
    W + scale * B A (summed in float32, then cast), every other trainable parameter as it is.
    Sampling from the copy is sampling from the policy up to `dtype` rounding, without peft's
    extra matmuls or autocast's per-step weight casts (about 1.4x faster on CPU, for one more
    copy of the weights in `dtype`). The policy itself is only read, by name at each refresh:
    build the copy before FSDP / ZeRO-3 shard the policy (they replace or empty its
    parameters in place) and refresh it while they are gathered (`train.common.whole_weights`).
    `release()` frees the weights `refresh()` rewrites, until the next refresh: the copy is idle
    while the policy trains, which is when a PPO iteration's memory peaks.
    """

    def __init__(self, lm: nn.Module, dtype: torch.dtype):
        import copy

        self.source, self.layers = lm, lora_layers(lm)
        plain = copy.deepcopy(lm)
        if self.layers:
            plain = plain.merge_and_unload()
        self.model = plain.to(dtype).requires_grad_(False).eval()
        params = dict(self.model.named_parameters())
        # parameters trained outside LoRA (full fine-tuning: all of them): (name in the policy, copy's parameter)
        self.pairs = [(name, params[name.replace(".base_layer", "")]) for name, p in unwrap_peft(lm).named_parameters()
                      if p.requires_grad and "lora_" not in name and name.replace(".base_layer", "") in params]
        rewritten = [self.model.get_submodule(name).weight for name in self.layers] + [dst for _, dst in self.pairs]
        self.rewritten = list({id(p): (p, p.shape) for p in rewritten}.values())  # (parameter, shape), a tied one once
        self.refresh()

    def release(self) -> None:
        for p, _ in self.rewritten:
            p.data = p.data.new_empty(0)

    @torch.no_grad()
    def refresh(self) -> nn.Module:
        for p, shape in self.rewritten:
            if p.shape != shape:  # released
                p.data = p.data.new_empty(shape)
        for name, layer in self.layers.items():
            merged = layer.base_layer.weight.float()
            for adapter in layer.active_adapters:
                if adapter in layer.lora_A:
                    merged = merged + layer.get_delta_weight(adapter).float()
            self.model.get_submodule(name).weight.copy_(merged)
        sources = dict(unwrap_peft(self.source).named_parameters())
        for name, dst in self.pairs:
            dst.copy_(sources[name])
        return self.model
