"""d-RLAIF (Lee et al. 2023, "RLAIF", section 2.3): a judge rates one response 1..10 and the
expected rating is the reward, with no reward model.

    reward = (sum_{i=1..10} i * P(i) - 5.5) / 4.5        in [-1, 1]

P(i) is read from ONE forward pass. After "Rating:" the judge's next token gives the first
digit; "10" is the only score of two tokens in tokenizers that split digits (SmolLM2: " ",
"1", "0"), so the pass runs on the prompt plus the token "1" and reads two positions:
    P(1..9 first) at the position before "1",   q = P("0" | ..."1") at the last position;
    P(10) = P("1") * q,   P(1) = P("1") * (1 - q),   P(2..9) as read.
A tokenizer with a single token for "10" reads all ten at the first position. The ten values
are renormalised (the judge's mass on non-scores is dropped).
"""

from __future__ import annotations

import torch

from alignloop.cai.constitution import Constitution, load_constitution
from alignloop.cai.judge import continuation_plan, last_logprobs, pad_id_of
from alignloop.cai.prompts import RATING_PREFIX, rating_chat
from alignloop.data.chat import encode_prompt

SCORES = [str(i) for i in range(1, 11)]


def rating_probs(lp_first: torch.Tensor, lp_zero: torch.Tensor | None) -> torch.Tensor:
    """(N, 10) distribution over the scores 1..10.

    lp_first: (N, 10) log-probs of the first token of each score at the first position (for a
              two-token "10", column 9 repeats the "1" column and is ignored);
    lp_zero:  (N,) log P("0" | ..."1") when "10" is two tokens, else None.
    """
    logp = lp_first.clone()
    if lp_zero is not None:
        log_q = lp_zero
        log_not_q = torch.log1p(-lp_zero.exp().clamp(max=1 - 1e-7))
        logp[:, 9] = lp_first[:, 0] + log_q
        logp[:, 0] = lp_first[:, 0] + log_not_q
    return torch.softmax(logp, dim=-1)


def rating_reward(probs: torch.Tensor) -> torch.Tensor:
    """(N, 10) -> (N,): expected rating sum_i i * P(i), rescaled from [1, 10] to [-1, 1]."""
    scores = torch.arange(1, 11, dtype=probs.dtype)
    return (probs @ scores - 5.5) / 4.5


class DirectJudge:
    """A reward source for PPO: `score(prompts, responses) -> rewards in [-1, 1]`.

    `model` is a loaded causal LM (then give `tokenizer`) or a model name (registry name,
    folder, HF id), loaded here on `device`.
    """

    def __init__(self, model, tokenizer=None, constitution: Constitution | None = None, device: str = "cpu",
                 dtype: str = "auto", name: str = "judge", batch_size: int = 8):
        if isinstance(model, str):
            from alignloop.models.loading import load_causal_lm, load_tokenizer

            model, tokenizer = load_causal_lm(model, dtype, device), load_tokenizer(model)
        self.model, self.tokenizer, self.name, self.batch_size = model, tokenizer, name, batch_size
        self.constitution = constitution or load_constitution()
        self.context_ids, conts = continuation_plan(tokenizer, RATING_PREFIX, [" " + s for s in SCORES])
        if any(len(c) != 1 for c in conts[:9]) or len({c[0] for c in conts[:9]}) != 9:
            raise ValueError("tokenizer: the ratings 1..9 are not single distinct tokens after 'Rating:'")
        ten = conts[9]
        if len(ten) == 1:
            self.ten_extra = None
        elif len(ten) == 2 and ten[0] == conts[0][0]:
            self.ten_extra = ten[1]  # the "0" after "1"
        else:
            raise ValueError(f"tokenizer: cannot read the rating 10 (tokens {ten})")
        self.first_ids = [c[0] for c in conts]

    def rating_probs(self, prompts: list[list[dict]], responses: list[str]) -> torch.Tensor:
        """(N, 10) the judge's distribution over the ratings 1..10."""
        seqs = [encode_prompt(self.tokenizer, rating_chat(p, r, self.constitution.rating_question)) + self.context_ids
                for p, r in zip(prompts, responses)]
        pad = pad_id_of(self.tokenizer)
        if self.ten_extra is None:
            return rating_probs(last_logprobs(self.model, seqs, self.first_ids, pad, 1, self.batch_size)[:, 0], None)
        seqs = [s + [self.first_ids[0]] for s in seqs]  # "... Rating: 1": read both positions
        lp = last_logprobs(self.model, seqs, self.first_ids + [self.ten_extra], pad, 2, self.batch_size)
        return rating_probs(lp[:, 0, :10], lp[:, 1, 10])

    def score(self, prompts: list[list[dict]], responses: list[str]) -> list[float]:
        """Rewards in [-1, 1], one per (prompt chat, response)."""
        if len(prompts) != len(responses):
            raise ValueError(f"{len(prompts)} prompts but {len(responses)} responses")
        if not prompts:
            return []
        return rating_reward(self.rating_probs(prompts, responses)).tolist()
