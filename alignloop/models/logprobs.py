"""Sequence log-probs of responses, each distinct prompt encoded once (DPO, KTO).

    log pi(y | x) = sum_j log pi(y_j | x, y_<j)        over the response tokens and the closing EOS

`ResponseLogprobs` takes the reward model's shared-prompt layout (`reward_model.grouped_batch`):
the G distinct prompts once (left-padded), the B responses right-padded, `group` (B,) naming
each response's prompt. The prompts' keys and values are computed once and reused by their
responses (gradients flow through them), so the K responses of a ranking cost one prompt
encoding. Token j of a response is predicted from the hidden state before it: the prompt's
last position for j = 0, the response's position j - 1 after that. The LM head runs only on
real response tokens. With LoRA, `adapter=False` gives the frozen reference: the same weights
with the adapter switched off, no second copy.
"""

from __future__ import annotations

from contextlib import nullcontext

import torch
import torch.nn.functional as F
from torch import nn

from alignloop.models.forward import WrapsLM, after_shared_prompts, backbone_and_head


class ResponseLogprobs(WrapsLM):
    """forward(input_ids, attention_mask (B, R), prompt_ids, prompt_mask (G, P), group (B,),
    adapter=True) -> (B,) float32 summed log-probs of each response's tokens."""

    def __init__(self, lm: nn.Module):
        super().__init__()
        self.lm = lm

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, prompt_ids: torch.Tensor,
                prompt_mask: torch.Tensor, group: torch.Tensor, adapter: bool = True) -> torch.Tensor:
        backbone, head = backbone_and_head(self.lm)
        with self.lm.disable_adapter() if not adapter else nullcontext():
            # 1) each distinct prompt once, 2) the responses after their prompt's keys and values
            prompt_hidden, hidden = after_shared_prompts(backbone, prompt_ids, prompt_mask, input_ids, attention_mask,
                                                         group)  # (G, P, H), (B, R, H)
            # 3) the state before each response token, and the LM head on the real tokens only
            before = torch.cat([prompt_hidden[:, -1][group].unsqueeze(1), hidden[:, :-1]], dim=1)  # (B, R, H)
            select = attention_mask.bool()
            logits = head(before[select])  # (N, V)
        token_logp = -F.cross_entropy(logits.float(), input_ids[select], reduction="none")  # (N,)
        rows = torch.arange(input_ids.shape[0], device=input_ids.device).unsqueeze(1).expand_as(select)[select]
        return torch.zeros(input_ids.shape[0], dtype=token_logp.dtype, device=token_logp.device).index_add(0, rows, token_logp)
