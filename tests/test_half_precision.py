"""bf16 / fp16 on a CPU without fast kernels for them (no AVX-512) falls back to float32."""

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
