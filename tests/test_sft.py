"""SFT: learns, trains only what it should, resumes exactly, and accumulation is invisible."""

import json

import pytest
import torch
from safetensors.torch import load_file

from alignloop.models.loading import load_causal_lm
from alignloop.train.sft import SFTConfig, run_sft
from alignloop.train.tracking import read_metrics

WORDS = "apple river mountain lantern violin garden".split()


@pytest.fixture(scope="module")
def demos(tmp_path_factory):
    path = tmp_path_factory.mktemp("sft") / "demos.jsonl"
    with open(path, "w") as f:
        for i in range(48):
            w = WORDS[i % len(WORDS)]
            f.write(json.dumps({"prompt": f"Say something about the {w}.",
                                "response": f"The {w} is lovely, and I like the {w}."}) + "\n")
    return path


def _cfg(tiny_model_dir, demos, out, **kw):
    base = dict(model=str(tiny_model_dir), data=demos, out=out, epochs=2, batch_size=4, learning_rate=3e-3,
                eval_every=0, save_every=0, seed=3)
    return SFTConfig(**{**base, **kw})


def test_lora_sft_lowers_heldout_loss_and_trains_only_adapters(tiny_model_dir, demos, tmp_path):
    out = run_sft(_cfg(tiny_model_dir, demos, tmp_path / "lora"))
    evals = [m["eval/loss"] for m in read_metrics(out) if "eval/loss" in m]
    assert evals[-1] < evals[0] - 0.3, evals
    adapter = load_file(out / "adapter_model.safetensors")
    assert adapter and all("lora_" in k for k in adapter)
    assert any(v.abs().sum() > 0 for k, v in adapter.items() if "lora_B" in k)  # B starts at 0: it moved
    base = load_causal_lm(str(tiny_model_dir)).state_dict()
    merged = load_causal_lm(str(out)).state_dict()
    assert not torch.equal(base["model.layers.0.self_attn.q_proj.weight"], merged["model.layers.0.self_attn.q_proj.weight"])
    assert torch.equal(base["model.norm.weight"], merged["model.norm.weight"])  # not a LoRA target
    assert (out / "config.yaml").exists() and not (out / "checkpoint").exists()


def test_full_finetuning_changes_every_weight_kind(tiny_model_dir, demos, tmp_path):
    out = run_sft(_cfg(tiny_model_dir, demos, tmp_path / "full", lora=False, learning_rate=1e-3, epochs=1))
    base = load_causal_lm(str(tiny_model_dir)).state_dict()
    tuned = load_causal_lm(str(out)).state_dict()
    assert not torch.equal(base["model.norm.weight"], tuned["model.norm.weight"])
    assert not (out / "adapter_config.json").exists()


def _params(out):
    return load_causal_lm(str(out)).state_dict()


def _max_diff(a, b):
    return max((a[k] - b[k]).abs().max().item() for k in a)


@pytest.mark.numerics
def test_resume_equals_uninterrupted_run(tiny_model_dir, demos, tmp_path):
    whole = run_sft(_cfg(tiny_model_dir, demos, tmp_path / "whole", save_every=4))
    part = tmp_path / "part"
    run_sft(_cfg(tiny_model_dir, demos, part, save_every=4, stop_at_step=7))
    assert (part / "checkpoint").exists() and not (part / "adapter_model.safetensors").exists()
    with pytest.raises(ValueError, match="--resume"):
        run_sft(_cfg(tiny_model_dir, demos, part, save_every=4))
    run_sft(_cfg(tiny_model_dir, demos, part, save_every=4, resume=True))
    assert _max_diff(_params(whole), _params(part)) < 1e-6
    steps = [m["step"] for m in read_metrics(part)]
    assert steps == sorted(set(steps))  # no step logged twice after the resume


def test_a_kill_between_the_checkpoint_renames_resumes_from_the_new_checkpoint(tiny_model_dir, demos, tmp_path):
    """save_checkpoint renames checkpoint/ -> .checkpoint.old, then .checkpoint.tmp -> checkpoint/;
    a kill between the two must not lose the run (nor silently start it again from step 0)."""
    from alignloop.train.checkpoint import has_checkpoint

    part = tmp_path / "part"
    run_sft(_cfg(tiny_model_dir, demos, part, save_every=2, stop_at_step=4))
    (part / "checkpoint").rename(part / ".checkpoint.tmp")  # the new one, complete
    (part / ".checkpoint.old").mkdir()  # the previous one, being replaced
    assert has_checkpoint(part)
    assert json.loads((part / "checkpoint" / "state.json").read_text())["step"] == 4
    assert not (part / ".checkpoint.old").exists() and not (part / ".checkpoint.tmp").exists()


@pytest.mark.numerics
def test_gradient_accumulation_equals_a_bigger_batch(tiny_model_dir, demos, tmp_path):
    """Plain SGD, so the weights differ by lr x the gradients' rounding difference (summation
    order); Adam would divide near-zero gradients by their own size and turn that rounding into
    steps of the learning rate's size, differently on every CPU."""
    sgd = dict(epochs=1, optimizer="sgd", learning_rate=0.5)
    big = run_sft(_cfg(tiny_model_dir, demos, tmp_path / "big", batch_size=8, grad_accum=1, **sgd))
    acc = run_sft(_cfg(tiny_model_dir, demos, tmp_path / "acc", batch_size=2, grad_accum=4, **sgd))
    base = _params(tiny_model_dir)
    assert _max_diff(_params(big), base) > 1e-3  # the steps were not negligible
    assert _max_diff(_params(big), _params(acc)) < 1e-6
