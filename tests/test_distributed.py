"""Two processes (gloo on CPU, launched by Accelerate) give the same result as one."""

import json
import os
import shutil
import subprocess
import sys

import pytest
from safetensors.torch import load_file

from alignloop.train.sft import SFTConfig, run_sft


@pytest.mark.numerics
@pytest.mark.skipif(shutil.which("accelerate") is None and not os.path.exists(
    os.path.join(os.path.dirname(sys.executable), "accelerate")), reason="accelerate launcher not found")
def test_sft_two_processes_equal_one(tiny_model_dir, tmp_path):
    data = tmp_path / "demos.jsonl"
    data.write_text("".join(json.dumps({"prompt": f"Count to {i}.", "response": " ".join(map(str, range(i % 7 + 1)))})
                            + "\n" for i in range(24)))
    # plain SGD: weights differ by lr x the gradients' rounding (Adam would amplify it, see test_sft)
    one = run_sft(SFTConfig(model=str(tiny_model_dir), data=data, out=tmp_path / "one", batch_size=4,
                            optimizer="sgd", learning_rate=0.5, heldout_fraction=0.0, eval_every=0, save_every=0))
    launcher = os.path.join(os.path.dirname(sys.executable), "accelerate")
    # On CPU, --multi_gpu makes Accelerate start the processes with torchrun; they talk over gloo.
    r = subprocess.run([launcher, "launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1",
                        "--mixed_precision", "no", "--dynamo_backend", "no", "-m", "alignloop.cli", "sft",
                        "--model", str(tiny_model_dir), "--data", str(data), "--out", str(tmp_path / "two"),
                        "--batch-size", "2", "--optimizer", "sgd", "--learning-rate", "0.5", "--heldout-fraction", "0",
                        "--eval-every", "0", "--save-every", "0"],
                       capture_output=True, text=True, timeout=300, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert r.returncode == 0, r.stderr[-3000:]
    a, b = load_file(one / "adapter_model.safetensors"), load_file(tmp_path / "two" / "adapter_model.safetensors")
    assert any(v.abs().max() > 1e-3 for k, v in a.items() if "lora_B" in k)  # B starts at 0: it moved
    # gloo sums in another order than one process does: equal up to float rounding x lr
    assert max((a[k] - b[k]).abs().max().item() for k in a) < 1e-6
