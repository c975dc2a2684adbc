"""Chat templating and response masks."""

from alignloop.data.chat import encode_prompt, render_prompt, tokenize_example


def test_response_mask_covers_response_and_eos(tiny):
    _, tok = tiny
    msgs = [{"role": "user", "content": "Name a fruit."}]
    ex = tokenize_example(tok, msgs, "An apple.")
    prompt_ids = encode_prompt(tok, msgs)
    assert render_prompt(tok, msgs).endswith("<|im_start|>assistant\n")
    n = len(prompt_ids)
    assert ex["input_ids"][:n] == prompt_ids
    assert ex["response_mask"] == [0] * n + [1] * (len(ex["input_ids"]) - n)
    assert ex["input_ids"][-1] == tok.eos_token_id
    assert tok.decode(ex["input_ids"][n:-1]) == "An apple."


def test_truncation_keeps_the_end_of_the_prompt(tiny):
    _, tok = tiny
    msgs = [{"role": "user", "content": "word " * 200 + "final question?"}]
    ex = tokenize_example(tok, msgs, "short answer", max_length=64)
    assert len(ex["input_ids"]) == 64
    assert sum(ex["response_mask"]) == len(tok("short answer", add_special_tokens=False)["input_ids"]) + 1
    assert "assistant" in tok.decode(ex["input_ids"])
