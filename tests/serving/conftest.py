"""A tiny model that says something: the shared tiny Llama with its matrices redrawn wider
(std 0.3), so that greedy answers vary token by token instead of repeating one token; and the
model server's app over it, its batcher started by the test (`served`)."""

from __future__ import annotations

import contextlib
from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def talky_dir(tiny_model_dir, tmp_path_factory) -> Path:
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


class Served:
    """The app, its batcher (not started: `start()`), and the model behind them."""

    def __init__(self, model, tokenizer, **options):
        from alignloop.serving.app import Limits, create_app
        from alignloop.serving.batcher import Batcher

        limit_fields = set(Limits.__dataclass_fields__)
        limits = Limits(**{k: v for k, v in options.items() if k in limit_fields})
        batcher_options = {k: v for k, v in options.items() if k not in limit_fields}
        batcher_options.setdefault("window_s", 0.0)
        self.model, self.tokenizer = model, tokenizer
        self.batcher = Batcher(model, tokenizer, max_batch_size=limits.max_choices, **batcher_options)
        self.app = create_app(self.batcher, "talky", limits)

    def start(self) -> None:
        self.batcher.start()


@pytest.fixture
def served(talky):
    """`served(**options)`: a Served with those Limits / Batcher options; closed afterwards."""
    made: list[Served] = []

    def make(**options) -> Served:
        made.append(Served(*talky, **options))
        return made[-1]

    yield make
    for s in made:
        with contextlib.suppress(Exception):
            s.batcher.close()
