"""Sampling K responses per prompt: the one generation function every stage calls.

Batched with left padding and the KV cache (the step-wise loop of models/decoding.py, which the
model server shares), stops each sequence at EOS, temperature / top-p / max-new-tokens,
reproducible for a seed on one machine. It samples the distribution Hugging Face's `generate`
samples (the same warpers; greedy decoding gives its tokens exactly), but draws among the top-k
candidates only, so a seed's random stream, and so its samples, differ from `generate`'s.
Sequences are sorted by prompt length before batching so a batch holds prompts of similar
length (little padding) and put back in order afterwards. The global RNG state is restored afterwards, so sampling
never perturbs a training loop's random stream.
"""

from __future__ import annotations

from contextlib import contextmanager

from dataclasses import dataclass, field

import torch

from alignloop.data.chat import encode_prompt
from alignloop.models.decoding import RowSampling, decode
from alignloop.progress import throughput_bar


# Sampling keeps the 50 most likely tokens before top-p: what Hugging Face's `generate` does by
# default (its `top_k=None` means "the default, 50"), and what this module did when it called it.
HF_TOP_K = 50


@dataclass
class Sampling:
    """Sampling settings, recorded with every sample."""

    num_samples: int = 1
    temperature: float = 0.7
    top_p: float = 1.0
    max_new_tokens: int = 128
    seed: int = 0
    batch_size: int = 16

    def record(self) -> dict:
        return {"temperature": self.temperature, "top_p": self.top_p, "top_k": HF_TOP_K,
                "max_new_tokens": self.max_new_tokens, "seed": self.seed}


@dataclass
class Generations:
    """Flat lists, one entry per sampled sequence, prompt-major (prompt 0's K samples first)."""

    prompt_index: list[int] = field(default_factory=list)  # which prompt
    prompt_ids: list[list[int]] = field(default_factory=list)  # chat-templated prompt tokens
    response_ids: list[list[int]] = field(default_factory=list)  # up to and including EOS
    texts: list[str] = field(default_factory=list)  # decoded response, no special tokens
    finished: list[bool] = field(default_factory=list)  # ended with EOS within max_new_tokens

    def by_prompt(self, num_prompts: int) -> list[list[int]]:
        groups: list[list[int]] = [[] for _ in range(num_prompts)]
        for i, p in enumerate(self.prompt_index):
            groups[p].append(i)
        return groups


def eos_ids(model, tokenizer) -> list[int]:
    ids = {tokenizer.eos_token_id}
    gen_eos = model.generation_config.eos_token_id
    ids.update(gen_eos if isinstance(gen_eos, list) else [gen_eos] if gen_eos is not None else [])
    return sorted(i for i in ids if i is not None)


def pad_token(tokenizer, eos: list[int]) -> int:
    return tokenizer.pad_token_id if tokenizer.pad_token_id is not None else eos[0]


def _cut_at_eos(tokens: list[int], eos: set[int]) -> tuple[list[int], bool]:
    for i, t in enumerate(tokens):
        if t in eos:
            return tokens[: i + 1], True
    return tokens, False


@torch.no_grad()
@contextmanager
def contiguous_lm_head(model):
    """Feed the LM head a contiguous input while generating.

    The prefill hands the head the last position only, `hidden[:, -1:, :]`: a strided (B, 1, H)
    view. torch's CPU matmul turns that into a batched matmul against the (H, V) weight
    expanded to (B, H, V) and materialised, a copy of B x V x H values: 3.6 GB and ~4 s for
    B = 64 with SmolLM2's 49k vocabulary, a third of a 20-token batch. Contiguous, it is one
    (B, H) x (H, V) matmul.
    """
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    if head is None:
        yield
        return
    handle = head.register_forward_pre_hook(lambda module, args: tuple(a.contiguous() if torch.is_tensor(a) else a
                                                                      for a in args))
    try:
        yield
    finally:
        handle.remove()


def generate(model, tokenizer, prompts: list[list[dict[str, str]]], sampling: Sampling,
             show_progress: bool = True) -> Generations:
    """Sample `sampling.num_samples` responses for each chat prompt."""
    eos = eos_ids(model, tokenizer)
    pad_id = pad_token(tokenizer, eos)
    row = RowSampling(temperature=max(sampling.temperature, 0.0), top_p=sampling.top_p, top_k=HF_TOP_K)
    encoded = [encode_prompt(tokenizer, p) for p in prompts]
    seq_prompt = [p for p in range(len(prompts)) for _ in range(sampling.num_samples)]
    order = sorted(range(len(seq_prompt)), key=lambda i: (len(encoded[seq_prompt[i]]), i))
    responses: dict[int, list[int]] = {}
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    batches = [order[i: i + sampling.batch_size] for i in range(0, len(order), sampling.batch_size)]
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []), contiguous_lm_head(model), \
            throughput_bar(f"generate: sampling {len(order)} responses to {len(prompts)} prompts", len(order),
                           enabled=show_progress) as advance:
        for b, batch in enumerate(batches):
            torch.manual_seed(sampling.seed * 1_000_003 + b)
            out = decode(model, [encoded[seq_prompt[i]] for i in batch], pad_id, set(eos), [row] * len(batch),
                         sampling.max_new_tokens)
            for tokens, i in zip(out, batch):
                responses[i] = tokens
            advance(len(batch), sum(len(t) for t in out))  # the bar's tokens/s: tokens sampled
    model.train(was_training)

    result = Generations()
    eos_set = set(eos)
    for i, p in enumerate(seq_prompt):
        tokens, done = _cut_at_eos(responses[i], eos_set)
        result.prompt_index.append(p)
        result.prompt_ids.append(encoded[p])
        result.response_ids.append(tokens)
        result.finished.append(done)
        result.texts.append(tokenizer.decode(tokens, skip_special_tokens=True))
    return result

