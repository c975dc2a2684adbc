"""The bundled SmolLM2-135M-Instruct: converted once to a cached safetensors folder, then loaded and used."""

import pytest

from alignloop.models import registry
from alignloop.models.registry import alignloop_home, resolve_model

pytestmark = pytest.mark.slow


def test_bundled_model_is_cached_and_generates(monkeypatch):
    folder = resolve_model("smollm2-135m-instruct")  # converts the GGUF on first use
    assert folder.startswith(str(alignloop_home())) and (alignloop_home() / "models" / "smollm2-135m-instruct" /
                                                         "model.safetensors").exists()

    def no_conversion(*args):
        raise AssertionError("converted the GGUF again")

    monkeypatch.setattr(registry, "convert_gguf", no_conversion)
    assert resolve_model("smollm2-135m-instruct") == folder  # the second time is a cache hit, no de-quantisation
    monkeypatch.undo()

    from alignloop.models.generation import Sampling, generate
    from alignloop.models.loading import load_causal_lm, load_tokenizer

    model, tok = load_causal_lm("smollm2-135m-instruct"), load_tokenizer("smollm2-135m-instruct")
    assert "quantization_config" not in model.config.to_dict()
    g = generate(model, tok, [[{"role": "user", "content": "What is the capital of France?"}]],
                 Sampling(num_samples=1, temperature=0, max_new_tokens=24))
    assert "Paris" in g.texts[0] and g.finished[0]


def test_converting_the_gguf_leaves_the_global_rng_alone(tmp_path):
    """A stage seeds, then loads its model; on first use that converts the GGUF, whose fresh
    model draws random initial weights. The RNG must come back as it was, or the first run's
    LoRA adapters start elsewhere than every later run's (the model then cached)."""
    import torch

    from alignloop.models.registry import BUNDLED, _bundled_gguf, convert_gguf

    name = "smollm2-135m-instruct"
    torch.manual_seed(0)
    before = torch.get_rng_state()
    convert_gguf(_bundled_gguf(BUNDLED[name], name), tmp_path / name)
    assert (tmp_path / name / "model.safetensors").exists()
    assert torch.equal(torch.get_rng_state(), before), "the conversion moved torch's global RNG"
