"""DPO: the shared-prompt log-probs, the LoRA reference, learning a planted preference (and not
shuffled labels), resume, gradient accumulation and two processes."""

import json

import pytest
import torch

from alignloop.configs import DPOConfig
from alignloop.train.dpo import REFERENCE_FILE, run_dpo
from alignloop.train.tracking import read_metrics
from tests.test_reward import synthetic_comparisons


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    d = tmp_path_factory.mktemp("dpo")
    return {"train": synthetic_comparisons(d / "train.jsonl", 150, 0),
            "heldout": synthetic_comparisons(d / "heldout.jsonl", 60, 1),
            "shuffled": synthetic_comparisons(d / "shuffled.jsonl", 150, 0, shuffle_labels=True)}


def _cfg(tiny_model_dir, data_path, heldout, out, **kw):
    base = dict(model=str(tiny_model_dir), data=data_path, heldout=heldout, out=out, epochs=3, batch_size=8, lora=True,
                learning_rate=1e-2, beta=0.1, eval_every=0, save_every=0, seed=0, max_length=48)
    return DPOConfig(**{**base, **kw})


def _rows(tok, n=5):
    from alignloop.models.reward_model import encode_group

    chats = [[{"role": "user", "content": "Hi"}], [{"role": "user", "content": "Tell me about the river and the stone."}]]
    answers = [["apple bread", "music", "the window paper"], ["stone", "cloud garden violin lantern"]]
    return [{"prompt": p, "responses": rs} for p, rs in (encode_group(tok, c, a, 256) for c, a in zip(chats, answers))]


@pytest.mark.numerics
def test_shared_prompt_logprobs_equal_full_sequences(tiny):
    """Each prompt encoded once and its keys/values reused give the log-probs of running every
    prompt + response in full (`ResponseNLL`, SFT's forward), and the same gradients."""
    from alignloop.data.chat import tokenize_example
    from alignloop.models.forward import ResponseNLL
    from alignloop.models.logprobs import ResponseLogprobs
    from alignloop.train.dpo import response_logps
    from alignloop.train.sft import make_batch

    lm, tok = tiny
    net = ResponseLogprobs(lm)
    chats = [[{"role": "user", "content": "Hi"}], [{"role": "user", "content": "Tell me about the river and the stone."}]]
    answers = [["apple bread", "music", "the window paper"], ["stone", "cloud garden violin lantern"]]
    shared = response_logps(net, _rows(tok), tok.pad_token_id, "cpu")
    full = [tokenize_example(tok, c, a) for c, rs in zip(chats, answers) for a in rs]
    nll = ResponseNLL(lm)(**make_batch(full, tok.pad_token_id, "cpu"))
    counts = [sum(r["response_mask"][1:]) for r in full]
    whole = torch.stack([x.sum() for x in torch.split(-nll, counts)])
    assert shared.shape == (5,) and torch.allclose(shared, whole, atol=1e-4)
    w = lm.get_input_embeddings().weight
    g1, = torch.autograd.grad(shared.sum(), w)
    g2, = torch.autograd.grad(whole.sum(), w)
    assert torch.allclose(g1, g2, atol=1e-4)


@pytest.mark.numerics
def test_lora_reference_equals_a_separate_frozen_copy(tiny_model_dir):
    """With the adapter off, the LoRA policy's log-probs are those of a separately loaded, frozen
    base model, however far the adapter has moved."""
    from alignloop.models.loading import load_causal_lm, load_tokenizer, load_trainable
    from alignloop.models.logprobs import ResponseLogprobs
    from alignloop.train.dpo import response_logps

    tok = load_tokenizer(str(tiny_model_dir))
    policy = ResponseLogprobs(load_trainable(DPOConfig(model=str(tiny_model_dir), data="x", out="y"), "cpu"))
    with torch.no_grad():  # move the adapter: B starts at 0
        for name, p in policy.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.5, generator=torch.Generator().manual_seed(0))
    frozen = ResponseLogprobs(load_causal_lm(str(tiny_model_dir)))
    rows = _rows(tok)
    with torch.no_grad():
        ref = response_logps(policy, rows, tok.pad_token_id, "cpu", adapter=False)
        on = response_logps(policy, rows, tok.pad_token_id, "cpu")
        copy = response_logps(frozen, rows, tok.pad_token_id, "cpu")
    assert torch.allclose(ref, copy, atol=1e-5)
    assert (on - copy).abs().max() > 0.1  # the adapter does change the policy


@pytest.fixture(scope="module")
def trained(tiny_model_dir, data, tmp_path_factory, request):
    import alignloop.models.loading as loading

    loaded, original = [], loading.load_causal_lm
    mp = pytest.MonkeyPatch()
    mp.setattr(loading, "load_causal_lm", lambda *a, **kw: loaded.append(original(*a, **kw)) or loaded[-1])
    out = run_dpo(_cfg(tiny_model_dir, data["train"], data["heldout"], tmp_path_factory.mktemp("dpo") / "model"))
    mp.undo()
    return out, loaded[0]


def test_learns_a_planted_preference_with_the_reference_untouched(trained, tiny_model_dir):
    from alignloop.models.loading import AutoModelForCausalLM

    out, lm = trained
    final = read_metrics(out)[-1]
    assert final["eval/rewards/accuracy"] > 0.9, final
    assert final["eval/rewards/margin"] > 0 and final["eval/rewards/chosen"] > final["eval/rewards/rejected"]
    for key in ("rewards/chosen", "rewards/rejected", "rewards/margin", "rewards/accuracy", "logps/chosen",
                "logps/rejected", "eval/loss", "eval/logps/chosen", "eval/logps/rejected", "train/loss"):
        assert key in final, key
    fresh = AutoModelForCausalLM.from_pretrained(str(tiny_model_dir)).state_dict()
    base = {k: v for k, v in lm.state_dict().items() if "lora_" not in k}
    assert len(base) == len(fresh)
    for k, v in base.items():  # the reference (the adapter-off weights): bit-identical after training
        assert torch.equal(v, fresh[k.replace("base_model.model.", "").replace(".base_layer", "")]), k
    assert (out / "adapter_model.safetensors").exists() and (out / "alignloop_model.json").exists()


def test_a_trained_policy_loads_as_a_model(trained):
    from alignloop.models.loading import load_causal_lm

    lm = load_causal_lm(str(trained[0]))
    assert not hasattr(lm, "peft_config")  # merged: usable as --model / --policy anywhere


def test_shuffled_labels_stay_near_chance(tiny_model_dir, data, tmp_path):
    out = run_dpo(_cfg(tiny_model_dir, data["shuffled"], data["heldout"], tmp_path / "shuffled"))
    final = read_metrics(out)[-1]
    assert 0.3 < final["eval/rewards/accuracy"] < 0.7, final


def test_full_fine_tuning_precomputes_the_reference(tiny_model_dir, data, tmp_path):
    """Full fine-tuning: the reference log-probs are computed once, before the first step, and stored;
    a resumed run reuses them (not recomputed from the trained weights)."""
    import alignloop.train.dpo as dpo

    kw = dict(epochs=1, lora=False, learning_rate=1e-3, save_every=4, keep_checkpoint=True)
    part = tmp_path / "part"
    run_dpo(_cfg(tiny_model_dir, data["train"], data["heldout"], part, stop_at_step=5, **kw))
    stored = torch.load(part / REFERENCE_FILE, weights_only=True)
    assert len(stored["train"]) == 150 and len(stored["heldout"]) == 60  # a list per record
    calls = []
    original = dpo.reference_logps
    dpo.reference_logps = lambda *a, **k: calls.append(1) or original(*a, **k)
    try:
        run_dpo(_cfg(tiny_model_dir, data["train"], data["heldout"], part, resume=True, **kw))
    finally:
        dpo.reference_logps = original
    assert calls == []
    assert read_metrics(part)[-1]["eval/rewards/accuracy"] > 0.6


def _weights(out):
    return torch.load(out / "checkpoint" / "trainable.pt")


@pytest.mark.numerics
def test_resume_equals_uninterrupted_run(tiny_model_dir, data, tmp_path):
    kw = dict(epochs=1, learning_rate=1e-3, save_every=5, keep_checkpoint=True)
    whole = run_dpo(_cfg(tiny_model_dir, data["train"], data["heldout"], tmp_path / "whole", **kw))
    part = tmp_path / "part"
    run_dpo(_cfg(tiny_model_dir, data["train"], data["heldout"], part, stop_at_step=7, **kw))
    run_dpo(_cfg(tiny_model_dir, data["train"], data["heldout"], part, resume=True, **kw))
    from safetensors.torch import load_file

    a, b = load_file(whole / "adapter_model.safetensors"), load_file(part / "adapter_model.safetensors")
    assert max((a[k] - b[k]).abs().max().item() for k in a) < 1e-6
    steps = [m["step"] for m in read_metrics(part)]
    assert steps == sorted(set(steps))  # no step logged twice


@pytest.mark.numerics
def test_gradient_accumulation_equals_a_bigger_batch(tiny_model_dir, data, tmp_path):
    """One plain-SGD step of 8 records x 1 equals 2 records x 4 micro-batches (weights differ by
    lr x the gradients' rounding)."""
    def first_step(name, **kw):
        out = tmp_path / name
        run_dpo(_cfg(tiny_model_dir, data["train"], None, out, epochs=1, stop_at_step=1, heldout_fraction=0.0,
                     optimizer="sgd", learning_rate=0.5, warmup_ratio=0.0, **kw))
        return _weights(out)

    a, b = first_step("big", batch_size=8), first_step("acc", batch_size=2, grad_accum=4)
    assert max(v.abs().max().item() for k, v in a.items() if "lora_B" in k) > 1e-4  # B starts at 0: it moved
    assert max((a[k] - b[k]).abs().max().item() for k in a) < 1e-6


@pytest.mark.numerics
def test_two_processes_match_one(two_process_runs, tmp_path):
    from tests.two_processes import job_config

    run = two_process_runs
    assert [r["dpo"] for r in run["results"]] == ["ok", "ok"]
    one, two = run_dpo(job_config("dpo", run["files"], tmp_path / "one", processes=1)), run["root"] / "dpo"
    a, b = _weights(one), _weights(two)
    assert max(v.abs().max().item() for k, v in a.items() if "lora_B" in k) > 1e-4
    assert max((a[k] - b[k]).abs().max().item() for k in a) < 1e-6
    rows_one, rows_two = read_metrics(one), read_metrics(two)
    assert [r["step"] for r in rows_one] == [r["step"] for r in rows_two] == [0, 1]
    for r1, r2 in zip(rows_one, rows_two):
        for key in ("train/loss", "rewards/margin", "rewards/accuracy", "eval/loss", "eval/rewards/accuracy",
                    "eval/logps/chosen"):  # log-probs of ~120 nats: relative tolerance
            assert (key in r1) == (key in r2), key
            if key in r1:
                assert r1[key] == pytest.approx(r2[key], rel=1e-6, abs=1e-5), key


def test_dpo_command_reads_soft_labels_and_trl_preference_rows(tiny_model_dir, tmp_path):
    from alignloop.cli import main

    rows = [{"prompt": [{"role": "user", "content": f"Write about the stone {i}."}],
             "chosen": [{"role": "assistant", "content": "apple stone"}],
             "rejected": [{"role": "assistant", "content": "stone"}]} for i in range(6)]
    rows += [{"prompt": f"Write about the cloud {i}.", "responses": ["cloud", "apple cloud"], "p": 0.2, "weight": 2.0}
             for i in range(6)]
    data = tmp_path / "prefs.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    main(["dpo", "--model", str(tiny_model_dir), "--data", str(data), "--out", str(tmp_path / "out"), "--batch-size", "4",
          "--loss", "ipo", "--heldout-fraction", "0.2", "--max-length", "48"])
    assert (tmp_path / "out" / "adapter_model.safetensors").exists()
    assert "eval/rewards/accuracy" in read_metrics(tmp_path / "out")[-1]
