"""Shipped launch configs; sharded checkpoints (FSDP2 over gloo, 2 CPU processes) that resume
to exactly the uninterrupted run; PPO's sampling copy refreshed from the gathered shards."""

import json
import signal
import subprocess
import time
from pathlib import Path

import psutil
import pytest
from safetensors.torch import load_file

from alignloop.launch_configs import LAUNCH_CONFIGS, launch_config
from tests.sharded_processes import (FSDP_CONFIG, LAUNCH_ENV, REPO, STAGES, launch, launch_command,  # noqa: F401
                                     sharded_jobs, sharded_runs)  # (sharded_runs: one launch per session)


def test_every_launch_config_loads_with_accelerates_loader():
    from accelerate.commands.config.config_args import load_config_from_file

    expected = {"ddp": ("MULTI_GPU", None), "fsdp": ("FSDP", None), "deepspeed-zero2": ("DEEPSPEED", 2),
                "deepspeed-zero3": ("DEEPSPEED", 3)}
    assert set(LAUNCH_CONFIGS) == set(expected)
    for name, (kind, zero) in expected.items():
        path = launch_config(name)
        assert path.read_text().startswith("# "), f"{path}: the first line says when to use it"
        config = load_config_from_file(str(path))
        assert config.distributed_type.value == kind and config.mixed_precision == "no"
        assert config.num_machines == 1 and config.machine_rank == 0
        if zero:
            assert config.deepspeed_config["zero_stage"] == zero
    assert load_config_from_file(str(launch_config("fsdp"))).fsdp_config["fsdp_version"] == 2


def test_unknown_launch_config_names_the_shipped_ones():
    with pytest.raises(ValueError, match="ddp, deepspeed-zero2, deepspeed-zero3, fsdp"):
        launch_config("zero4")


@pytest.mark.numerics
def test_ddp_config_launches_on_cpu_and_keeps_the_whole_checkpoint(tiny_model_dir, tmp_path):
    data = tmp_path / "demos.jsonl"
    data.write_text("".join(json.dumps({"prompt": f"Count to {i}.", "response": str(i)}) + "\n" for i in range(8)))
    r = launch(launch_config("ddp"), ["-m", "alignloop.cli", "sft", "--model", str(tiny_model_dir), "--data", str(data),
                                      "--out", str(tmp_path / "ddp"), "--batch-size", "2", "--heldout-fraction", "0",
                                      "--eval-every", "0", "--save-every", "0", "--stop-at-step", "1"])
    assert r.returncode == 0, r.stderr[-3000:]
    checkpoint = tmp_path / "ddp" / "checkpoint"
    assert {p.name for p in checkpoint.iterdir()} == {"trainable.pt", "optimizer.pt", "scheduler.pt", "state.json",
                                                       "rng-0.pt", "rng-1.pt"}


def test_fsdp_runs_on_two_cpu_processes_with_sharded_checkpoints(sharded_runs):
    for results in sharded_runs["results"]:
        assert results["distributed_type"] == "DistributedType.FSDP"
        for stage in STAGES:
            assert results[stage]["sharded"], stage
            assert results[stage]["files"] == ["accelerate", "rng-0.pt", "rng-1.pt", "scheduler.pt", "state.json"]


def assert_resumed_equals_whole(root: Path, stage: str, tiny_model_dir) -> None:
    names = sorted(p.name for p in (root / "whole").glob("*.safetensors"))
    assert names == sorted(p.name for p in (root / "stop").glob("*.safetensors")) and names
    initial = load_file(Path(tiny_model_dir) / "model.safetensors")
    for name in names:
        resumed, whole = load_file(root / "stop" / name), load_file(root / "whole" / name)
        assert resumed.keys() == whole.keys()
        for key in whole:  # the same arithmetic replayed on the same machine: bit-identical
            assert resumed[key].dtype == whole[key].dtype and bool((resumed[key] == whole[key]).all()), (name, key)
    weights = load_file(root / "whole" / names[0])
    if stage in ("sft", "ppo"):  # full fine-tuning: it moved from the initial weights
        assert max((weights[k] - initial[k]).abs().max().item() for k in weights if k in initial) > 1e-5
    else:  # LoRA: B starts at 0
        assert max(v.abs().max().item() for k, v in weights.items() if "lora_B" in k) > 1e-5
    assert not (root / "stop" / "checkpoint").exists() and not (root / "whole" / "checkpoint").exists()


@pytest.mark.numerics
@pytest.mark.parametrize("stage", list(STAGES))
def test_sharded_run_stopped_and_resumed_equals_the_uninterrupted_one(sharded_runs, stage, tiny_model_dir):
    assert_resumed_equals_whole(Path(sharded_runs["root"]) / stage, stage, tiny_model_dir)


def sft_args(model, data: Path, out: Path) -> list[str]:
    """Full fine-tuning, 2 processes x 2 examples, 40 demonstrations x 8 epochs = 80 optimizer
    steps (about 30 ms each on the tiny model), a checkpoint every 2."""
    return ["-m", "alignloop.cli", "sft", "--model", str(model), "--data", str(data), "--out", str(out),
            "--no-lora", "--batch-size", "2", "--epochs", "8", "--heldout-fraction", "0", "--learning-rate", "1e-3",
            "--warmup-ratio", "0", "--eval-every", "0", "--save-every", "2", "--seed", "0"]


@pytest.mark.numerics
def test_sharded_run_killed_by_a_signal_and_resumed_equals_the_uninterrupted_one(tiny_model_dir, tmp_path):
    """Both processes SIGKILLed mid-run, once a periodic checkpoint has landed (whatever steps
    ran after it are lost, no clean stop), then `--resume` under the same launch config: the
    final weights equal the uninterrupted run's bit for bit."""
    data = tmp_path / "demos.jsonl"
    data.write_text("".join(json.dumps({"prompt": f"Count to {i}.", "response": " ".join(map(str, range(i % 7 + 1)))})
                            + "\n" for i in range(40)))
    killed = tmp_path / "killed"
    job = subprocess.Popen(launch_command(FSDP_CONFIG, sft_args(tiny_model_dir, data, killed)), cwd=REPO,
                           env=LAUNCH_ENV, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    state, deadline = killed / "checkpoint" / "state.json", time.time() + 300
    while not state.exists() and job.poll() is None and time.time() < deadline:
        time.sleep(0.01)
    launcher = psutil.Process(job.pid)
    ranks = launcher.children(recursive=True)  # torch elastic starts the ranks in their own sessions
    alive = job.poll() is None and len(ranks) >= 2
    for process in [launcher, *ranks]:
        process.send_signal(signal.SIGKILL)
    psutil.wait_procs(ranks, timeout=30)
    stderr = job.communicate()[1]
    assert alive and state.exists(), f"no checkpoint before the run ended: {stderr[-3000:]}"
    step = json.loads(state.read_text())["step"]
    assert 2 <= step < 80 and not (killed / "model.safetensors").exists()
    resumed = launch(FSDP_CONFIG, sft_args(tiny_model_dir, data, killed) + ["--resume"])
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert f"resuming {killed} at step {step}/80" in resumed.stdout + resumed.stderr
    whole = launch(FSDP_CONFIG, sft_args(tiny_model_dir, data, tmp_path / "whole"))
    assert whole.returncode == 0, whole.stderr[-3000:]
    a, b = load_file(killed / "model.safetensors"), load_file(tmp_path / "whole" / "model.safetensors")
    assert a.keys() == b.keys() and all(bool((a[k] == b[k]).all()) for k in b)


@pytest.mark.gpu
@pytest.mark.parametrize("name", ["deepspeed-zero2", "deepspeed-zero3", "fsdp"])
def test_on_two_gpus_resumed_equals_the_uninterrupted_run(name, tiny_model_dir, tmp_path):
    """DeepSpeed needs CUDA (and `pip install deepspeed`): not run on the CPU machines."""
    import importlib.util

    import torch

    if torch.cuda.device_count() < 2:
        pytest.skip("needs 2 CUDA GPUs")
    if name.startswith("deepspeed") and importlib.util.find_spec("deepspeed") is None:
        pytest.skip("deepspeed is not installed (pip install deepspeed)")
    runs = sharded_jobs(launch_config(name), tmp_path, str(tiny_model_dir))
    for stage in STAGES:
        assert all(results[stage]["sharded"] for results in runs["results"])
        assert_resumed_equals_whole(tmp_path / stage, stage, tiny_model_dir)
    assert runs["results"][0]["sampling_copy"]["gap"] == 0.0


def test_ppo_sampling_copy_refreshes_from_the_gathered_shards(sharded_runs):
    gap = sharded_runs["results"][0]["sampling_copy"]
    assert gap["units"] == gap["layers"] + 1  # sharded per decoder layer (the LM's _no_split_modules), and the root
    assert gap["moved"] > 1e-3  # the optimizer step reached the copy
    assert gap["gap"] == 0.0  # exactly the policy's whole, current weights (copied, same dtype)


def test_ppo_without_the_sampling_copy_is_refused_under_fsdp(sharded_runs):
    for results in sharded_runs["results"]:
        assert "--no-sampling-copy under DeepSpeed ZeRO-3 / FSDP" in results["no_sampling_copy"]
