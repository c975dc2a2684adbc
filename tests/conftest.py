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
