"""Step-wise decoding with a KV cache: the loop under `generate` and under the model server.

A `DecodeBatch` holds the B rows being decoded together: their attention mask (B, T) over the
KV cache (left padding is 0), and the cache. `add` runs the prefill of new rows (left-padded
among themselves) and appends them to the batch, so rows may join a running batch (their cache
and mask left-padded to the batch's width); `step` feeds one token per row; both return the
next-token logits (B, V) in float32. `keep` drops rows (finished ones), and the columns that
are then padding in every row. Which token comes next is `pick_tokens`: per row greedy or
temperature / top-k / top-p sampling, from the global RNG or the row's own generator.

A row's next position is its number of real tokens (what Hugging Face's `generate` derives
from the attention mask: `cumsum(mask) - 1`), so padding never shifts a row's positions.
Rows of 3 and 1 prompt tokens after the prefill and one step (`.` is padding):

    mask  [[1 1 1 1],     next positions [4, 2]
           [. . 1 1]]
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass

import torch
from torch import Tensor
from transformers import DynamicCache
from transformers.cache_utils import DynamicLayer

from alignloop.data.padding import left_pad


@dataclass
class RowSampling:
    """How one row picks its tokens: greedy (temperature 0) or sampled with temperature, top-k
    (0: off) and top-p, from `generator` (None: torch's global RNG)."""

    temperature: float = 0.0
    top_p: float = 1.0
    top_k: int = 0
    generator: torch.Generator | None = None


def nucleus_filter(scores: Tensor, top_p: list[float]) -> Tensor:
    """(B, V) scores with each row's tokens outside its top-p nucleus set to -inf.

    The nucleus is the smallest set of most likely tokens whose probability reaches top_p, at
    least one token (Holtzman et al. 2020); row-wise, with the same arithmetic as Hugging Face's
    TopPLogitsWarper (a token is dropped where the ascending cumulative probability is
    <= 1 - top_p), so a batch of one setting samples exactly what `model.generate` samples.
    A row with top_p >= 1 keeps every token.
    """
    threshold = torch.tensor([1 - p if p < 1 else -1.0 for p in top_p], dtype=scores.dtype, device=scores.device)
    sorted_scores, sorted_index = torch.sort(scores, descending=False)
    cumulative = sorted_scores.softmax(dim=-1).cumsum(dim=-1)
    drop = cumulative <= threshold[:, None]
    drop[:, -1] = False  # the most likely token always stays
    return scores.masked_fill(drop.scatter(1, sorted_index, drop), float("-inf"))


def top_k_filter(scores: Tensor, top_k: list[int]) -> Tensor:
    """(B, V) scores with each row's tokens below its k-th largest score set to -inf (ties at
    the k-th score stay, as in Hugging Face's TopKLogitsWarper); a row with k = 0 keeps all."""
    k = torch.tensor([min(max(k, 1), scores.shape[-1]) for k in top_k], device=scores.device)
    # the k-th largest score by topk (the same element as a full sort's, ~20x cheaper over a 49k vocabulary)
    kth = scores.topk(int(k.max()), dim=-1).values.gather(1, (k - 1)[:, None])
    kth = kth.masked_fill(torch.tensor(top_k, device=scores.device)[:, None] <= 0, float("-inf"))
    return scores.masked_fill(scores < kth, float("-inf"))


def pick_tokens(logits: Tensor, rows: list[RowSampling]) -> Tensor:
    """(B,) next tokens for (B, V) logits: argmax for greedy rows; for the others a draw from
    softmax(nucleus(top_k(logits / temperature))) (Hugging Face's order of warpers).

    When every sampled row has a top-k, the draw is among the (B, k) candidates of `topk`
    only: the same distribution, for k random numbers a row instead of V (over SmolLM2's
    49,152-token vocabulary the full-width draw was a quarter of a sampling step). A tie at
    the k-th score keeps exactly k candidates (Hugging Face keeps every tied one; float
    logits almost never tie there). Rows without a generator draw together from the global
    RNG; a row with its own generator draws alone, so its tokens do not depend on which
    other rows share the batch.
    """
    tokens = logits.argmax(dim=-1)
    sampled = [i for i, r in enumerate(rows) if r.temperature > 0]
    if not sampled:
        return tokens
    index = torch.tensor(sampled, device=logits.device)
    temperature = torch.tensor([rows[i].temperature for i in sampled], dtype=logits.dtype, device=logits.device)
    scores = logits[index] / temperature[:, None]
    vocab = scores.shape[-1]
    top_k = [rows[i].top_k if 0 < rows[i].top_k < vocab else 0 for i in sampled]
    candidates = None  # (B, k) token ids of the candidate columns, most likely first; None: all V
    if min(top_k) > 0:
        scores, candidates = scores.topk(max(top_k), dim=-1)
        beyond = torch.arange(max(top_k), device=logits.device) >= torch.tensor(top_k, device=logits.device)[:, None]
        scores = scores.masked_fill(beyond, float("-inf"))  # a row with a smaller k than the widest
    elif max(top_k) > 0:  # some rows without top-k: filter the others over the whole vocabulary
        scores = top_k_filter(scores, top_k)
    top_p = [rows[i].top_p for i in sampled]
    if any(p < 1 for p in top_p):
        scores = nucleus_filter(scores, top_p)
    probs = scores.softmax(dim=-1)
    shared = [j for j, i in enumerate(sampled) if rows[i].generator is None]
    draws = torch.empty(len(sampled), dtype=torch.long, device=logits.device)
    if shared:
        draws[shared] = torch.multinomial(probs[shared], num_samples=1).squeeze(1)
    for j, i in enumerate(sampled):
        if rows[i].generator is not None:
            draws[j] = torch.multinomial(probs[j: j + 1], num_samples=1, generator=rows[i].generator)[0, 0]
    tokens[index] = draws if candidates is None else candidates.gather(1, draws[:, None]).squeeze(1)
    return tokens


def _takes_logits_to_keep(model) -> bool:
    base = model.get_base_model() if hasattr(model, "get_base_model") else model  # a peft model passes it on
    return "logits_to_keep" in inspect.signature(base.forward).parameters


class DecodeBatch:
    """Rows decoded together with one KV cache (see the module docstring)."""

    def __init__(self, model, pad_id: int):
        self.model = model
        self.pad_id = pad_id
        self.device = next(model.parameters()).device
        self.mask: Tensor | None = None  # (B, T): 1 on real tokens, 0 on left padding
        self.cache: DynamicCache | None = None
        self.last_logits_only = _takes_logits_to_keep(model)

    @property
    def size(self) -> int:
        return 0 if self.mask is None else self.mask.shape[0]

    @property
    def can_join(self) -> bool:
        """Whether rows may join while others run: the cache's layers are plain growing ones
        (a sliding-window or static cache cannot be left-padded here)."""
        return self.cache is None or all(type(layer) is DynamicLayer for layer in self.cache.layers)

    @torch.no_grad()
    def _forward(self, ids: Tensor, mask: Tensor, positions: Tensor, cache: DynamicCache) -> Tensor:
        extra = {"logits_to_keep": 1} if self.last_logits_only else {}
        out = self.model(input_ids=ids, attention_mask=mask, position_ids=positions, cache=cache,
                         use_cache=True, **extra)
        return out.logits[:, -1].to(copy=True, dtype=torch.float32)

    def add(self, prompts: list[list[int]]) -> Tensor:
        """Prefill `prompts` (token ids) and append them as the last rows; (len(prompts), V) logits."""
        ids, mask = left_pad(prompts, self.pad_id)
        ids, mask = ids.to(self.device), mask.to(self.device)
        positions = (mask.cumsum(-1) - 1).masked_fill(mask == 0, 1)
        cache = DynamicCache(config=self.model.config)
        logits = self._forward(ids, mask, positions, cache)
        if self.mask is None:
            self.mask, self.cache = mask, cache
        else:
            self._append(mask, cache)
        return logits

    def _append(self, mask: Tensor, cache: DynamicCache) -> None:
        if not self.can_join:
            raise ValueError("this model's cache does not let rows join a running batch")
        width = max(self.mask.shape[1], mask.shape[1])

        def widen(t: Tensor, dim: int) -> Tensor:  # left-pad dimension `dim` with zeros to `width`
            pad = [0, 0] * (t.dim() - 1 - dim) + [width - t.shape[dim], 0]
            return torch.nn.functional.pad(t, pad)

        self.mask = torch.cat([widen(self.mask, 1), widen(mask, 1)])
        for mine, new in zip(self.cache.layers, cache.layers):  # keys, values: (B, heads, T, head_dim)
            mine.keys = torch.cat([widen(mine.keys, 2), widen(new.keys, 2)])
            mine.values = torch.cat([widen(mine.values, 2), widen(new.values, 2)])

    def step(self, tokens: Tensor) -> Tensor:
        """Feed one token per row (B,); (B, V) logits of the token after it."""
        positions = self.mask.sum(-1, keepdim=True)  # real tokens so far = the new token's position
        self.mask = torch.cat([self.mask, self.mask.new_ones((self.size, 1))], dim=1)
        return self._forward(tokens[:, None].to(self.device), self.mask, positions, self.cache)

    def keep(self, rows: list[int]) -> None:
        """Keep only `rows` (in that order); columns that are padding in all of them are dropped."""
        if not rows:
            self.mask = self.cache = None
            return
        index = torch.tensor(rows, device=self.device)
        self.mask = self.mask[index]
        self.cache.batch_select_indices(index)
        start = int((self.mask.sum(0) > 0).nonzero()[0])
        if start and self.can_join:
            self.mask = self.mask[:, start:]
            for layer in self.cache.layers:
                layer.keys, layer.values = layer.keys[:, :, start:], layer.values[:, :, start:]


def decode(model, prompts: list[list[int]], pad_id: int, eos: set[int], rows: list[RowSampling],
           max_new_tokens: int) -> list[list[int]]:
    """New tokens for each prompt, decoded as one batch until every row has made an EOS or
    `max_new_tokens` tokens; each row is cut after its first EOS. A finished row is fed padding
    until a quarter of the batch has finished; then the finished rows leave it (`keep`), so
    the steps after run on the rows still going (each leaving copies the KV cache once)."""
    batch = DecodeBatch(model, pad_id)
    out: list[list[int]] = [[] for _ in prompts]
    live = list(range(len(prompts)))  # the prompt of each row in the batch
    done = torch.zeros(len(prompts), dtype=torch.bool)  # per row in the batch
    eos_ids = torch.tensor(sorted(eos))
    logits = batch.add(prompts)
    for t in range(max_new_tokens):
        tokens = pick_tokens(logits, [rows[i] for i in live]).cpu().masked_fill(done, pad_id)
        for row, token in enumerate(tokens.tolist()):
            if not done[row]:
                out[live[row]].append(token)
        done |= torch.isin(tokens, eos_ids)
        if bool(done.all()) or t + 1 == max_new_tokens:
            break
        if int(done.sum()) * 4 >= len(live):
            going = (~done).nonzero().squeeze(1).tolist()
            batch.keep(going)
            live, tokens, done = [live[r] for r in going], tokens[going], done[going]
        logits = batch.step(tokens)
    return out
