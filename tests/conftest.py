import os
from pathlib import Path

import pytest

from tests.two_processes import two_process_runs  # noqa: F401  (one launch for the whole session)

os.environ.setdefault("ALIGNLOOP_NO_PROGRESS", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_OFFLINE", "1")


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> Path:
    """A 2-layer random Llama with a small real BPE tokenizer and a chat template, built locally."""
    from alignloop.models.tiny import build_tiny_model

    return build_tiny_model(tmp_path_factory.mktemp("tiny") / "model")


@pytest.fixture(scope="session")
def tiny(tiny_model_dir):
    from alignloop.models.loading import load_causal_lm, load_tokenizer

    return load_causal_lm(str(tiny_model_dir)), load_tokenizer(str(tiny_model_dir))


@pytest.fixture(autouse=True, scope="session")
def _one_torch_thread():
    """Tiny models are all overhead: a second intra-op thread only adds waiting (and much more
    when the machine is busy), so tests run torch on one thread."""
    try:
        import torch
    except ImportError:
        yield
        return
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def talky_dir(tiny_model_dir, tmp_path_factory) -> Path:
    """A tiny model that says something: the shared tiny Llama with its matrices redrawn wider
    (std 0.3), so that greedy answers vary token by token instead of repeating one token."""
    import torch

    from alignloop.models.loading import load_causal_lm, load_tokenizer

    model, tokenizer = load_causal_lm(str(tiny_model_dir)), load_tokenizer(str(tiny_model_dir))
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() == 2:
                p.copy_(torch.randn(p.shape, generator=generator) * 0.3)
    out = tmp_path_factory.mktemp("talky") / "talky"
    model.save_pretrained(out, safe_serialization=True)
    tokenizer.save_pretrained(out)
    return out


@pytest.fixture(scope="session")
def talky(talky_dir):
    from alignloop.models.loading import load_causal_lm, load_tokenizer

    return load_causal_lm(str(talky_dir)), load_tokenizer(str(talky_dir))
