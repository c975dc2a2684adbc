"""Chat templating and tokenisation with a response mask (no torch here: lists of ints).

The prompt is rendered with the tokenizer's own chat template and the generation prompt
(`<|im_start|>assistant\\n` for ChatML); the response is tokenised on its own and followed by
EOS, exactly what generation produces, so SFT, the reward model and PPO see one layout:

    input_ids      = prompt_ids + response_ids + [eos]
    response_mask  = [0] * len(prompt_ids) + [1] * (len(response_ids) + 1)
"""

from __future__ import annotations

from typing import Any


def render_prompt(tokenizer: Any, messages: list[dict[str, str]]) -> str:
    """The chat-templated prompt text, ending where the assistant's answer starts."""
    return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)


def encode_prompt(tokenizer: Any, messages: list[dict[str, str]]) -> list[int]:
    return tokenizer(render_prompt(tokenizer, messages), add_special_tokens=False)["input_ids"]


def encode_response(tokenizer: Any, response: str, add_eos: bool = True) -> list[int]:
    ids = tokenizer(response, add_special_tokens=False)["input_ids"]
    return ids + [tokenizer.eos_token_id] if add_eos else ids


def tokenize_example(tokenizer: Any, messages: list[dict[str, str]], response: str,
                     max_length: int | None = None) -> dict[str, list[int]]:
    """input_ids and response_mask (1 on response tokens and the closing EOS).

    Too long: the prompt is cut from the left (its end, next to the answer, matters most),
    keeping at least half of `max_length` for the response, which is then cut at the end.
    """
    prompt_ids = encode_prompt(tokenizer, messages)
    response_ids = encode_response(tokenizer, response)
    if max_length is not None and len(prompt_ids) + len(response_ids) > max_length:
        keep_prompt = max(max_length - len(response_ids), max_length // 2)
        prompt_ids = prompt_ids[-keep_prompt:]
        response_ids = response_ids[: max_length - len(prompt_ids)]
    return {
        "input_ids": prompt_ids + response_ids,
        "response_mask": [0] * len(prompt_ids) + [1] * len(response_ids),
    }
