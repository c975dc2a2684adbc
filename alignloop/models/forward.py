"""Forward passes that compute the LM head only where it is needed.

The LM head of a small model is a large share of its compute (SmolLM2-135M: 576 x 49152
weights, a fifth of the model), and SFT / PPO need next-token scores on response tokens
only. `ResponseNLL` runs the backbone on the whole sequence and the head on the response
positions alone. It is an `nn.Module`, so Accelerate (DDP, DeepSpeed) wraps it as a whole
and gradient synchronisation works as usual.

`after_shared_prompts` is the shared-prompt pass of the reward model and of the DPO / KTO
log-probs: each distinct prompt encoded once, its keys and values read by each of its
responses (`PrefixLayer`: a cache that is read, never extended, so the responses' own keys and
values are not kept for every layer until the pass ends).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from transformers.cache_utils import Cache, DynamicLayer


def unwrap_peft(model: nn.Module) -> nn.Module:
    """The Hugging Face model inside a peft wrapper (the model itself when not wrapped)."""
    return model.get_base_model() if hasattr(model, "get_base_model") else model


def backbone_and_head(model: nn.Module) -> tuple[nn.Module, nn.Module]:
    """(decoder stack, LM head) of a Hugging Face causal LM, peft-wrapped or not."""
    base = unwrap_peft(model)
    return base.get_decoder(), base.get_output_embeddings()


class WrapsLM(nn.Module):
    """A module around a causal LM `self.lm` (peft-wrapped or not) that FSDP shards as it would
    the LM itself: one unit per decoder layer, the layer classes named by the LM's
    `_no_split_modules` (what Accelerate's TRANSFORMER_BASED_WRAP reads from the prepared module)."""

    @property
    def _no_split_modules(self) -> list[str] | None:
        return unwrap_peft(self.lm)._no_split_modules


def target_positions(response_mask: torch.Tensor) -> torch.Tensor:
    """(B, T-1) bool: position t predicts token t+1, which must be a response token."""
    return response_mask[:, 1:].bool()


class ResponseNLL(WrapsLM):
    """forward(input_ids (B,T), attention_mask (B,T), response_mask (B,T)) -> NLL (N,) of the
    N response tokens, in row-major order. Right padding."""

    def __init__(self, lm: nn.Module):
        super().__init__()
        self.lm = lm

    def forward(self, input_ids, attention_mask, response_mask):
        backbone, head = backbone_and_head(self.lm)
        hidden = backbone(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state  # (B, T, H)
        select = target_positions(response_mask)  # (B, T-1)
        logits = head(hidden[:, :-1][select])  # (N, V)
        return F.cross_entropy(logits.float(), input_ids[:, 1:][select], reduction="none")  # (N,)


class PrefixLayer(DynamicLayer):
    """One layer's cached prompt keys and values `(B, kv_heads, P, head_dim)`, read by the
    response tokens and never extended: `update` returns the prompt's states with the new
    tokens' appended and keeps nothing, so a layer's (P + R)-long states are freed when the
    layer is done instead of held for all layers until the forward pass ends (in a pass of
    B x (P + R) tokens, 2 x layers x B x (P + R) x kv_heads x head_dim numbers)."""

    def __init__(self, keys: torch.Tensor, values: torch.Tensor):
        super().__init__()
        self.keys, self.values, self.device, self.is_initialized = keys, values, keys.device, True

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args, **kwargs):
        return torch.cat([self.keys, key_states], dim=-2), torch.cat([self.values, value_states], dim=-2)


def prefix_cache(cache: Cache, group: torch.Tensor) -> Cache:
    """The prompts' cache `(G, ...)` as B rows, row b = prompt group[b], read-only (`PrefixLayer`).
    A cache with other than plain full-attention layers (sliding windows, linear attention) is
    only reordered and stays a growing cache."""
    if not all(type(layer) is DynamicLayer and layer.is_initialized for layer in cache.layers):
        cache.reorder_cache(group)
        return cache
    return Cache(layers=[PrefixLayer(layer.keys.index_select(0, group), layer.values.index_select(0, group))
                         for layer in cache.layers])


def after_shared_prompts(backbone: nn.Module, prompt_ids: torch.Tensor, prompt_mask: torch.Tensor,
                         input_ids: torch.Tensor, attention_mask: torch.Tensor,
                         group: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Hidden states of B responses, each after its prompt, every distinct prompt encoded once.

    prompt_ids, prompt_mask: `(G, P)`, left-padded; input_ids, attention_mask: `(B, R)`,
    right-padded; group: `(B,)`, each response's prompt. Returns the prompts' last hidden
    states `(G, P, H)` and the responses' `(B, R, H)`, positions continuing from each prompt's
    length. Gradients flow through the prompts' keys and values.

    The prompts' and responses' tokens are embedded in one lookup: the embedding's backward
    makes a dense (vocabulary, H) gradient per lookup (113 MB for SmolLM2-135M, allocated and
    zeroed each time), so one lookup per call, not one per pass, halves that work."""
    # 0) one embedding lookup for both passes
    embeds = backbone.get_input_embeddings()(torch.cat([prompt_ids.flatten(), input_ids.flatten()]))
    prompt_embeds, response_embeds = embeds.split([prompt_ids.numel(), input_ids.numel()])
    # 1) each distinct prompt once
    prompt_pos = (prompt_mask.cumsum(-1) - 1).clamp_min(0)
    encoded = backbone(inputs_embeds=prompt_embeds.view(*prompt_ids.shape, -1), attention_mask=prompt_mask,
                       position_ids=prompt_pos, use_cache=True)
    # 2) every response reads its prompt's keys and values, 3) positions continue from its length
    prompt_hidden, cache = encoded.last_hidden_state, prefix_cache(encoded.cache, group)
    del encoded  # the prompts' own (G-row) cache
    full_mask = torch.cat([prompt_mask[group], attention_mask], dim=1)  # (B, P + R)
    positions = prompt_mask.sum(dim=1)[group].unsqueeze(1) + torch.arange(input_ids.shape[1], device=input_ids.device)
    hidden = backbone(inputs_embeds=response_embeds.view(*input_ids.shape, -1), attention_mask=full_mask,
                      position_ids=positions, cache=cache, use_cache=True).last_hidden_state  # (B, R, H)
    return prompt_hidden, hidden
