"""Reward model: learns a planted preference, not shuffled labels; normalisation; resume; scoring."""

import json
import random

import pytest
import torch

from alignloop.models.reward_model import RewardModel
from alignloop.train.reward import RewardConfig, run_reward
from alignloop.train.tracking import read_metrics

WORDS = "the river garden lantern violin stone cloud bread window music paper".split()
MARKER = "apple"


def _response(rng, marker: bool) -> str:
    words = [rng.choice(WORDS) for _ in range(rng.randint(4, 8))]
    if marker:
        words.insert(rng.randrange(len(words) + 1), MARKER)
    return " ".join(words)


def synthetic_comparisons(path, n, seed, shuffle_labels=False):
    """Responses containing MARKER beat those without: pairs, K=3 rankings with a tie, soft labels."""
    rng = random.Random(seed)
    with open(path, "w") as f:
        for i in range(n):
            prompt = f"Write something about the {rng.choice(WORDS)}."
            kind = i % 3
            if kind == 0:  # a pair, winner first or second at random
                good, bad = _response(rng, True), _response(rng, False)
                rec = {"prompt": prompt, "chosen": good, "rejected": bad}
            elif kind == 1:  # K = 3: the marker response wins, the two others tie
                responses = [_response(rng, False), _response(rng, True), _response(rng, False)]
                rng.shuffle(responses)
                win = next(j for j, r in enumerate(responses) if MARKER in r.split())
                rec = {"prompt": prompt, "responses": responses, "ranking": [win, [j for j in range(3) if j != win]]}
            else:  # a soft label
                responses = [_response(rng, True), _response(rng, False)]
                first_good = rng.random() < 0.5
                responses = responses if first_good else responses[::-1]
                rec = {"prompt": prompt, "responses": responses, "p": 0.9 if first_good else 0.1}
            if shuffle_labels:
                if "chosen" in rec and rng.random() < 0.5:
                    rec["chosen"], rec["rejected"] = rec["rejected"], rec["chosen"]
                elif "ranking" in rec:
                    rec["ranking"] = [rng.randrange(3), [j for j in range(3)]]
                    rec["ranking"][1].remove(rec["ranking"][0])
                elif "p" in rec and rng.random() < 0.5:
                    rec["p"] = 1 - rec["p"]
            f.write(json.dumps(rec) + "\n")
    return path


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    d = tmp_path_factory.mktemp("rm")
    return {"train": synthetic_comparisons(d / "train.jsonl", 150, 0),
            "heldout": synthetic_comparisons(d / "heldout.jsonl", 60, 1),
            "shuffled": synthetic_comparisons(d / "shuffled.jsonl", 150, 0, shuffle_labels=True)}


def _cfg(tiny_model_dir, data_path, heldout, out, **kw):
    base = dict(model=str(tiny_model_dir), data=data_path, heldout=heldout, out=out, epochs=3, batch_size=8,
                lora=False, learning_rate=1e-3, eval_every=0, save_every=0, seed=0, max_length=48)
    return RewardConfig(**{**base, **kw})


@pytest.fixture(scope="module")
def trained(tiny_model_dir, data, tmp_path_factory):
    out = tmp_path_factory.mktemp("rm") / "model"
    return run_reward(_cfg(tiny_model_dir, data["train"], data["heldout"], out))


def test_learns_the_planted_preference(trained):
    final = read_metrics(trained)[-2]  # the last line holds the normalisation
    assert final["eval/accuracy"] > 0.9, final
    assert final["eval/soft_agreement"] > 0.9
    assert 0 <= final["eval/ece"] < 0.5


def test_shuffled_labels_stay_near_chance(tiny_model_dir, data, tmp_path):
    out = run_reward(_cfg(tiny_model_dir, data["shuffled"], data["heldout"], tmp_path / "shuffled"))
    final = [m for m in read_metrics(out) if "eval/accuracy" in m][-1]
    assert 0.3 < final["eval/accuracy"] < 0.7, final


def _scores_of_distinct_responses(rm, path) -> torch.Tensor:
    prompts, responses, seen = [], [], set()
    for line in open(path):
        rec = json.loads(line)
        for r in rec.get("responses") or [rec["chosen"], rec["rejected"]]:
            if (rec["prompt"], r) not in seen:
                seen.add((rec["prompt"], r))
                prompts.append(rec["prompt"])
                responses.append(r)
    return torch.tensor(rm.score(prompts, responses))


def test_rewards_are_normalised_on_the_training_responses(trained, data):
    rm = RewardModel.load(trained)
    scores = _scores_of_distinct_responses(rm, data["train"])
    assert abs(scores.mean().item()) < 1e-3 and abs(scores.std(correction=0).item() - 1) < 1e-3
    good = rm.score(["Write something about the river."] * 2, ["the stone apple cloud music", "the stone cloud music"])
    assert good[0] > good[1]


def test_score_command_adds_rewards(trained, tmp_path):
    from alignloop.cli import main

    samples = tmp_path / "samples.jsonl"
    samples.write_text(json.dumps({"prompt": "Write something about the bread.",
                                   "responses": ["paper apple window", "paper window"], "model": "m"}) + "\n")
    main(["score", "--reward", str(trained), "--data", str(samples), "--out", str(tmp_path / "scored.jsonl")])
    rec = json.loads((tmp_path / "scored.jsonl").read_text())
    assert rec["rewards"]["reward"][0] > rec["rewards"]["reward"][1] and rec["model"] == "m"


def _weights(out):
    rm = RewardModel.load(out)
    return {**rm.net.head.state_dict(), **rm.net.lm.state_dict()}


@pytest.mark.numerics
def test_resume_equals_uninterrupted_run(tiny_model_dir, data, tmp_path):
    kw = dict(epochs=1, lora=True, learning_rate=1e-3, save_every=5)
    whole = run_reward(_cfg(tiny_model_dir, data["train"], data["heldout"], tmp_path / "whole", **kw))
    part = tmp_path / "part"
    run_reward(_cfg(tiny_model_dir, data["train"], data["heldout"], part, stop_at_step=7, **kw))
    run_reward(_cfg(tiny_model_dir, data["train"], data["heldout"], part, resume=True, **kw))
    a, b = _weights(whole), _weights(part)
    assert max((a[k] - b[k]).abs().max().item() for k in a) < 1e-6


@pytest.mark.numerics
def test_gradient_accumulation_equals_a_bigger_batch(tiny_model_dir, data, tmp_path):
    """One step of 8 records x 1 equals 2 records x 4 micro-batches and 8 chunks of 1 record. Plain SGD, so the weights
    differ by lr x the gradients' rounding (summation order); Adam would turn that rounding in
    near-zero gradients into steps of the learning rate's size, differently on every CPU."""
    def first_step(name, **kw):
        out = tmp_path / name
        run_reward(_cfg(tiny_model_dir, data["train"], None, out, epochs=1, lora=True, stop_at_step=1,
                        heldout_fraction=0.0, optimizer="sgd", learning_rate=0.5, warmup_ratio=0.0, **kw))
        return torch.load(out / "checkpoint" / "trainable.pt")

    a, b = first_step("big", batch_size=8, training_token_budget=0), first_step("acc", batch_size=2, grad_accum=4)
    # --training-token-budget 1: each record forward and backward alone, the gradients added up
    c = first_step("chunks", batch_size=8, training_token_budget=1)
    assert max(v.abs().max().item() for k, v in a.items() if "lora_B" in k) > 1e-3  # B starts at 0: it moved
    assert max((a[k] - b[k]).abs().max().item() for k in a) < 1e-6
    assert max((a[k] - c[k]).abs().max().item() for k in a) < 1e-6


@pytest.mark.numerics
def test_two_processes_match_one(two_process_runs, tmp_path):
    """Each head's loss is divided by its weight over the WHOLE global batch, so two processes give
    one process's gradient: one plain-SGD step (weights differ by lr x rounding) and the same
    losses; the held-out metrics over uneven halves (7 and 6 records) are those of one process."""
    from tests.two_processes import job_config

    run = two_process_runs
    assert [r["reward"] for r in run["results"]] == ["ok", "ok"]
    one, two = run_reward(job_config("reward", run["files"], tmp_path / "one", processes=1)), run["root"] / "reward"
    a, b = (torch.load(out / "checkpoint" / "trainable.pt") for out in (one, two))
    assert max(v.abs().max().item() for k, v in a.items() if "lora_B" in k) > 1e-3  # B starts at 0: it moved
    assert max((a[k] - b[k]).abs().max().item() for k in a) < 1e-6
    rows_one, rows_two = read_metrics(one), read_metrics(two)
    assert [r["step"] for r in rows_one] == [r["step"] for r in rows_two] == [0, 1]
    for r1, r2 in zip(rows_one, rows_two):
        for key in ("train/loss", "train/accuracy", "eval/loss", "eval/accuracy", "eval/pairs", "eval/soft_mae", "eval/ece"):
            assert (key in r1) == (key in r2) and r1.get(key) == pytest.approx(r2.get(key), abs=1e-5), key


def test_lora_trains_the_adapters_and_head_with_the_base_untouched(tiny_model_dir, data, tmp_path, monkeypatch):
    import alignloop.models.loading as loading

    loaded = []
    original = loading.load_causal_lm
    monkeypatch.setattr(loading, "load_causal_lm", lambda *a, **kw: loaded.append(original(*a, **kw)) or loaded[-1])
    out = run_reward(_cfg(tiny_model_dir, data["train"], None, tmp_path / "lora", epochs=1, lora=True,
                          heldout_fraction=0.0))
    (lm,) = loaded
    fresh = loading.AutoModelForCausalLM.from_pretrained(str(tiny_model_dir)).state_dict()
    base = {k: v for k, v in lm.state_dict().items() if "lora_" not in k}
    assert len(base) == len(fresh)
    for k, v in base.items():  # bit-identical after a whole epoch of training
        plain = k.replace("base_model.model.", "").replace(".base_layer", "")
        assert torch.equal(v, fresh[plain]), k
    assert any(v.abs().max() > 0 for k, v in lm.state_dict().items() if "lora_B" in k)  # the adapters trained (B starts at 0)
    assert (out / "adapter_model.safetensors").exists()


def test_ensemble_gives_a_spread_and_a_conservative_score(tiny_model_dir, data, tmp_path):
    out = run_reward(_cfg(tiny_model_dir, data["train"], data["heldout"], tmp_path / "ens", epochs=1, ensemble=3))
    rm = RewardModel.load(out)
    prompts, responses = ["Write something about the stone."] * 3, ["apple bread", "bread", "music paper apple"]
    mean, spread, members = rm.score_ensemble(prompts, responses)
    assert members.shape == (3, 3) and (spread > 0).all()
    assert torch.allclose(torch.tensor(rm.score(prompts, responses, k=1.0)), mean - spread, atol=1e-6)


@pytest.mark.numerics
def test_shared_prompt_forward_equals_full_sequences(tiny_model_dir):
    """Encoding each prompt once and reusing its keys/values gives the rewards (and gradients, the
    embedding's included) of running every prompt + response in full."""
    from alignloop.data.chat import tokenize_example
    from alignloop.models.loading import load_causal_lm, load_tokenizer
    from alignloop.models.reward_model import RewardNet, encode_group, grouped_batch
    from alignloop.data.padding import right_pad

    tok = load_tokenizer(str(tiny_model_dir))
    torch.manual_seed(0)
    net = RewardNet(load_causal_lm(str(tiny_model_dir)), num_heads=2)
    chats = [[{"role": "user", "content": "Hi"}], [{"role": "user", "content": "Tell me about the river and the stone."}]]
    answers = [["apple bread", "music", "the window paper"], ["stone", "cloud garden violin lantern"]]
    prompts, responses, group, full = [], [], [], []
    for g, (chat, rs) in enumerate(zip(chats, answers)):
        p, outs = encode_group(tok, chat, rs, 256)
        prompts.append(p)
        responses += outs
        group += [g] * len(outs)
        full += [tokenize_example(tok, chat, r)["input_ids"] for r in rs]
    embedding = net.lm.get_input_embeddings()
    lookups = []
    hook = embedding.register_forward_hook(lambda module, args, out: lookups.append(args[0].numel()))
    shared = net(**grouped_batch(prompts, responses, group, tok.pad_token_id, "cpu"))
    hook.remove()
    # the prompts' and responses' tokens in ONE lookup: one dense embedding gradient, not two
    assert lookups == [2 * max(map(len, prompts)) + len(responses) * max(map(len, responses))]
    ids = right_pad(full, tok.pad_token_id)
    mask = right_pad([[1] * len(s) for s in full], 0)
    whole = net(ids, mask)
    assert torch.allclose(shared, whole, atol=1e-5)
    for weight in (net.head.weight, embedding.weight):
        g_shared = torch.autograd.grad(shared.sum(), weight, retain_graph=True)[0]
        g_whole = torch.autograd.grad(whole.sum(), weight, retain_graph=True)[0]
        assert torch.allclose(g_shared, g_whole, atol=1e-5)


def test_distinct_responses_scores_each_prompt_and_response_once():
    from alignloop.train.reward import distinct_responses

    rows = [{"prompt": [1, 2], "responses": [[5], [6]]},   # item A, pair (0, 1)
            {"prompt": [3], "responses": [[5], [7]]},      # item B: same response text, other prompt
            {"prompt": [1, 2], "responses": [[6], [8]]}]   # item A again, pair (1, 2)
    prompts, responses, group, index = distinct_responses(rows)
    assert prompts == [[1, 2], [3]]
    assert responses == [[5], [6], [5], [7], [8]] and group == [0, 0, 1, 1, 0]
    assert index == [0, 1, 2, 3, 1, 4]


def test_training_chunks_count_each_distinct_prompt_and_response_once():
    """The three pair records of a 3-way item run as one prompt and three responses: 3 + 2 + 2 + 2
    = 9 tokens, one chunk at a budget of 9 (counted per record they would be 3 x 7 = 21 tokens,
    three chunks). A new prompt starts a chunk once the budget is full, and a record over the
    budget is a chunk alone."""
    from alignloop.train.reward import distinct_token_chunks

    P, A, B, C = [1, 1, 1], [2, 2], [3, 3], [4, 4]
    item = [{"prompt": P, "responses": [A, B]}, {"prompt": P, "responses": [A, C]},
            {"prompt": P, "responses": [B, C]}]
    assert distinct_token_chunks(item, 9) == [(0, 3)]
    assert distinct_token_chunks(item, 8) == [(0, 1), (1, 2), (2, 3)]   # (A, B) 7, then + C = 9 > 8
    other = {"prompt": [5], "responses": [A, B]}                 # the same texts under another prompt: new
    assert distinct_token_chunks(item + [other], 12) == [(0, 3), (3, 4)]
    assert distinct_token_chunks(item + [other], 14) == [(0, 4)]
    assert distinct_token_chunks([{"prompt": [1] * 20, "responses": [A, B]}] + item, 9) == [(0, 1), (1, 4)]
    assert distinct_token_chunks(item, 0) == [(0, 3)] and distinct_token_chunks([], 5) == []


@pytest.mark.numerics
def test_deduplicated_forward_equals_one_forward_per_record(tiny_model_dir):
    """The six pair records of a 4-way item, scored together (4 distinct responses, 1 prompt),
    give the rewards and gradients of scoring each record on its own."""
    from alignloop.models.loading import load_causal_lm, load_tokenizer
    from alignloop.models.reward_model import RewardNet, encode_group
    from alignloop.train.reward import score_records

    tok = load_tokenizer(str(tiny_model_dir))
    torch.manual_seed(0)
    net = RewardNet(load_causal_lm(str(tiny_model_dir)), num_heads=1)
    chat = [{"role": "user", "content": "Tell me about the river."}]
    answers = ["apple bread", "music", "the window paper stone", "cloud"]
    rows = []
    for i in range(4):
        for j in range(i + 1, 4):
            p, outs = encode_group(tok, chat, [answers[i], answers[j]], 256)
            rows.append({"prompt": p, "responses": outs, "tiers": [[0], [1]], "p": 0.7, "weight": 1.0})
    together = score_records(net, rows, tok.pad_token_id, "cpu")
    alone = torch.cat([score_records(net, [r], tok.pad_token_id, "cpu") for r in rows])
    assert together.shape == (12, 1) and torch.allclose(together, alone, atol=1e-5)
    g_together = torch.autograd.grad(together.sum(), net.head.weight)[0]
    g_alone = torch.autograd.grad(alone.sum(), net.head.weight)[0]
    assert torch.allclose(g_together, g_alone, atol=1e-4)


def test_prompt_grouped_order_keeps_a_prompts_records_together():
    from alignloop.train.common import epoch_order, length_grouped_order

    keys = [i % 10 for i in range(60)]  # 10 prompts, 6 records each
    lengths = [(7 * i) % 13 for i in range(60)]
    order = length_grouped_order(lengths, 6, seed=3, epoch=1, megabatch=4, keys=keys)
    assert sorted(order) == list(range(60))
    batches = [order[s: s + 6] for s in range(0, 60, 6)]
    assert all(len({keys[i] for i in b}) == 1 for b in batches)  # clusters of 6 fill batches of 6
    # without keys: the permutation cut into megabatches, each sorted by length, batches shuffled
    plain = length_grouped_order(lengths, 6, seed=3, epoch=1, megabatch=4)
    perm = epoch_order(60, 3, 1)
    mega = [i for s in range(0, 60, 24) for i in sorted(perm[s: s + 24], key=lambda j: -lengths[j])]
    assert sorted(tuple(plain[s: s + 6]) for s in range(0, 60, 6)) == sorted(
        tuple(mega[s: s + 6]) for s in range(0, 60, 6))


def test_the_heldout_split_keeps_each_prompt_on_one_side():
    from alignloop.data.records import Comparison
    from alignloop.train.reward import split_by_prompt

    records = [Comparison(prompt=p, responses=[f"{p}{k}a", f"{p}{k}b"], ranking=[0, 1])
               for p, n in (("a", 6), ("b", 6), ("c", 3), ("d", 1), ("e", 6)) for k in range(n)]
    train, held = split_by_prompt(records, 0.4, seed=3)
    held_prompts, train_prompts = {r.prompt for r in held}, {r.prompt for r in train}
    assert len(held_prompts) == 2 and not held_prompts & train_prompts  # int(5 x 0.4) prompts, all their records
    assert len(train) + len(held) == len(records)
    assert sorted(map(id, train + held)) == sorted(map(id, records))
    assert split_by_prompt(records, 0.0, seed=3) == (records, [])
    assert split_by_prompt(records, 0.4, seed=3) == (train, held)  # the seed fixes it


def test_mismatched_pairs_prefer_a_prompts_own_response():
    from alignloop.config import ConfigError
    from alignloop.data.records import Comparison
    from alignloop.train.reward import mismatched_pairs

    records = [Comparison(prompt="a", responses=["a1", "a2", "a3", "a4"], ranking=[0, 1, 2, 3]),  # 6 pairs, w 1
               Comparison(prompt="b", responses=["b1", "b2"], p=0.8, weight=0.5),  # 1 pair each, w 0.5
               Comparison(prompt="b", responses=["b2", "b3"], ranking=[1, 0], weight=0.5),
               Comparison(prompt="c", responses=["c1", "c2", "c3"], ranking=[2, [0, 1]], weight=3.0)]  # 3 pairs
    extra = mismatched_pairs(records, 2, seed=0)
    assert [r.prompt for r in extra] == ["a", "a", "b", "b", "c", "c"]
    own = {"a": {"a1", "a2", "a3", "a4"}, "b": {"b1", "b2", "b3"}, "c": {"c1", "c2", "c3"}}
    for r in extra:
        assert r.responses[0] in own[r.prompt]
        assert r.responses[1][0] != r.prompt and r.responses[1] in own[r.responses[1][0]]
        assert r.tiers() == [[0], [1]] and r.p is None and r.rater == "mismatched"
    # one rated pair's weight: 1/6 for a; (0.5/1 + 0.5/1)/2 for b; 3/3 for c
    assert [r.weight for r in extra] == pytest.approx([1 / 6, 1 / 6, 0.5, 0.5, 1.0, 1.0])
    assert [r.responses for r in mismatched_pairs(records, 2, seed=0)] == [r.responses for r in extra]
    assert [r.weight for r in mismatched_pairs(records, 1, seed=0, weight=3.0)] == pytest.approx([0.5, 1.5, 3.0])
    assert mismatched_pairs(records, 0, seed=0) == []
    same = [Comparison(prompt="a", responses=["no", "a1"], ranking=[0, 1]), Comparison(prompt="b", responses=["no"] * 2, p=0.5)]
    assert [r.responses for r in mismatched_pairs(same, 3, seed=0) if r.prompt == "b"] == [["no", "a1"]] * 3
    assert all(r.responses[1] != "no" for r in mismatched_pairs(same, 3, seed=0))  # never a text of its own
    with pytest.raises(ConfigError, match="at least 2 prompts"):
        mismatched_pairs(records[:1], 1, seed=0)


def test_mismatched_pairs_train_beside_the_rated_ones(tiny_model_dir, data, trained, tmp_path):
    out = run_reward(_cfg(tiny_model_dir, data["train"], data["heldout"], tmp_path / "m", epochs=1, mismatched_pairs=2))
    prompts = {json.loads(line)["prompt"] for line in open(data["train"])}
    steps = [m["step"] for m in read_metrics(out) if "train/loss" in m]
    assert steps[-1] == (150 + 2 * len(prompts)) // 8  # the extra records are trained on (a partial batch is dropped)
    heldout_pairs = [[m["eval/pairs"] for m in read_metrics(run) if "eval/pairs" in m][-1] for run in (out, trained)]
    assert heldout_pairs[0] == heldout_pairs[1]  # the held-out set is untouched
    scores = _scores_of_distinct_responses(RewardModel.load(out), data["train"])  # normalised on the rated only
    assert abs(scores.mean().item()) < 1e-3 and abs(scores.std(correction=0).item() - 1) < 1e-3


def test_normalization_groups_are_the_rated_responses_of_a_prompt_subset():
    from alignloop.train.reward import normalization_groups

    rows = [{"prompt": [1], "responses": [[10], [11]]}, {"prompt": [2], "responses": [[20], [21]]},
            {"prompt": [1], "responses": [[11], [12]]}, {"prompt": [1], "responses": [[11], [99]], "mismatched": True},
            {"prompt": [3], "responses": [[30], [31]]}]
    assert normalization_groups(rows, None, seed=0) == [([1], [[10], [11], [12]]), ([2], [[20], [21]]), ([3], [[30], [31]])]
    two = normalization_groups(rows, 2, seed=0)
    assert len(two) == 2 and all(g in normalization_groups(rows, None, seed=0) for g in two)
    assert [p for p, _ in two] == sorted(p for p, _ in two)  # kept in order
    assert normalization_groups(rows, 2, seed=0) == two
    assert normalization_groups(rows, 3, seed=5) == normalization_groups(rows, None, seed=0)
