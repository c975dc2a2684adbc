"""The step-wise decoding loop (models/decoding.py): greedy, it decodes what Hugging Face's
`generate` decodes; sampled, it draws from the distribution of HF's warpers; its warpers are
HF's row by row; and rows that join a running batch or leave it keep decoding what they would
alone."""

import pytest
import torch
from transformers import GenerationConfig
from transformers.generation.logits_process import TopKLogitsWarper, TopPLogitsWarper

from alignloop.data.chat import encode_prompt
from alignloop.models.decoding import DecodeBatch, RowSampling, nucleus_filter, pick_tokens, top_k_filter
from alignloop.models.generation import Sampling, eos_ids, generate

PROMPTS = [[{"role": "user", "content": "Hi"}], [{"role": "user", "content": "Tell me a long story about a river."}],
           [{"role": "user", "content": "What is 2+2?"}]]


@pytest.mark.parametrize("eos_token", [None, "frequent"])
def test_greedy_generate_decodes_what_hugging_face_generate_decodes(talky, eos_token, monkeypatch):
    """Token for token, with and without rows finishing early (then the finished rows leave
    the batch midway, which `generate` never does)."""
    model, tok = talky
    s = Sampling(num_samples=2, temperature=0.0, max_new_tokens=12, seed=4, batch_size=6)
    eos = eos_ids(model, tok)
    if eos_token == "frequent":  # two tokens greedy decoding makes, as EOS, so rows stop at 3 different steps
        first = generate(model, tok, PROMPTS, s, show_progress=False).response_ids

        def stops(pair):  # the rows' lengths were `pair` EOS tokens
            return [next((j + 1 for j, t in enumerate(r) if t in pair), len(r)) for r in first]
        made = sorted({t for r in first for t in r})
        eos = next([a, b] for a in made for b in made if a < b and len(set(stops((a, b)))) > 2)
        monkeypatch.setattr(model.generation_config, "eos_token_id", eos)
    ours = generate(model, tok, PROMPTS, s, show_progress=False)
    if eos_token == "frequent":
        lengths = [len(r) for r in ours.response_ids]
        assert min(lengths) < 12 and len(set(lengths)) > 2  # rows did leave the batch at different steps
    config = GenerationConfig(max_new_tokens=12, do_sample=False, eos_token_id=eos, pad_token_id=tok.pad_token_id)
    encoded = [encode_prompt(tok, p) for p in PROMPTS]
    order = sorted(range(6), key=lambda i: (len(encoded[i // 2]), i))  # generate's batch order
    from alignloop.data.padding import left_pad

    ids, mask = left_pad([encoded[i // 2] for i in order], tok.pad_token_id)
    with torch.no_grad():
        out = model.generate(input_ids=ids, attention_mask=mask, generation_config=config)
    for row, i in enumerate(order):
        theirs = out[row, ids.shape[1]:].tolist()
        if any(t in eos for t in theirs):
            theirs = theirs[: next(k for k, t in enumerate(theirs) if t in eos) + 1]
        assert ours.response_ids[i] == theirs


def warped_probs(logits: torch.Tensor, temperature: float, top_k: int, top_p: float) -> torch.Tensor:
    """(V,) the distribution Hugging Face's warpers leave for one row of logits."""
    scores = logits[None] / temperature
    if top_k:
        scores = TopKLogitsWarper(top_k)(None, scores)
    if top_p < 1:
        scores = TopPLogitsWarper(top_p)(None, scores)
    return scores.softmax(-1)[0]


def assert_drawn_from(draws: torch.Tensor, want: torch.Tensor) -> None:
    """No draw outside `want`'s support, every token's frequency within 4.5 standard errors."""
    n = len(draws)
    freq = torch.bincount(draws, minlength=len(want)).double() / n
    assert freq[want == 0].sum() == 0
    se = (want * (1 - want) / n).sqrt().double()
    assert ((freq - want.double()).abs() <= 4.5 * se + 1e-12).all()


def test_sampled_tokens_follow_hugging_faces_warped_distribution():
    """20,000 draws of each row setting (a batch mixing rows with and without top-k, drawing
    among the top-k candidates or over the whole vocabulary): no token outside the warped
    support, and every token's frequency within 4.5 standard errors of HF's probability."""
    logits = 2 * torch.randn(60, generator=torch.Generator().manual_seed(3))
    settings = [(0.8, 10, 1.0), (1.0, 20, 0.7), (1.3, 0, 0.9), (0.5, 5, 0.95)]
    n = 20_000
    for batch in (settings[:2], settings[1:3]):  # all rows with top-k; some rows without
        rows = [RowSampling(temperature=t, top_k=k, top_p=p) for t, k, p in batch for _ in range(n)]
        torch.manual_seed(0)
        tokens = pick_tokens(logits.expand(len(rows), -1), rows)
        for b, (t, k, p) in enumerate(batch):
            assert_drawn_from(tokens[b * n: (b + 1) * n], warped_probs(logits, t, k, p))
    # a row with its own generator draws from the same distribution
    g = torch.Generator().manual_seed(5)
    t, k, p = settings[3]
    draws = torch.tensor([pick_tokens(logits[None], [RowSampling(t, p, k, generator=g)]).item() for _ in range(4000)])
    assert_drawn_from(draws, warped_probs(logits, t, k, p))


def test_warpers_are_hugging_faces_row_by_row():
    scores = torch.randn(3, 40, generator=torch.Generator().manual_seed(0))
    for row, (p, k) in enumerate([(0.9, 5), (0.5, 1), (0.3, 40)]):
        assert torch.equal(nucleus_filter(scores, [0.9, 0.5, 0.3])[row],
                           TopPLogitsWarper(p)(None, scores[row: row + 1])[0])
        assert torch.equal(top_k_filter(scores, [5, 1, 40])[row], TopKLogitsWarper(k)(None, scores[row: row + 1])[0])
    assert torch.equal(nucleus_filter(scores, [1.0, 1.0, 1.0]), scores)
    assert torch.equal(top_k_filter(scores, [0, 0, 0]), scores)
    tied = torch.tensor([[3.0, 1.0, 3.0, 2.0, 2.0, 0.5], [1.0, 1.0, 1.0, 1.0, 0.0, 0.0]])  # ties at the k-th score stay
    for k in (1, 2, 3, 4):
        for row in range(2):
            assert torch.equal(top_k_filter(tied, [k, k])[row], TopKLogitsWarper(k)(None, tied[row: row + 1])[0])
    assert torch.equal(top_k_filter(tied, [2, 0])[1], tied[1])  # k = 0 beside a k > 0 row


def test_pick_tokens_per_row():
    logits = torch.tensor([[0.0, 3.0, 1.0], [2.0, 0.0, 1.0]])
    g = torch.Generator().manual_seed(1)
    # row 1: top-k 1 leaves one token to draw
    assert pick_tokens(logits, [RowSampling(), RowSampling(temperature=5.0, top_k=1, generator=g)]).tolist() == [1, 0]
    # a row's own generator: the same draws whatever the other rows are
    a = pick_tokens(logits[1:], [RowSampling(1.0, generator=torch.Generator().manual_seed(7))])
    b = pick_tokens(logits, [RowSampling(1.0), RowSampling(1.0, generator=torch.Generator().manual_seed(7))])
    assert a.item() == b[1].item()


def logits_alone(model, prompt: list[int], tokens: list[int]) -> torch.Tensor:
    """(V,) logits after `prompt` + `tokens`, decoded as a batch of one."""
    batch = DecodeBatch(model, 0)
    logits = batch.add([prompt])
    for t in tokens:
        logits = batch.step(torch.tensor([t]))
    return logits[0]


def test_rows_join_and_leave_a_running_batch(tiny):
    """Row 0 decodes 3 steps, rows 1 and 2 (another width) join, row 0 leaves after 2 more
    steps: every row's logits stay what it computes alone on the same tokens (to float
    rounding: batch shapes change the order of sums)."""
    model, tok = tiny
    prompts = [encode_prompt(tok, p) for p in PROMPTS]
    batch = DecodeBatch(model, tok.pad_token_id)
    logits = batch.add(prompts[:1])
    fed = [[]]
    for _ in range(3):
        fed[0].append(int(logits[0].argmax()))
        logits = batch.step(torch.tensor(fed[0][-1:]))
    joined = batch.add(prompts[1:])
    logits = torch.cat([logits, joined])
    fed += [[], []]
    for step in range(4):
        if step == 2:
            batch.keep([1, 2])
            logits, fed = logits[1:], fed[1:]
            survivors = prompts[1:]
        tokens = logits.argmax(-1)
        for row, t in enumerate(tokens.tolist()):
            fed[row].append(t)
        logits = batch.step(tokens)
    assert batch.size == 2 and batch.mask.shape[1] == max(len(p) for p in survivors) + 4
    for prompt, tokens, row_logits in zip(survivors, fed, logits):
        torch.testing.assert_close(row_logits, logits_alone(model, prompt, tokens), atol=1e-4, rtol=1e-4)
