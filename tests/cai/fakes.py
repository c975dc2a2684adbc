"""Stub judge models whose next-token logits the test controls (they read the prompt text)."""

from __future__ import annotations

import re
from types import SimpleNamespace

import torch
from torch import nn

from alignloop.cai.prompts import ANSWER_PREFIX


class FakeChoiceLM(nn.Module):
    """A judge with a planted position bias.

    At the last position, option (A) gets the logit quality[response shown as A] + bias and
    option (B) gets quality[response shown as B]; every other token gets -10. With bias = 0 it
    is a perfect Bradley-Terry judge: P(A) = sigmoid(q_A - q_B).
    """

    def __init__(self, tokenizer, option_ids: list[int], quality: dict[str, float], bias: float = 0.0):
        super().__init__()
        self.anchor = nn.Parameter(torch.zeros(1))  # gives the module a device
        self.tokenizer, self.option_ids, self.quality, self.bias = tokenizer, option_ids, quality, bias
        self.seen: list[str] = []

    def forward(self, input_ids, attention_mask, position_ids=None, logits_to_keep=1):
        logits = torch.full((input_ids.shape[0], logits_to_keep, len(self.tokenizer)), -10.0)
        for row in range(input_ids.shape[0]):
            text = self.tokenizer.decode(input_ids[row][attention_mask[row].bool()])
            assert text.endswith(ANSWER_PREFIX), text[-60:]
            self.seen.append(text)
            last = text[text.rfind("Options:"):]
            a = re.search(r"\(A\) (.*)\n", last).group(1)
            b = re.search(r"\(B\) (.*)\n", last).group(1)
            logits[row, -1, self.option_ids[0]] = self.quality[a] + self.bias
            logits[row, -1, self.option_ids[1]] = self.quality[b]
        return SimpleNamespace(logits=logits)


class FakeRatingLM(nn.Module):
    """A d-RLAIF judge: logits `first` (token id -> logit) at the second-to-last position and
    `after_one` at the last one (what follows "... Rating: 1"); -10 elsewhere."""

    def __init__(self, vocab: int, first: dict[int, float], after_one: dict[int, float]):
        super().__init__()
        self.anchor = nn.Parameter(torch.zeros(1))
        self.vocab, self.first, self.after_one = vocab, first, after_one
        self.last_tokens: list[int] = []

    def forward(self, input_ids, attention_mask, position_ids=None, logits_to_keep=1):
        logits = torch.full((input_ids.shape[0], logits_to_keep, self.vocab), -10.0)
        for tok, value in self.first.items():
            logits[:, -min(2, logits_to_keep), tok] = value
        if logits_to_keep == 2:
            for tok, value in self.after_one.items():
                logits[:, -1, tok] = value
        self.last_tokens += input_ids[:, -1].tolist()
        return SimpleNamespace(logits=logits)
