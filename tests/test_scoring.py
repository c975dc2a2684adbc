"""Forward-only passes: length-bucketed batches, results in input order, streaming with bounded
memory, the normalisation sample and its standard errors."""

import gc
import json
import random

import pytest
import torch

from alignloop.data.batching import consecutive_chunks, even_chunks, token_budget_batches, windows


def test_token_budget_batches_hold_every_index_once_within_the_budget():
    rng = random.Random(0)
    lengths = [rng.randint(1, 50) for _ in range(200)]
    rows = [rng.randint(1, 4) for _ in range(200)]
    batches = token_budget_batches(lengths, 120, rows)
    assert sorted(i for b in batches for i in b) == list(range(200))
    for b in batches:
        cost = sum(rows[i] for i in b) * max(lengths[i] for i in b)
        assert cost <= 120 or len(b) == 1
    widths = [max(lengths[i] for i in b) for b in batches]
    assert widths == sorted(widths, reverse=True)  # longest first
    assert len(batches) < 200  # short items share a batch
    assert token_budget_batches([500, 3], 100) == [[0], [1]]  # over the budget: alone


def test_consecutive_chunks_keep_the_order_within_the_budget():
    assert consecutive_chunks([3, 3, 5, 1], 6) == [(0, 2), (2, 4)]
    assert consecutive_chunks([7, 2, 2], 6) == [(0, 1), (1, 3)]  # over the budget: alone
    assert consecutive_chunks([3, 3], 0) == [(0, 2)] and consecutive_chunks([], 5) == []
    costs = [random.Random(1).randint(1, 9) for _ in range(40)]
    chunks = consecutive_chunks(costs, 12)
    assert [i for a, b in chunks for i in range(a, b)] == list(range(40))
    assert all(sum(costs[a:b]) <= 12 for a, b in chunks)


def test_even_chunks_give_every_process_as_many_forwards():
    assert even_chunks([[(0, 4)], [(4, 5), (5, 8)]]) == [[(0, 2), (2, 4)], [(4, 5), (5, 8)]]
    assert even_chunks([[(0, 3), (3, 4)], [(4, 5), (5, 6), (6, 8)]]) == [[(0, 1), (1, 3), (3, 4)],
                                                                        [(4, 5), (5, 6), (6, 8)]]
    same = [[(0, 2), (2, 4)], [(4, 6), (6, 8)]]
    assert even_chunks(same) == same
    with pytest.raises(ValueError):
        even_chunks([[(0, 1)], [(1, 2), (2, 3)]])


def test_windows_read_a_stream_a_window_at_a_time():
    pulled = []

    def stream():
        for i in range(10):
            pulled.append(i)
            yield i

    it = windows(stream(), 4, rows=lambda i: 2)  # 2 rows each: a window of 2 items
    assert next(it) == [0, 1] and pulled == [0, 1]
    assert list(it) == [[2, 3], [4, 5], [6, 7], [8, 9]]


def _net(tiny_model_dir, heads=2):
    from alignloop.models.loading import load_causal_lm, load_tokenizer
    from alignloop.models.reward_model import RewardNet

    torch.manual_seed(0)
    return RewardNet(load_causal_lm(str(tiny_model_dir)), num_heads=heads), load_tokenizer(str(tiny_model_dir))


WORDS = "the river garden lantern violin stone cloud bread window music paper apple".split()


def _groups(tok, n, seed=0):
    from alignloop.models.reward_model import encode_group

    rng = random.Random(seed)
    out = []
    for i in range(n):
        chat = [{"role": "user", "content": " ".join(rng.choice(WORDS) for _ in range(rng.randint(1, 12)))}]
        responses = [" ".join(rng.choice(WORDS) for _ in range(rng.randint(1, 20))) for _ in range(rng.randint(1, 4))]
        out.append(encode_group(tok, chat, responses, 64))
    return out


@pytest.mark.numerics
def test_bucketed_scoring_equals_one_by_one_in_input_order(tiny_model_dir):
    from alignloop.models.reward_model import raw_rewards

    net, tok = _net(tiny_model_dir)
    groups = _groups(tok, 30)
    bucketed = raw_rewards(net, groups, tok.pad_token_id, token_budget=96)  # many batches, mixed lengths
    with torch.no_grad():
        naive = torch.cat([raw_rewards(net, [(p, [r])], tok.pad_token_id) for p, rs in groups for r in rs])
    assert bucketed.shape == naive.shape == (sum(len(rs) for _, rs in groups), 2)
    assert torch.allclose(bucketed, naive, atol=1e-4, rtol=1e-4)
    assert net.training  # its mode is given back
    assert not bucketed.requires_grad and not bucketed.is_inference()


def test_streamed_scoring_reads_one_window_and_holds_no_more_tensors_as_it_goes(tiny_model_dir):
    from alignloop.models.reward_model import iter_raw_rewards

    net, tok = _net(tiny_model_dir)
    base = _groups(tok, 8)
    pulled = [0]

    def stream(n):
        for i in range(n):
            pulled[0] += 1
            yield base[i % len(base)]

    def live_tensors():
        gc.collect()
        return sum(1 for o in gc.get_objects() if type(o) in (torch.Tensor, torch.nn.Parameter))

    window = 12
    it = iter_raw_rewards(net, stream(400), tok.pad_token_id, token_budget=128, window=window)
    next(it)
    assert pulled[0] <= window  # the first result came after one window, not the whole stream
    counts = []
    for k, _ in enumerate(it, start=2):
        if k in (40, 390):
            counts.append(live_tensors())
    assert pulled[0] == 400
    assert counts[1] <= counts[0]  # 350 more groups scored (outputs dropped): nothing accumulates


def test_the_score_command_streams_and_keeps_the_order(tiny_model_dir, tmp_path, monkeypatch):
    from alignloop.models import reward_model
    from alignloop.models.reward_model import RewardModel, save_reward_model
    from alignloop.score import scored_records
    from alignloop.data.records import Samples

    net, tok = _net(tiny_model_dir, heads=3)
    save_reward_model(net, tok, tmp_path / "rm", base=str(tiny_model_dir), mean=[0.5, 0, 0], std=[2.0, 1, 1],
                      max_length=64)
    rm = RewardModel.load(tmp_path / "rm")
    rng = random.Random(1)
    records = [Samples(prompt=f"about the {rng.choice(WORDS)} {i}", model="m",
                       responses=[" ".join(rng.choice(WORDS) for _ in range(rng.randint(1, 15))) for _ in range(3)])
               for i in range(40)]
    monkeypatch.setattr(reward_model, "SCORING_WINDOW", 7)
    read = [0]

    def lazily():
        for r in records:
            read[0] += 1
            yield r

    out = scored_records(rm, lazily(), "rm", token_budget=100)
    first = next(out)
    assert read[0] < len(records)  # streamed
    scored = [first, *out]
    expected, _, members = rm.score_ensemble([r.prompt for r in records for _ in r.responses],
                                             [x for r in records for x in r.responses], token_budget=10_000)
    got = torch.tensor([x for r in scored for x in r.rewards["rm"]])
    assert [r.prompt for r in scored] == [r.prompt for r in records]
    assert torch.allclose(got, expected, atol=1e-4)
    assert all(len(r.rewards["rm_spread"]) == 3 for r in scored)


def test_the_normalisation_sample_is_seeded_grouped_and_bounded():
    from alignloop.train.reward import sample_responses

    groups = [([g], [[g, j] for j in range(1 + g % 4)]) for g in range(50)]
    total = sum(len(rs) for _, rs in groups)
    assert sample_responses(groups, None, 0) == groups and sample_responses(groups, total, 0) == groups
    s = sample_responses(groups, 30, seed=3)
    assert sum(len(rs) for _, rs in s) == 30 and s == sample_responses(groups, 30, seed=3)
    assert s != sample_responses(groups, 30, seed=4)
    prompts = [p for p, _ in s]
    assert prompts == sorted(prompts)  # in the groups' order
    assert all(r in dict((tuple(p), rs) for p, rs in groups)[tuple(p)] for p, rs in s for r in rs)


def test_normalisation_standard_errors():
    from alignloop.algorithms.reward_metrics import normalization_standard_errors

    g = torch.Generator().manual_seed(0)
    x = torch.randn(20000, 2, generator=g) * torch.tensor([1.0, 3.0])
    se_mean, se_std = normalization_standard_errors(x)
    std = x.std(dim=0, correction=0)
    assert torch.allclose(se_mean, std / 20000 ** 0.5, rtol=1e-5)
    assert torch.allclose(se_std, std / (2 * 20000) ** 0.5, rtol=0.05)  # normal data: s / sqrt(2N)
    all_scored = normalization_standard_errors(x[:100], population=100)
    assert torch.equal(all_scored[0], torch.zeros(2)) and torch.equal(all_scored[1], torch.zeros(2))
    half = normalization_standard_errors(x[:100], population=199)
    assert torch.allclose(half[0], normalization_standard_errors(x[:100])[0] * (99 / 198) ** 0.5)


def test_a_reward_run_normalises_on_a_sample_and_writes_its_errors(tiny_model_dir, tmp_path):
    from alignloop import metric_names as M
    from alignloop.train.reward import RewardConfig, run_reward
    from alignloop.train.tracking import read_metrics

    rng = random.Random(0)
    data = tmp_path / "c.jsonl"
    with open(data, "w") as f:
        for i in range(40):
            rs = [" ".join(rng.choice(WORDS) for _ in range(rng.randint(2, 9))) for _ in range(4)]
            f.write(json.dumps({"prompt": f"p {i}", "responses": rs, "ranking": [0, 1, 2, 3]}) + "\n")
    out = run_reward(RewardConfig(model=str(tiny_model_dir), data=data, out=tmp_path / "rm", epochs=1, batch_size=8,
                                  lora=False, eval_every=0, save_every=0, max_length=48, normalization_sample=50,
                                  heldout_fraction=0.25))
    rows = read_metrics(out)
    norm = next(m for m in rows if M.NORMALIZATION_SAMPLE in m)
    assert norm[M.NORMALIZATION_SAMPLE] == 50 and norm[M.NORMALIZATION_RESPONSES] == 120
    assert norm[M.NORMALIZATION_MEAN_SE] > 0 and norm[M.NORMALIZATION_STD_SE] > 0
    final = [m for m in rows if M.EVAL_PAIRS in m][-1]
    assert final[M.EVAL_PAIRS] == 10 * 6 and final[M.EVAL_SEQUENCES_PER_S] > 0


def test_prefix_cache_gives_each_response_its_prompts_states_and_keeps_none_of_its_own():
    """prefix_cache: row b holds prompt group[b]'s keys and values; a layer's update returns them
    with the new states appended and leaves the cache as it was (nothing held for the pass)."""
    from transformers.cache_utils import DynamicCache

    from alignloop.models.forward import PrefixLayer, prefix_cache

    cache = DynamicCache()
    keys = torch.arange(2 * 1 * 3 * 2, dtype=torch.float32).reshape(2, 1, 3, 2)  # 2 prompts, P = 3
    cache.update(keys, -keys, 0)
    rows = prefix_cache(cache, torch.tensor([1, 1, 0]))
    layer = rows.layers[0]
    assert isinstance(layer, PrefixLayer) and rows.get_seq_length() == 3
    assert torch.equal(layer.keys, keys[[1, 1, 0]]) and torch.equal(layer.values, -keys[[1, 1, 0]])
    new = torch.full((3, 1, 2, 2), 7.0)  # 2 response tokens for each of the 3 rows
    k, v = layer.update(new, -new)
    assert k.shape == (3, 1, 5, 2) and torch.equal(k[:, :, :3], keys[[1, 1, 0]]) and torch.equal(k[:, :, 3:], new)
    assert torch.equal(v[:, :, 3:], -new)
    assert rows.get_seq_length() == 3 and layer.keys.shape == (3, 1, 3, 2)  # not extended
