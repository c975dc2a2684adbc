"""Forward passes that compute the LM head only where it is needed.

The LM head of a small model is a large share of its compute (SmolLM2-135M: 576 x 49152
weights, a fifth of the model), and SFT / PPO need next-token scores on response tokens
only. `ResponseNLL` runs the backbone on the whole sequence and the head on the response
positions alone. It is an `nn.Module`, so Accelerate (DDP, DeepSpeed) wraps it as a whole
and gradient synchronisation works as usual.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


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
