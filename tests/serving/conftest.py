"""The model server's app over `talky` (tests/conftest.py: a tiny model whose greedy answers
vary token by token), its batcher started by the test (`served`)."""

from __future__ import annotations

import contextlib

import pytest


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
