"""bf16 / fp16 on a CPU without fast kernels for them (no AVX-512) falls back to float32; frozen
models that run under autocast keep their linear weights in its dtype and compute the same bits."""

import copy

import pytest
import torch

from alignloop.models import loading
from alignloop.train.common import make_accelerator


@pytest.fixture
def slow_half(monkeypatch):
    """A CPU whose oneDNN has no bf16 / fp16 kernels (an AVX2-only machine)."""
    monkeypatch.setattr(loading, "cpu_has_fast_half", lambda dtype: dtype not in (torch.bfloat16, torch.float16))
    monkeypatch.setattr(loading, "_HALF_NOTICED", set())


@pytest.fixture
def fast_half(monkeypatch):
    monkeypatch.setattr(loading, "cpu_has_fast_half", lambda dtype: True)


def test_a_half_dtype_without_fast_kernels_is_float32_with_one_notice(slow_half, capsys):
    assert loading.resolve_dtype("bfloat16", "cpu") is torch.float32
    assert loading.resolve_dtype("bfloat16", "cpu") is torch.float32
    assert loading.resolve_dtype("float16", "cpu") is torch.float32
    notices = capsys.readouterr().err.splitlines()
    assert len(notices) == 2 and "no fast bfloat16 kernels" in notices[0] and "float16" in notices[1]
    assert loading.resolve_dtype("float32", "cpu") is torch.float32
    assert loading.resolve_dtype("auto", "cpu") is torch.float32


def test_a_half_dtype_with_fast_kernels_is_kept(fast_half, capsys):
    assert loading.resolve_dtype("bfloat16", "cpu") is torch.bfloat16
    assert loading.resolve_dtype("float16", "cpu") is torch.float16
    assert capsys.readouterr().err == ""


def test_mixed_precision_follows_the_cpu(slow_half):
    if torch.cuda.is_available():
        pytest.skip("the fallback is for CPUs")
    assert make_accelerator("bf16").mixed_precision == "no"
    assert make_accelerator("no").mixed_precision == "no"


def test_mixed_precision_is_kept_where_the_cpu_has_the_kernels(fast_half):
    if torch.cuda.is_available():
        pytest.skip("the fallback is for CPUs")
    assert make_accelerator("bf16").mixed_precision == "bf16"


def test_the_probe_answers_for_this_cpu():
    """The probe runs on this torch (a private oneDNN query) and says yes to float32."""
    assert loading.cpu_has_fast_half(torch.float32) is True
    assert isinstance(loading.cpu_has_fast_half(torch.bfloat16), bool)


def _linear_bytes(model) -> dict[torch.dtype, int]:
    out: dict[torch.dtype, int] = {}
    for m in model.modules():
        if isinstance(m, torch.nn.Linear):
            for p in m.parameters(recurse=False):
                out[p.dtype] = out.get(p.dtype, 0) + p.numel() * p.element_size()
    return out


@pytest.mark.numerics
def test_frozen_linears_in_half_forward_as_float32_weights_under_autocast(tiny):
    lm, tok = tiny
    frozen = copy.deepcopy(lm).requires_grad_(False)
    half = loading.frozen_linears_to(copy.deepcopy(frozen), torch.bfloat16)
    trunk = [m for n, m in half.named_modules() if isinstance(m, torch.nn.Linear) and n != "lm_head"]
    assert trunk and all(m.weight.dtype == torch.bfloat16 for m in trunk)
    assert half.lm_head.weight.dtype == torch.float32  # tied to the embedding: left alone
    assert half.lm_head.weight is half.model.embed_tokens.weight
    assert half.model.norm.weight.dtype == torch.float32
    before, after = _linear_bytes(frozen), _linear_bytes(half)
    assert after[torch.bfloat16] * 2 + after[torch.float32] == before[torch.float32]
    ids = tok(["a short one", "and a somewhat longer prompt here"], return_tensors="pt", padding=True)
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        want = frozen(**ids).logits
        got = half(**ids).logits
    assert torch.equal(got, want)
    with torch.no_grad():
        assert not torch.equal(frozen(**ids).logits, want)  # autocast did change the arithmetic
    trainable = loading.frozen_linears_to(copy.deepcopy(lm).requires_grad_(True), torch.bfloat16)
    assert {p.dtype for p in trainable.parameters()} == {torch.float32}  # nothing trainable is cast


def test_frozen_linears_leave_no_view_of_the_checkpoint_file(tiny, tmp_path):
    """A float32 checkpoint loads as views of the mapped file; once the linears are cast, the
    other tensors are copied out, so the mapping (and its resident pages) goes."""
    import gc
    from pathlib import Path

    if not Path("/proc/self/maps").exists():
        pytest.skip("reads Linux's /proc/self/maps")
    lm, _ = tiny
    lm.save_pretrained(tmp_path / "model")

    def mapped() -> bool:
        return any(str(tmp_path) in line for line in open("/proc/self/maps"))

    fresh = loading.load_causal_lm(str(tmp_path / "model")).requires_grad_(False)
    assert mapped()  # zero-copy: the tensors are views of the file
    loading.frozen_linears_to(fresh, torch.bfloat16)
    gc.collect()
    assert not mapped()
    assert fresh.lm_head.weight is fresh.model.embed_tokens.weight  # the tie kept


@pytest.mark.numerics
def test_a_lora_reward_nets_frozen_base_in_bf16_gives_the_same_rewards_and_gradients_under_autocast(tiny):
    """What `alignloop reward --lora --mixed-precision bf16` does to its net: the same bits."""
    from alignloop.config import LoraOptions
    from alignloop.models.reward_model import RewardNet

    lm, tok = tiny
    torch.manual_seed(0)
    net = RewardNet(loading.apply_lora(copy.deepcopy(lm), LoraOptions(lora_rank=4, lora_alpha=8.0)), 1)
    with torch.no_grad():  # LoRA's B starts at 0: make the adapters matter
        for name, p in net.named_parameters():
            if "lora_B" in name:
                p.normal_(std=0.05)
    cast = copy.deepcopy(net)
    loading.frozen_linears_to(cast.lm, torch.bfloat16)
    assert any(p.dtype == torch.bfloat16 for p in cast.parameters())
    assert all(p.dtype == torch.float32 for p in cast.parameters() if p.requires_grad)
    ids = tok(["a short one", "and a somewhat longer prompt here"], return_tensors="pt", padding=True)
    results = []
    for model in (net, cast):
        with torch.autocast("cpu", dtype=torch.bfloat16):
            rewards = model(input_ids=ids["input_ids"], attention_mask=ids["attention_mask"])
        rewards.float().sum().backward()
        results.append((rewards, {n: p.grad for n, p in model.named_parameters() if p.requires_grad}))
    (want, want_grads), (got, got_grads) = results
    assert torch.equal(got, want)
    assert want_grads.keys() == got_grads.keys() and all(torch.equal(got_grads[k], want_grads[k]) for k in want_grads)
