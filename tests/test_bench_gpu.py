"""benchmarks/gpu.py: its arithmetic by hand (peak lookup, MFU), and its CPU smoke mode on the
tiny model end to end (every measurement present in the JSON and the table, none an error)."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parent.parent / "benchmarks"
sys.path.insert(0, str(BENCH))
spec = importlib.util.spec_from_file_location("gpu_bench", BENCH / "gpu.py")
gpu = sys.modules.setdefault("gpu_bench", importlib.util.module_from_spec(spec))
spec.loader.exec_module(gpu)


def test_peak_lookup_and_mfu():
    assert gpu.peak_tflops("NVIDIA H200") == (989.0, "datasheet (H200)")
    assert gpu.peak_tflops("NVIDIA H100 PCIe")[0] == 756.0  # the PCIe part before the plain H100 key
    assert gpu.peak_tflops("NVIDIA H100 80GB HBM3")[0] == 989.0
    assert gpu.peak_tflops("Some GPU") == (None, "unknown")
    assert gpu.peak_tflops("NVIDIA H200", 500.0) == (500.0, "--peak-tflops")
    # 4.0e14 FLOPs in 1 s on a 1e15 FLOP/s peak: 40% utilisation
    assert gpu.mfu(4.0e14, 1.0, 1.0e15) == pytest.approx(0.4)
    # 6 x 1e9 weights x 1e4 tokens x 4 epochs = 2.4e14 FLOPs in 0.5 s on 989e12: 2.4e14 / 0.5 / 9.89e14 = 0.4853
    flops = gpu.iteration_flops(gpu.ModelSize(trunk=10**9, head=0), gpu.IterationTokens(1e4, 0), 4, lora=False)["train"]
    assert flops == 2.4e14 and gpu.mfu(flops, 0.5, 989e12) == pytest.approx(0.48533, rel=1e-4)
    assert gpu.steady([9.0, 1.0, 2.0]) == [1.0, 2.0]


def test_random_models_from_assets(tiny_model_dir, tmp_path, monkeypatch):
    """1b and 135m built from a --prepare folder (here: the tiny model's tokenizer + config)."""
    monkeypatch.setattr(gpu, "ONE_B", {**gpu.ONE_B, "hidden_size": 32, "num_hidden_layers": 1,
                                       "intermediate_size": 64, "num_attention_heads": 4, "num_key_value_heads": 2})
    monkeypatch.setattr(gpu, "bundled_folder", lambda: None)
    folder, label = gpu.build_model("1b", tmp_path, tiny_model_dir, "cpu")
    size, params = gpu.size_of_folder(folder)
    assert "random" in label and size.head == 32 * 512
    assert params == size.trunk + 2 * size.head  # untied: embedding + LM head of vocab x 32 each
    folder, label = gpu.build_model("135m", tmp_path, tiny_model_dir, "cpu")
    assert "random weights" in label and (Path(folder) / "tokenizer.json").exists()


def test_smoke_mode_reports_every_figure(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    out = tmp_path / "r.json"
    gpu.main(["--device", "cpu", "--models", "tiny", "--quick", "--out", str(out)])
    report = json.loads(out.read_text())
    tiny = report["models"]["tiny"]
    for key, figures in gpu.FIGURES.items():
        assert "error" not in tiny[key], tiny[key]
        for name, *_ in figures:
            assert tiny[key][name]["value"] > 0, (key, name)
        assert tiny[key]["peak_memory_gb"] > 0
    ppo = tiny["ppo"]
    assert ppo["train_mfu"]["value"] * report["device"]["mfu_peak_flop_per_s"] == pytest.approx(
        ppo["train_tflop_per_s"]["value"] * 1e12, rel=1e-6)
    phases = sum(ppo[f"{p}_s"]["value"] for p in gpu.PHASES) + ppo["other_s"]["value"]
    assert phases == pytest.approx(ppo["iteration_s"]["value"], rel=1e-6)
    text = capsys.readouterr().out
    for title in [t for figures in gpu.FIGURES.values() for _, t, *_ in figures]:
        assert title.strip() in text
    assert "error" not in text and report["device"]["name"] in text
