"""Generation: reproducible for a seed, stops at EOS, left padding is harmless."""

import torch

from alignloop.models.generation import Sampling, generate

PROMPTS = [[{"role": "user", "content": "Hi"}], [{"role": "user", "content": "Tell me a long story about a river."}]]


def test_same_seed_same_samples_other_seed_differs(tiny):
    model, tok = tiny
    s = Sampling(num_samples=3, max_new_tokens=10, seed=7, batch_size=4)
    a, b = generate(model, tok, PROMPTS, s), generate(model, tok, PROMPTS, s)
    assert a.response_ids == b.response_ids and a.texts == b.texts
    c = generate(model, tok, PROMPTS, Sampling(num_samples=3, max_new_tokens=10, seed=8, batch_size=4))
    assert c.response_ids != a.response_ids
    assert a.prompt_index == [0, 0, 0, 1, 1, 1]


def test_sampling_leaves_the_global_rng_alone(tiny):
    model, tok = tiny
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    generate(model, tok, PROMPTS, Sampling(num_samples=2, max_new_tokens=4))
    assert torch.equal(torch.rand(3), expected)


def test_greedy_batched_with_left_padding_equals_one_at_a_time(tiny):
    model, tok = tiny
    greedy = Sampling(num_samples=1, temperature=0, max_new_tokens=8, batch_size=8)
    together = generate(model, tok, PROMPTS, greedy)
    alone = [generate(model, tok, [p], greedy).response_ids[0] for p in PROMPTS]
    assert together.response_ids == alone


def test_stops_at_eos(tiny):
    model, tok = tiny
    calls = {"n": 0}

    def force_eos_from_third_step(module, inputs, output):
        calls["n"] += 1
        if calls["n"] >= 3:  # call 1 is the prefill (token 1); calls 2, 3 make tokens 2, 3
            output[..., tok.eos_token_id] = 1e4
        return output

    handle = model.get_output_embeddings().register_forward_hook(force_eos_from_third_step)
    try:
        g = generate(model, tok, PROMPTS[:1], Sampling(num_samples=4, max_new_tokens=20, batch_size=4))
    finally:
        handle.remove()
    assert calls["n"] == 3  # generation ended as soon as every row finished
    for ids, done, text in zip(g.response_ids, g.finished, g.texts):
        assert done and len(ids) == 3 and ids[-1] == tok.eos_token_id
        assert "<|im_end|>" not in text


def test_lm_head_sees_contiguous_inputs_only_while_generating(tiny):
    """The prefill's strided last-position slice reaches the LM head contiguous (no (B, H, V)
    weight copy); the hook is gone afterwards and greedy output is unchanged."""
    model, tok = tiny
    head = model.get_output_embeddings()
    raw, seen = [], []
    spies = [head.register_forward_pre_hook(lambda m, args: raw.append(args[0].is_contiguous())),
             head.register_forward_hook(lambda m, args, out: seen.append(args[0].is_contiguous()))]
    greedy = Sampling(num_samples=2, temperature=0, max_new_tokens=4, batch_size=4)
    try:
        out = generate(model, tok, PROMPTS, greedy)
    finally:
        for spy in spies:
            spy.remove()
    assert raw[0] is False  # the prefill's slice, as transformers passes it
    assert seen and all(seen)
    assert not head._forward_pre_hooks  # removed after generate
    ids = torch.tensor([out.prompt_ids[0] + out.response_ids[0][:-1]])
    with torch.no_grad():
        logits = model(input_ids=ids).logits[0, len(out.prompt_ids[0]) - 1:]
    assert logits.argmax(-1).tolist()[: len(out.response_ids[0])] == out.response_ids[0][: logits.shape[0]]
